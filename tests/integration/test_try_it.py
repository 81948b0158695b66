"""The README's main job (scripts/try_it.py) must keep working: it runs the runbook's
scenarios on its own copy of the test stack and exits non-zero if any step does
not behave as narrated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def test_try_it_runs_the_runbook_scenarios() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "try_it.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "#2 rollback.service: succeeded" in result.stdout
