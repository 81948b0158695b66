"""The data-loss window of a restore: what the live data has that the backup has not.

Before any restore the operator is shown the price of going back: the backup's age,
and where the engine can tell, the writes since it was taken. They leave the live
data (the safety backup taken just before the restore keeps them):

* MySQL/MariaDB: the binary log between the dump's position (``--master-data``)
  and now, in bytes, and on MariaDB in transactions (GTID sequence numbers, every
  database of the server); and the row-count difference per table.
* Redis: the key-count difference per logical database, and the write commands
  executed since the dump (``INFO commandstats``, same server run only).
* MongoDB: the document-count difference per collection.
* PostgreSQL: the WAL written since the dump (bytes between LSNs), the transactions
  committed in the backed-up databases (``pg_stat_database``, unless its counters
  were reset since), and the row-count difference per table.

Counts are net: a row inserted and another deleted cancel out. Estimating never
fails the plan: what cannot be told is said so.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from backout import engines
from backout.engines.access import EngineAccess
from backout.errors import BackoutError

UNKNOWN = "unknown"


def window(access: EngineAccess, section: dict[str, Any] | None, taken_at: str | None,
           *, now: float | None = None, current: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """``{"database", "type", "taken_at", "age_seconds", "summary", ...}`` for a
    restore of ``section`` (a manifest's database section; None for a dump file
    not yet read) over what ``access`` reaches now. ``current``: the section of the
    safety backup just taken with the writers stopped, which holds what the live data
    has (the engine reads it instead of counting every table again)."""
    db = access.db
    now = time.time() if now is None else now
    out: dict[str, Any] = {"database": db.name, "type": db.type, "taken_at": taken_at,
                           "age_seconds": _age(taken_at, now)}
    if section is None:
        out["summary"] = f"{_when(out)}; writes since then: {UNKNOWN} (a dump file carries no counts)"
        return out
    try:
        detail = engines.get(db.type).data_loss(access, section, current)
    except BackoutError as exc:
        detail = {"changes": None, "error": exc.one_line()}
    out.update(detail)
    out["summary"] = f"{_when(out)}; since then: {_describe(out)}"
    return out


def _age(taken_at: str | None, now: float) -> float | None:
    if not taken_at:
        return None
    try:
        stamp = datetime.strptime(taken_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return round(now - stamp.timestamp(), 1)


def _when(out: dict[str, Any]) -> str:
    age = out.get("age_seconds")
    if out.get("taken_at") is None or age is None:
        return f"{out['database']}: backup time {UNKNOWN}"
    return f"{out['database']}: backup taken {out['taken_at']} ({_duration(age)} ago)"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _describe(out: dict[str, Any]) -> str:
    if out.get("error"):
        return f"{UNKNOWN} ({out['error']})"
    parts = []
    if "gtid" in out and out["gtid"]["transactions"] is not None:
        parts.append(f"{out['gtid']['transactions']} transaction(s) on the server (GTID "
                     f"{out['gtid']['from']} -> {out['gtid']['to']})")
    if "binlog" in out and out["binlog"]["bytes"] is not None:
        parts.append(f"binlog +{out['binlog']['bytes']} bytes")
    if out.get("transactions") is not None:
        parts.append(f"{out['transactions']} committed transaction(s), reads included")
    if "wal" in out and out["wal"]["bytes"] is not None:
        parts.append(f"WAL +{out['wal']['bytes']} bytes")
    if out.get("write_commands") is not None:
        parts.append(f"about {out['write_commands']} write command(s)")
    deltas = out.get("row_deltas") or out.get("key_deltas") or out.get("document_deltas") or {}
    unit = engines.get(out["type"]).count_unit
    if deltas:
        shown = ", ".join(f"{k} {v:+d}" for k, v in list(deltas.items())[:6])
        more = f" and {len(deltas) - 6} more" if len(deltas) > 6 else ""
        parts.append(f"{unit}: {shown}{more}")
    else:
        parts.append(f"{unit}: no count differs")
    for gone in out.get("databases_missing_now") or []:
        parts.append(f"database {gone} is missing now (the restore brings it back)")
    return "; ".join(parts)
