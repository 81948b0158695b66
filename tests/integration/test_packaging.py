"""backout installs as a tool: the wheel `uv build` makes installs with `uv tool
install` (into a private tool directory) and with pip into a fresh venv (what `pipx
install` does), `backout --version` runs from it, and the demo's stack ships inside
the package, so the installed tool can build and run the demo. Needs PyPI (the
build backend and the dependencies, usually from uv's cache), not Docker."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from backout import __version__

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                            env={**clean, **env}, cwd=ROOT)
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-2000:])
    return result


def test_the_wheel_installs_as_a_tool_and_runs(tmp_path: Path) -> None:
    _run(["uv", "build", "--wheel", "--out-dir", str(tmp_path / "dist"), "-q"])
    wheel = next((tmp_path / "dist").glob("backout-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("backout/demo/stack/web/Dockerfile", "backout/demo/stack/web/app.py",
                 "backout/demo/stack/redis/Dockerfile", "backout/py.typed"):
        assert data in names, data
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA")))
    assert b"Classifier: License :: OSI Approved :: MIT License" in meta

    tools, bins = tmp_path / "tools", tmp_path / "bin"
    _run(["uv", "tool", "install", "-q", str(wheel)], UV_TOOL_DIR=str(tools),
         UV_TOOL_BIN_DIR=str(bins))
    version = _run([str(bins / "backout"), "--version"]).stdout.strip()
    assert version == f"backout {__version__}"  # an installed copy: no commit to name
    assert "demo" in _run([str(bins / "backout"), "--help"]).stdout
    # the demo builds its images from these files, found as package data
    tool_python = next((tools / "backout").glob("bin/python*"))
    files = _run([str(tool_python), "-c", "from backout.demo.run import _stack_files; "
                  "print(sorted(_stack_files()))"]).stdout
    assert "web/Dockerfile" in files and "redis/Dockerfile" in files

    venv = tmp_path / "venv"  # pipx's way: a venv of its own and pip
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])
    assert _run([str(venv / "bin" / "backout"), "--version"]).stdout.strip() == \
        f"backout {__version__}"
