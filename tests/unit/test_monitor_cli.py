"""`backout monitor` refuses before watching anything: a second monitor, a bad pid file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backout.cli.main import main
from backout.state import OperationLock
from backout.state.lock import MONITOR_LOCK_NAME


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "backout.toml").write_text(
        '[project]\ncompose_files = ["docker-compose.yml"]\nenv_file = ""\n')
    return tmp_path


def test_a_second_monitor_is_refused_and_named(project: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with OperationLock(project / ".backout", MONITOR_LOCK_NAME).acquire("backout monitor"):
        code = main(["monitor", "--json", "--project-dir", str(project), "--duration", "1"])
    out, err = capsys.readouterr()
    assert code == 4
    error = json.loads(out.splitlines()[-1])["error"]
    assert error["code"] == "locked" and "a monitor already watches this project" in error["message"]
    assert "`backout monitor` (pid" in err and err.count("\n") == 1


def test_an_unwritable_pid_file_is_a_usage_error(project: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pid_file = project / "missing" / "monitor.pid"
    code = main(["monitor", "--project-dir", str(project), "--pid-file", str(pid_file)])
    _out, err = capsys.readouterr()
    assert code == 2 and "cannot write the pid file" in err and "fix:" in err
    # nothing is left behind: the next monitor may take the lock
    assert OperationLock(project / ".backout", MONITOR_LOCK_NAME).holder() is None


def test_the_table_shows_unknown_memory_as_a_dash_not_zero() -> None:
    from backout.cli.monitor import _percent

    assert _percent(None) == "     -"
    assert _percent(0.0) == "   0.0" and _percent(97.25) == "  97.2"
