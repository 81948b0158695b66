"""Row-, key- and document-level snapshots of the test stack's data, for exact
comparisons (a restore is proven by equality, not by counts)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support.stack import DATABASE, TestStack

# Every key of every type, as JSON, in one round trip (EVAL is atomic: one instant).
# TTLs are kept as "has one or not": they tick.
REDIS_SNAPSHOT_LUA = """
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  local t = redis.call('TYPE', k)['ok']
  local v
  if t == 'string' then v = redis.call('GET', k)
  elseif t == 'hash' then v = redis.call('HGETALL', k)
  elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then v = redis.call('SMEMBERS', k); table.sort(v)
  elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  else v = 'unsupported type' end
  out[#out + 1] = {k, t, v, redis.call('PTTL', k) > 0}
end
return cjson.encode(out)
"""
# Incremented by every GET / on the frontend, which is the frontend's health URL in the
# generated backout.toml: `backout verify` itself changes it.
VOLATILE_REDIS_KEYS = ("frontend:pageviews",)



def mysql_snapshot(stack: TestStack) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every base table (ordered by its first column, the primary key of
    every table of the test app) and the column definitions (so a migration shows)."""
    tables = [r[0] for r in stack.mysql_query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
        " AND table_type = 'BASE TABLE' ORDER BY table_name")]
    assert tables, f"no tables in {DATABASE}"
    sql = "\n".join(f"SELECT '{t}', x.* FROM `{t}` x ORDER BY 2;" for t in tables)
    sql += ("\nSELECT '@columns', table_name, column_name, column_type, is_nullable"
            " FROM information_schema.columns WHERE table_schema = DATABASE()"
            " ORDER BY table_name, ordinal_position;")
    snap: dict[str, list[tuple[Any, ...]]] = {t: [] for t in [*tables, "@columns"]}
    for row in stack.mysql_query(sql):
        snap[str(row[0])].append(row[1:])
    return snap


def redis_snapshot(stack: TestStack, volatile: bool = True,
                   ttl: bool = False) -> dict[str, Any]:
    """key -> (type, value[, has a TTL]); ``volatile``: with the keys the stack's own
    health checks change."""
    out: dict[str, Any] = {}
    for key, kind, value, has_ttl in json.loads(
            stack.redis_cmd("--raw", "EVAL", REDIS_SNAPSHOT_LUA, "0")):
        if kind == "hash":
            value = dict(zip(value[::2], value[1::2], strict=True))
        if volatile or key not in VOLATILE_REDIS_KEYS:
            out[key] = (kind, value, has_ttl) if ttl else (kind, value)
    return out


def mongo_snapshot(stack: TestStack) -> dict[str, list[Any]]:
    colls = stack.mongo_eval(
        "result = {c: list(db[c].find()) for c in db.list_collection_names()"
        " if not c.startswith('system.')}")
    return {c: sorted(docs, key=lambda d: json.dumps(d["_id"], sort_keys=True))
            for c, docs in sorted(colls.items())}


def pg_snapshot(stack: TestStack) -> dict[str, Any]:
    """Every user table of the app database, row for row, and the roles."""
    tables = [r[0] for r in stack.pg_query(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")]
    out: dict[str, Any] = {}
    for table in tables:
        out[table] = stack.pg_query(f"SELECT * FROM {table} ORDER BY 1")
    out["roles"] = stack.pg_query("SELECT rolname, rolcanlogin FROM pg_roles "
                                  "WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1")
    return out


SNAPSHOTS: dict[str, Callable[[TestStack], Any]] = {
    "mysql": mysql_snapshot, "redis": redis_snapshot, "mongodb": mongo_snapshot,
    "postgresql": pg_snapshot}


def data_snapshot(stack: TestStack, volatile: bool = True) -> dict[str, Any]:
    return {"mysql": mysql_snapshot(stack), "redis": redis_snapshot(stack, volatile),
            "mongodb": mongo_snapshot(stack)}



def mysql_objects(stack: TestStack) -> list[tuple[Any, ...]]:
    """Every schema object of the app database but the tables' rows: views, triggers,
    routines, events, foreign keys, indexes and columns, by definition."""
    sql = """
SELECT 'view', table_name, view_definition, security_type FROM information_schema.views
  WHERE table_schema = DATABASE();
SELECT 'trigger', trigger_name, CONCAT(action_timing, ' ', event_manipulation, ' ON ',
  event_object_table), action_statement FROM information_schema.triggers
  WHERE trigger_schema = DATABASE();
SELECT 'routine', routine_name, routine_type, routine_definition FROM information_schema.routines
  WHERE routine_schema = DATABASE();
SELECT 'event', event_name, CONCAT(interval_value, ' ', interval_field, ' ', status),
  event_definition FROM information_schema.events WHERE event_schema = DATABASE();
SELECT 'fk', constraint_name, CONCAT(table_name, ' -> ', referenced_table_name), delete_rule
  FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE();
SELECT 'index', CONCAT(table_name, '.', index_name), non_unique,
  GROUP_CONCAT(column_name ORDER BY seq_in_index) FROM information_schema.statistics
  WHERE table_schema = DATABASE() GROUP BY table_name, index_name, non_unique;
SELECT 'table', table_name, table_type, engine FROM information_schema.tables
  WHERE table_schema = DATABASE();
"""
    return sorted(stack.mysql_query(sql), key=lambda r: tuple(str(x) for x in r))
