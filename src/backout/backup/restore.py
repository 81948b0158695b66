"""Restoring an artifact into a database, and proving the result by its counts.

Each engine (``backout.engines``) restores its own type; the same routines serve ``rollback db`` (into the project's service) and
``backups verify --restore-test`` (into a throwaway container of the same image).
Every restore replaces rather than merges: MySQL databases are dropped and
reloaded, MongoDB collections are dropped and re-inserted (stopping at the first
error), Redis gets its RDB replaced with any AOF set aside.
"""

from __future__ import annotations

import json
from typing import Any


def describe_counts(counts: Any) -> str:
    return json.dumps(counts, sort_keys=True)
