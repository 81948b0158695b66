"""Running the ``backout`` CLI as an operator would: a real subprocess in the project
directory, no terminal, a clean environment; and asserting how it failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("BACKOUT_FAULT_INJECT", "DOCKER_HOST", "DOCKER_CONTEXT")}
    env.setdefault("BACKOUT_ACTOR", "pytest")
    env.update(extra)
    return env


def backout(*args: str, cwd: Path, timeout: float = 900,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as an operator would, without a terminal (stdin from /dev/null)."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "backout", *args], cwd=cwd,
                            env=clean_env(**extra_env), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout, check=False)
    # Shown with a failing test (or -s): where the time went.
    print(f"[{time.monotonic() - start:5.1f}s] backout {' '.join(args)} -> {result.returncode}")
    return result


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args[3:], result.returncode, result.stdout[-3000:],
                                    result.stderr[-3000:])
    return result


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(result).stdout)
    assert data["ok"] is True
    return data


def assert_clean_error(result: subprocess.CompletedProcess[str], exit_code: int,
                       *needles: str) -> str:
    """Failed cleanly: the documented exit code, exactly one error line, no traceback."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("backout: error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
