"""A database's part of a backup, through its engine (``backout.engines``): the
artifact name, the dump (written into the partial set and proved by
``pipeline.scan``), the format check, the counts a restore must reproduce."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from backout import engines
from backout.config import DatabaseConfig
from backout.engines.base import EngineContext
from backout.engines.formats import VolumeTarChecker
from backout.storage.pipeline import Checker, IntegrityError

DumpContext = EngineContext  # the name backup's callers know it by


def artifact_name(db: DatabaseConfig) -> str:
    return engines.get(db.type).artifact_name(db)


def checker_for(db_section: dict[str, Any], what: str) -> Checker:
    kind = db_section["type"]
    if kind == "volume":
        return VolumeTarChecker(what)
    if kind not in engines.names():
        raise IntegrityError(f"{what}: unknown database type {kind!r} in manifest")
    return engines.get(kind).checker(db_section, what)


def dump(ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
    """Dump one database into ``set_dir``; returns ``{"database": ..., "artifact": ...}``."""
    start = time.monotonic()
    section = engines.get(db.type).dump(ctx, db, set_dir)
    section["duration_s"] = round(time.monotonic() - start, 3)
    return section


def manifest_counts(section: dict[str, Any]) -> Any:
    """The counts a restore must reproduce, by database type (for comparisons)."""
    return engines.get(section["type"]).expected_counts(section)
