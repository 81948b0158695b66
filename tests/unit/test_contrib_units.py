"""The systemd units under contrib/ run commands that exist, with options that exist,
and the install the README documents names exactly these files."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("backout-*"))


def _exec_start(unit: Path) -> list[str]:
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, unit
    argv = shlex.split(lines[0][len("ExecStart="):])
    assert argv[0] == "/usr/local/bin/backout"
    return argv[1:]


def test_the_units_are_the_documented_ones() -> None:
    names = {u.name for u in UNITS}
    assert names == {"backout-checkpoint.service", "backout-checkpoint.timer",
                     "backout-monitor.service", "backout-schedule.service"}
    readme = (ROOT / "README.md").read_text()
    for name in names:
        assert name in readme, f"README does not document {name}"
    timer = (ROOT / "contrib" / "systemd" / "backout-checkpoint.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer


@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"],
                         ids=lambda u: u.name)
def test_each_service_runs_a_real_command_with_real_options(unit: Path) -> None:
    argv = _exec_start(unit)
    command = [a for a in argv if not a.startswith("-")][:1]
    options = [a.split("=")[0] for a in argv if a.startswith("--")]
    result = subprocess.run([sys.executable, "-m", "backout", *command, "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, (unit.name, option)
    if "--on" in argv:
        from backout.policy.calendar import parse

        parse(argv[argv.index("--on") + 1])  # a valid calendar
