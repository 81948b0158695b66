"""Issue 6: `backout demo`, the README's main job, runs on this machine and exits 0,
narrating a healthy deploy and a broken one rolled back by itself, and leaves
nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cli import backout

pytestmark = pytest.mark.docker


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    result = backout("demo", "--dir", str(tmp_path), cwd=tmp_path, timeout=1200)
    out = result.stdout
    assert result.returncode == 0, (out[-4000:], result.stderr[-2000:])
    assert "deploy of v2: deployed and healthy" in out
    assert "deploy of v3: rolled back to the previous release, verified" in out
    assert "RED" in out and "now answers: hello from v2" in out
    assert "verify: passed" in out and "resolved" in out
    assert "Traceback" not in out + result.stderr
    assert list(tmp_path.iterdir()) == []  # the scratch project is gone
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=io.backout.demo"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert left == [], left
