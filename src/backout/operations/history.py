"""``backout history``: the journaled operations, newest first, with their duration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from backout.state import Store


def duration(start: str, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (ISO timestamps); None while running."""
    if not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def history(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` operations, each with ``duration_s``."""
    return [{**op, "duration_s": duration(op["created_at"], op["finished_at"])}
            for op in store.history(limit)]
