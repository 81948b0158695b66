"""The ecosystem's conventions: every global option from a BACKOUT_* variable
(a flag wins over it), NO_COLOR, and a --help that lists the variables, the shell
completion setup and `doctor`."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from backout.cli.main import ENV_VARS, main

TOML = '[project]\ncompose_files = ["docker-compose.yml"]\nenv_file = ""\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "docker-compose.yml").write_text("services:\n  web:\n    image: x:1\n")
    (tmp_path / "backout.toml").write_text(TOML)
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.chdir(tmp_path.parent)  # not the project: it must come from an option
    return tmp_path


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def test_every_global_option_has_a_backout_variable() -> None:
    assert set(ENV_VARS) == {"json", "verbose", "debug", "config", "project_dir"}
    assert all(v == "BACKOUT_" + k.upper() for k, v in ENV_VARS.items())


def test_backout_json_and_a_flag_overrides_it(project: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BACKOUT_PROJECT_DIR", str(project))
    monkeypatch.setenv("BACKOUT_JSON", "1")
    assert main(["policy", "show"]) == 0
    assert _is_json(capsys.readouterr().out)
    for argv in (["policy", "show", "--no-json"], ["--no-json", "policy", "show"]):
        assert main(argv) == 0
        assert not _is_json(capsys.readouterr().out), argv
    monkeypatch.setenv("BACKOUT_JSON", "0")
    assert main(["policy", "show"]) == 0
    assert not _is_json(capsys.readouterr().out)
    assert main(["--json", "policy", "show"]) == 0
    assert _is_json(capsys.readouterr().out)


def test_project_dir_and_config_from_the_environment(
        project: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check"]) == 2  # the cwd has no backout.toml
    capsys.readouterr()
    monkeypatch.setenv("BACKOUT_PROJECT_DIR", str(project))
    assert main(["config", "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(project / "backout.toml")
    other = project / "other.toml"
    other.write_text(TOML)
    monkeypatch.setenv("BACKOUT_CONFIG", str(other))
    assert main(["config", "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(other)
    # the flag wins over the variable
    assert main(["config", "check", "--json", "--config", str(project / "backout.toml")]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(project / "backout.toml")
    monkeypatch.setenv("BACKOUT_PROJECT_DIR", str(project / "nowhere"))
    monkeypatch.delenv("BACKOUT_CONFIG")
    assert main(["config", "check", "--project-dir", str(project)]) == 0
    capsys.readouterr()


def test_verbose_and_debug_from_the_environment(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BACKOUT_PROJECT_DIR", str(project))
    monkeypatch.setenv("BACKOUT_VERBOSE", "yes")
    main(["config", "check"])
    assert "docker compose" in capsys.readouterr().err  # each external call logged
    assert logging.getLogger("backout").level == logging.INFO
    monkeypatch.setenv("BACKOUT_DEBUG", "true")
    main(["config", "check"])
    assert logging.getLogger("backout").level == logging.DEBUG
    main(["config", "check", "--no-debug", "--no-verbose"])
    assert logging.getLogger("backout").level == logging.WARNING
    capsys.readouterr()


def test_a_variable_that_is_not_a_boolean_is_named(project: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BACKOUT_JSON", "maybe")
    assert main(["status", "--project-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert "BACKOUT_JSON='maybe' is not a boolean" in err and err.count("\n") == 1


def test_help_lists_the_variables_completion_and_doctor(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for needle in ("BACKOUT_JSON", "BACKOUT_VERBOSE", "BACKOUT_DEBUG", "BACKOUT_CONFIG",
                   "BACKOUT_PROJECT_DIR", "NO_COLOR", "_BACKOUT_COMPLETE=bash_source",
                   "zsh_source", "fish_source", "doctor"):
        assert needle in out, needle


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    from backout.environment import Environment

    terminal = _Terminal()
    assert Environment(env={}).color(terminal) is True
    assert Environment(env={"NO_COLOR": "1"}).color(terminal) is False
    assert Environment(env={"NO_COLOR": ""}).color(terminal) is True  # set but empty: ignored
    assert Environment(env={}).color(io.StringIO()) is False  # not a terminal


def test_the_demo_gets_no_colour_under_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    import backout.demo
    from backout.adapters.docker import Docker

    seen: dict[str, object] = {}

    def fake_demo(out: object, **kwargs: object) -> int:
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(backout.demo, "run_demo", fake_demo)
    monkeypatch.setattr(Docker, "ping", lambda self: None)
    monkeypatch.setattr("sys.stdout", _Terminal())
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["demo"]) == 0 and seen["color"] is False
    monkeypatch.delenv("NO_COLOR")
    assert main(["demo"]) == 0 and seen["color"] is True
