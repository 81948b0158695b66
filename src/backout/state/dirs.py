"""backout's own directories in the user's project, kept out of their git status.

The state directory holds the store, the lock, backups and saved patches: none of
it belongs in the deployment repository. Like ``.pytest_cache`` or ``.mypy_cache``,
it carries a ``.gitignore`` of ``*``, so it ignores itself: nothing to add to the
project's own ``.gitignore`` (a change there would make the tree dirty, and
``backout deploy`` refuses a dirty tree), and it holds in a project put into git later.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

SELF_IGNORE = "# written by backout: its state stays out of git (delete this line's file to see it)\n*\n"


def private_dir(path: Path) -> Path:
    """``mkdir -p`` (mode 0700) with a self-ignoring ``.gitignore`` inside."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker = path / ".gitignore"
    if not marker.exists():
        with contextlib.suppress(OSError):  # a read-only copy still works, only less tidy
            marker.write_text(SELF_IGNORE)
    return path
