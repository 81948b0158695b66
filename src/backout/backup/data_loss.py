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

Counts are net: a row inserted and another deleted cancel out. Estimating never
fails the plan: what cannot be told is said so.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from backout.backup.engines import manifest_counts
from backout.engines.access import EngineAccess
from backout.engines.mongodb import MongoDB
from backout.engines.mysql import MySQL
from backout.engines.redis import Redis
from backout.errors import BackoutError

UNKNOWN = "unknown"


def window(access: EngineAccess, section: dict[str, Any] | None, taken_at: str | None,
           *, now: float | None = None) -> dict[str, Any]:
    """``{"database", "type", "taken_at", "age_seconds", "summary", ...}`` for a
    restore of ``section`` (a manifest's database section; None for a dump file
    not yet read) over what ``access`` reaches now."""
    db = access.db
    now = time.time() if now is None else now
    out: dict[str, Any] = {"database": db.name, "type": db.type, "taken_at": taken_at,
                           "age_seconds": _age(taken_at, now)}
    if section is None:
        out["summary"] = f"{_when(out)}; writes since then: {UNKNOWN} (a dump file carries no counts)"
        return out
    try:
        detail = {"mysql": _mysql, "redis": _redis, "mongodb": _mongodb}[db.type](access, section)
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


def _deltas(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
            ) -> dict[str, int]:
    """``{"db.table": now - then}`` for every table whose count differs."""
    out = {}
    for group in sorted(set(before) | set(after)):
        b, a = before.get(group, {}), after.get(group, {})
        for name in sorted(set(b) | set(a)):
            diff = a.get(name, 0) - b.get(name, 0)
            if diff:
                out[f"{group}.{name}"] = diff
    return out


def _mysql(access: EngineAccess, section: dict[str, Any]) -> dict[str, Any]:
    my = MySQL(access)
    present = set(my.user_databases())
    databases = [d for d in section["databases"] if d in present]
    now_counts = my.table_counts(databases)
    then = manifest_counts(section)
    deltas = _deltas(then, {**{d: {} for d in then}, **now_counts})
    out: dict[str, Any] = {"row_deltas": deltas, "changes": sum(abs(v) for v in deltas.values()),
                           "databases_missing_now": sorted(set(section["databases"]) - present)}
    binlog = section.get("binlog")
    current = my.binlog_position() if binlog else None
    if binlog and current:
        out["binlog"] = {"from": binlog, "to": current,
                         "bytes": _binlog_bytes(my, binlog, current)}
        before = binlog.get("gtid") or my.gtid_at(binlog["file"], int(binlog["position"]))
        after = my.gtid_now()
        if before is not None and after is not None:
            out["gtid"] = {"from": before, "to": after,
                           "transactions": _gtid_transactions(before, after)}
    return out


def _binlog_bytes(my: MySQL, start: dict[str, Any], end: dict[str, Any]) -> int | None:
    if start["file"] == end["file"]:
        return int(end["position"]) - int(start["position"])
    sizes = my.binlog_sizes()
    if start["file"] not in sizes:
        return None  # purged since: the distance cannot be told
    names = sorted(sizes)
    total = sizes[start["file"]] - int(start["position"])
    for name in names[names.index(start["file"]) + 1:]:
        if name == end["file"]:
            return total + int(end["position"])
        total += sizes[name]
    return None


def _gtid_transactions(before: str, after: str) -> int | None:
    """Transactions between two MariaDB GTID positions (``domain-server-seq``, comma
    separated per domain): the sequence numbers' difference, summed over domains."""
    def parse(text: str) -> dict[str, int]:
        out = {}
        for part in text.split(","):
            bits = part.strip().split("-")
            if len(bits) == 3 and bits[2].isdigit():
                out[bits[0]] = int(bits[2])
        return out

    b, a = parse(before), parse(after)
    if not a:
        return None
    return sum(seq - b.get(domain, 0) for domain, seq in a.items())


def _redis(access: EngineAccess, section: dict[str, Any]) -> dict[str, Any]:
    redis = Redis(access)
    now_keys = redis.keyspace()
    then = dict(section.get("keys") or {})
    deltas = {db: now_keys.get(db, 0) - then.get(db, 0) for db in sorted(set(then) | set(now_keys))
              if now_keys.get(db, 0) != then.get(db, 0)}
    out: dict[str, Any] = {"key_deltas": deltas, "changes": sum(abs(v) for v in deltas.values())}
    recorded = section.get("write_stats")
    current = redis.write_stats() if recorded else None
    if recorded and current and current["run_id"] == recorded["run_id"]:
        out["write_commands"] = current["write_commands"] - recorded["write_commands"]
    elif recorded:
        out["write_commands"] = None  # the server restarted since: its counters did too
    return out


def _mongodb(access: EngineAccess, section: dict[str, Any]) -> dict[str, Any]:
    mongo = MongoDB(access)
    try:
        then = manifest_counts(section)
        now_counts = {db: {c: mongo.client()[db][c].count_documents({})
                           for c in mongo.collections(db)} for db in then}
    except BackoutError:
        raise
    except Exception as exc:  # pymongo's errors
        raise BackoutError(f"{access.db.name}: cannot count documents: {exc}") from exc
    finally:
        mongo.close()
    deltas = _deltas(then, now_counts)
    return {"document_deltas": deltas, "changes": sum(abs(v) for v in deltas.values())}


def _describe(out: dict[str, Any]) -> str:
    if out.get("error"):
        return f"{UNKNOWN} ({out['error']})"
    parts = []
    if "gtid" in out and out["gtid"]["transactions"] is not None:
        parts.append(f"{out['gtid']['transactions']} transaction(s) on the server (GTID "
                     f"{out['gtid']['from']} -> {out['gtid']['to']})")
    if "binlog" in out and out["binlog"]["bytes"] is not None:
        parts.append(f"binlog +{out['binlog']['bytes']} bytes")
    if out.get("write_commands") is not None:
        parts.append(f"about {out['write_commands']} write command(s)")
    deltas = out.get("row_deltas") or out.get("key_deltas") or out.get("document_deltas") or {}
    unit = {"mysql": "rows", "redis": "keys", "mongodb": "documents"}[out["type"]]
    if deltas:
        shown = ", ".join(f"{k} {v:+d}" for k, v in list(deltas.items())[:6])
        more = f" and {len(deltas) - 6} more" if len(deltas) > 6 else ""
        parts.append(f"{unit}: {shown}{more}")
    else:
        parts.append(f"{unit}: no count differs")
    for gone in out.get("databases_missing_now") or []:
        parts.append(f"database {gone} is missing now (the restore brings it back)")
    return "; ".join(parts)
