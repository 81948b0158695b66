"""Progress bars on a real terminal (a pty) against the test stack: a MySQL backup
shows the engine's estimate ("of ~"), a trial restore the artifact's exact size;
the same commands without a terminal, or with --json, draw nothing."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import backout, clean_env, ok
from tests.support.stack import TestStack

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def project(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("progress") / "project"
    shutil.copytree(stack.project_dir, copy,
                    ignore=shutil.ignore_patterns(".git", ".backout", "backout.toml"))
    ok(backout("init", cwd=copy))
    return copy


def _on_a_terminal(project: Path, *args: str, timeout: float = 300) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pty, as in an operator's shell."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "backout", *args], cwd=project,
                            stdin=slave, stdout=slave, stderr=slave, env=clean_env(),
                            close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), out.decode(errors="replace")


def test_backup_and_trial_restore_show_a_bar_on_a_terminal(project: Path) -> None:
    code, out = _on_a_terminal(project, "backup", "mysql")
    assert code == 0, out
    assert "\r  mysql dump  [" in out and "of ~" in out and "ETA" in out and "/s" in out, out
    set_id = next(line.rsplit(" ", 1)[-1].strip() for line in out.splitlines()
                  if line.startswith("backup complete: backup set "))
    code, out = _on_a_terminal(project, "backups", "verify", set_id, "--restore-test")
    assert code == 0, out
    assert "\r  mysql restore  [" in out and "of ~" not in out.split("mysql restore")[1], out


def test_no_bar_in_a_log_or_in_json(project: Path) -> None:
    plain = backout("backup", "mysql", cwd=project)
    assert plain.returncode == 0 and "\r" not in plain.stderr + plain.stdout
    code, out = _on_a_terminal(project, "backup", "mysql", "--json")
    assert code == 0 and "ETA" not in out and "\r  mysql dump" not in out
    assert json.loads(out[out.index("{"):])["ok"] is True
