"""Shell completion: commands from click, and services, databases, release ids and
backup ids read from the project (backout.toml, the store, the backup directory),
quickly and without ever failing loudly. The bash test runs bash itself with the
completion script the README tells users to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backout.completion import candidates
from backout.state import Store

TOML = """\
[project]
compose_files = ["docker-compose.yml"]
env_file = ""
[services.web]
kind = "app"
[databases.mysql]
type = "mysql"
service = "db"
[databases.cache]
type = "redis"
service = "redis"
[volumes.uploads]
volume = "uploads"
service = "web"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "backout.toml").write_text(TOML)
    return tmp_path


def _with_history(project: Path) -> None:
    store = Store(project / ".backout")
    for _ in range(2):
        store.add_release(git_commit="c" * 40, git_dirty=False, diff_path=None,
                          compose_config={}, services={})
    store.db.execute("INSERT INTO checkpoints (created_at, created_by, release_id, label, path,"
                     " status) VALUES ('t', 'me', 2, NULL, '20261201T000000Z-ab', 'complete')")
    store.db.close()
    for set_id in ("20261201T000000Z-ab", "20261202T000000Z-cd", ".partial-x"):
        (project / ".backout" / "backups" / set_id).mkdir(parents=True)


def test_names_from_the_config(project: Path) -> None:
    assert candidates("database", project) == ["cache", "mysql"]
    assert candidates("service", project) == ["db", "redis", "web"]
    assert candidates("backup-name", project) == ["cache", "mysql", "uploads", "all"]
    assert candidates("database", project, incomplete="m") == ["mysql"]


def test_ids_from_the_store_and_the_backup_directory(project: Path) -> None:
    _with_history(project)
    assert candidates("release", project) == ["2", "1"]
    assert candidates("backup", project) == ["20261202T000000Z-cd", "20261201T000000Z-ab"]
    assert candidates("restore-source", project) == ["cp1", "20261202T000000Z-cd",
                                                     "20261201T000000Z-ab"]
    assert candidates("emergency-target", project, incomplete="cp") == ["cp1"]


def test_nothing_to_read_means_no_candidates_and_no_error(project: Path, tmp_path: Path) -> None:
    assert candidates("release", project) == []  # no store yet
    assert not (project / ".backout").exists()  # and completion did not create one
    (project / "backout.toml").write_text("[project\nbroken")
    assert candidates("database", project) == []
    assert candidates("database", tmp_path / "nowhere") == []
    assert candidates("no-such-kind", project) == []


def _complete(words: str, cwd: Path, **env: str) -> list[str]:
    """click's completion protocol, as the installed shell script calls it."""
    result = subprocess.run([sys.executable, "-m", "backout"], cwd=cwd, capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "_BACKOUT_COMPLETE": "bash_complete",
                                 "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1),
                                 **env})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_the_protocol_completes_commands_and_names(project: Path, tmp_path: Path) -> None:
    _with_history(project)
    assert "rollback" in _complete("backout ro", project)
    assert _complete("backout rollback db ", project) == ["cache", "mysql"]
    assert _complete("backout rollback db mysql c", project) == ["cp1"]
    elsewhere = tmp_path.parent
    assert _complete(f"backout --project-dir {project} release show ", elsewhere) == ["2", "1"]
    assert _complete("backout backups verify 2026120", elsewhere,
                     BACKOUT_PROJECT_DIR=str(project)) == ["20261202T000000Z-cd",
                                                           "20261201T000000Z-ab"]
    assert _complete("backout rollback db ", elsewhere) == []  # no project here: quiet


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_with_the_documented_script(project: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "backout").exists():
        pytest.skip("the backout entry point is not installed next to this python")
    script = ('eval "$(_BACKOUT_COMPLETE=bash_source backout)"; '
              'COMP_WORDS=(backout rollback db ""); COMP_CWORD=3; '
              '_backout_completion backout; printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", script], cwd=project, capture_output=True, text=True,
                            timeout=60, check=False,
                            env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert result.stdout.split() == ["cache", "mysql"], result.stderr


@pytest.mark.parametrize("shell,needle", [("bash", "complete -o nosort -F"),
                                          ("zsh", "compdef _backout_completion backout"),
                                          ("fish", "complete --no-files --command backout")])
def test_a_script_for_each_shell(shell: str, needle: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "backout"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "_BACKOUT_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0 and needle in result.stdout, result.stdout[:500]
