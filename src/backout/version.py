"""What ``backout --version`` says: the package version, and in a git checkout of
backout itself (a development install) the commit it runs from, so a bug report
names the exact code."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from backout import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


def source_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The repository root when this package runs from backout's own source tree
    (src layout: <root>/src/backout), else None (an installed wheel)."""
    root = package_dir.parent.parent
    try:
        meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if meta.get("project", {}).get("name") != "backout" or not (root / ".git").exists():
        return None
    return root


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def describe(package_dir: Path = PACKAGE_DIR) -> str:
    """``backout 0.1.0`` or ``backout 0.1.0 (commit 1a2b3c4d5e6f, uncommitted changes)``."""
    text = f"backout {__version__}"
    root = source_checkout(package_dir)
    commit = _git(root, "rev-parse", "--short=12", "HEAD") if root else None
    if root is None or not commit:
        return text
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return f"{text} (commit {commit}{', uncommitted changes' if dirty else ''})"
