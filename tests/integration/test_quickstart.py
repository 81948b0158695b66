"""The README's quick start, as a newcomer runs it: its two commands, read from the
README (so the README cannot drift), in a fresh `git clone` of this repository.

1. the setup-and-demo command: nothing may be missing on a machine where the tests
   run (no terminal, no --yes: it would refuse to install), then `backout demo`
   narrates a healthy deploy and a broken one rolled back by itself, shows skipped
   steps as skipped, and leaves nothing behind;
2. the test command, given one small test file (the whole suite is what CI runs
   through .ci/run, which reads the same line from the README): setup, ruff and mypy
   on the clone, pytest.

This is the suite's one run of the demo (about 2 minutes). The clone has what is
committed: uncommitted changes of a working tree are not in it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.docker


def _quickstart_commands() -> list[str]:
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: list[str] = module.commands((ROOT / "README.md").read_text(encoding="utf-8"))
    return found


def _newcomer_env(tmp: Path) -> dict[str, str]:
    """This process's environment without what running under pytest/uv adds."""
    drop = ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "BACKOUT_FAULT_INJECT",
            "DOCKER_HOST", "DOCKER_CONTEXT", "BACKOUT_SETUP_YES", "BACKOUT_REQUIRE_DOCKER",
            "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["TMPDIR"] = str(tmp)
    return env


def _run(command: str, cwd: Path, env: dict[str, str],
         timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout, check=False)
    print(f"$ {command} -> {result.returncode}")
    return result


def test_the_readme_quick_start_works_in_a_fresh_clone(tmp_path: Path) -> None:
    demo, tests = _quickstart_commands()
    assert "demo" in demo and "test" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/quickstart.py --test" in ci  # CI runs the README's own test line
    clone = tmp_path / "backout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = _newcomer_env(scratch)

    result = _run(demo, clone, env, timeout=1500)
    out = result.stdout + result.stderr
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-3000:])
    assert "nothing to install" in result.stderr  # this machine is set up: nothing asked
    assert "deploy of v2: deployed and healthy" in out
    assert "deploy of v3: rolled back to the previous release, verified" in out
    assert "RED" in out and "now answers: hello from v2" in out
    assert "verify: passed" in out and "resolved" in out
    # the code-only rollback's data steps did nothing, and say so
    assert "restore redis: skipped (code-only rollback: the data stays)" in out
    assert "restore redis: ok" not in out and "safety backup of redis: ok" not in out
    assert "Traceback" not in out
    # the demo's scratch project and build contexts are gone (uv keeps a lock file here)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("backout")] == []
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=io.backout.demo"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert left == [], left

    result = _run(f"{tests} tests/unit/test_architecture.py -q -p no:cacheprovider", clone,
                  env, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "passed" in result.stdout and "All checks passed" in result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
    assert (clone / ".venv").is_dir()
