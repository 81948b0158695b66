"""One exit code per kind of mistake, everywhere, and bad numbers refused before
anything runs (the CLI in-process on a small project; no containers needed).

- a name that does not exist (database, volume, service, backup, release) is 7,
  "not found", whichever command it is given to;
- a value the option cannot take (an interval of 0, a negative limit) is 2;
- `rollback emergency` outside a git repository says so, exit 2, like `deploy`;
- `status` with the Docker Engine unreachable completes with warnings: exit 1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from backout.cli.main import main

COMPOSE = """\
services:
  web:
    image: debian:bookworm-slim
    volumes: [data:/d]
  redis:
    image: debian:bookworm-slim
volumes:
  data: {}
"""
TOML = """\
[project]
compose_files = ["docker-compose.yml"]
env_file = ""
[databases.redis]
type = "redis"
service = "redis"
[volumes.data]
volume = "data"
service = "web"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    (tmp_path / "backout.toml").write_text(TOML)
    return tmp_path


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Docker Engine does not answer (compose config still works: it is client-side)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")


def run(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object], str]:
    code = main([*args, "--json", "--project-dir", str(project)])
    out, err = capsys.readouterr()
    return code, _last_document(out), err


def _last_document(out: str) -> dict[str, object]:
    """The whole output as one JSON document, else its last line (the error document
    of a command that streams lines), else nothing."""
    for text in (out, out.strip().splitlines()[-1] if out.strip() else ""):
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return {}


@pytest.mark.parametrize("args", [
    ("backup", "nosuch"),
    ("backup", "nosuch", "--dry-run"),
    ("rollback", "db", "nosuch", "cp1", "--dry-run"),
    ("backups", "verify", "nosuch"),
    ("release", "show", "999"),
])
def test_an_unknown_name_is_not_found_exit_7_everywhere(
        project: Path, no_engine: None, capsys: pytest.CaptureFixture[str],
        args: tuple[str, ...]) -> None:
    code, doc, err = run(project, capsys, *args)
    assert code == 7, (code, err)
    assert doc["error"]["code"] == "not_found"  # type: ignore[index]
    assert err.count("backout: error: ") == 1 and "Traceback" not in err


def test_a_misspelt_database_is_named_with_a_suggestion(
        project: Path, no_engine: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _doc, err = run(project, capsys, "backup", "reddis")
    assert code == 7 and 'did you mean "redis"?' in err


@pytest.mark.parametrize("args", [
    # (each with a short --duration, so that today's code, which accepted them, ends)
    ("monitor", "--interval", "0", "--duration", "1"),
    ("monitor", "--interval", "-1", "--duration", "1"),
    ("monitor", "--duration", "0"),
    ("monitor", "--duration", "-5"),
    ("monitor", "--cooldown", "-1", "--duration", "1"),
    ("history", "--limit", "-1"),
    ("history", "--limit", "0"),
    ("releases", "--limit", "0"),
    ("events", "--limit", "-3"),
    ("incidents", "--limit", "0"),
    ("verify", "--settle", "-5"),
    ("deploy", "--watch", "-1"),
])
def test_a_value_an_option_cannot_take_is_a_usage_error(
        project: Path, no_engine: None, capsys: pytest.CaptureFixture[str],
        args: tuple[str, ...]) -> None:
    code, doc, err = run(project, capsys, *args)
    assert code == 2, (code, err)
    assert doc["error"]["code"] == "usage"  # type: ignore[index]
    assert args[1] in err and "Traceback" not in err


@pytest.mark.docker
def test_emergency_rollback_outside_git_says_it_is_not_a_repository(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = run(project, capsys, "rollback", "emergency", "HEAD", "--dry-run")
    assert code == 2, err
    assert "is not a git repository" in err and "no commit or tag" not in err
    assert doc["error"]["fix"]  # type: ignore[index]


def test_emergency_resolve_checks_the_repository_before_the_target(project: Path) -> None:
    from backout.config import load_config
    from backout.environment import Environment
    from backout.errors import UsageError
    from backout.rollback.emergency import resolve
    from backout.state import Store
    from tests.support.fakes import FakePlatform

    env = Environment(project_dir=project)
    config = load_config(env, project / "backout.toml")
    with pytest.raises(UsageError, match="not a git repository"):
        resolve(env, config, Store(config.state_dir), FakePlatform(project), "v1", False)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    from backout.errors import NotFoundError
    with pytest.raises(NotFoundError, match='no commit or tag "v1"'):
        resolve(env, config, Store(config.state_dir), FakePlatform(project), "v1", False)


def test_status_with_the_engine_unreachable_exits_1_warnings(
        project: Path, no_engine: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--project-dir", str(project)])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "Docker Engine" in err or "docker" in err.lower()
    assert "project:" in out  # the rest of the status is still shown
    code = main(["status", "--json", "--project-dir", str(project)])
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert code == 1 and data["ok"] is True and data["warnings"]


def _git_status(project: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(project), "status", "--porcelain",
                          "--untracked-files=all"], capture_output=True, text=True,
                         check=True).stdout
    return [line[3:] for line in out.splitlines()]


def test_backouts_state_never_shows_in_the_projects_git_status(
        project: Path, no_engine: None, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "backout.toml").unlink()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    code = main(["init", "--project-dir", str(project)])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert ".backout" in out and "ignores itself" in out
    main(["status", "--project-dir", str(project)])  # makes the store, the lock dir
    capsys.readouterr()
    assert (project / ".backout" / "state.db").is_file()
    listed = _git_status(project)
    assert not [p for p in listed if p.startswith(".backout")], listed
    assert "backout.toml" in listed  # the operator's to review and commit
    assert not (project / ".gitignore").exists()  # the user's files are not touched
