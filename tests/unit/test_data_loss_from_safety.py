"""The restore's final data-loss window read from the safety backup just taken (the
writers stopped): the same figures the live server would give, no query asked; and
the server asked whenever that section cannot tell."""
from __future__ import annotations

from typing import Any

import pytest

from backout.engines import mongodb, mysql, postgresql, redis


class Unasked:
    """A client the window must not use."""

    def __init__(self, _access: object) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the server was asked: {name}")


def _pg(tables: dict[str, int], lsn: str, transactions: int, *, absent: list[str] | None = None,
        reset: str = "") -> dict[str, Any]:
    return {"databases": {"app": {"tables": tables}} if tables else {},
            "absent": absent or [],
            "position": {"lsn": lsn, "stats": {"app": {"transactions": transactions,
                                                       "row_writes": 0, "stats_reset": reset}}}}


@pytest.mark.parametrize(("start", "end", "distance"), [
    ("0/16DEFF88", "0/16DEFFC0", 0x38),
    ("0/FFFFFFF0", "1/10", 0x20),          # across the 4 GB boundary of the low half
    ("16/B374D848", "16/B374D848", 0),
    ("not an lsn", "0/10", None), ("0/10", "0/zz", None),
])
def test_lsn_distance_is_pg_wal_lsn_diff(start: str, end: str, distance: int | None) -> None:
    assert postgresql.lsn_distance(start, end) == distance


def test_postgresql_reads_counts_wal_and_transactions_from_the_safety_backup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgresql, "Postgres", Unasked)
    backup = _pg({"public.items": 10, "public.log": 4}, "0/100", 50)
    safety = _pg({"public.items": 13, "public.log": 4, "public.new": 2}, "0/180", 57)
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert out == {"row_deltas": {"app.public.items": 3, "app.public.new": 2}, "changes": 5,
                   "databases_missing_now": [], "wal": {"from": "0/100", "bytes": 0x80},
                   "transactions": 7}


def test_postgresql_a_database_gone_since_and_reset_counters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgresql, "Postgres", Unasked)
    backup = _pg({"public.items": 10}, "0/100", 50)
    safety = _pg({}, "0/100", 3, absent=["app"], reset="2026-12-05")
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert (out["row_deltas"], out["databases_missing_now"], out["transactions"]) == (
        {"app.public.items": -10}, ["app"], None)


class LivePostgres:
    asked: list[str] = []  # noqa: RUF012 (reset per test)

    def __init__(self, _access: object) -> None:
        pass

    def facts(self, *, version: bool = False, position: bool = False) -> postgresql.ServerFacts:
        LivePostgres.asked.append(f"facts position={position}")
        return postgresql.ServerFacts(
            databases={"app", "other"}, lsn="0/163",
            stats={"app": {"transactions": 60, "stats_reset": ""},
                   "other": {"transactions": 5, "stats_reset": ""}})

    def table_counts(self, databases: list[str]) -> dict[str, dict[str, int]]:
        LivePostgres.asked.append(f"counts {sorted(databases)}")
        return {d: {"public.items": 11} for d in databases}


def test_postgresql_asks_the_server_for_a_database_the_safety_backup_did_not_take(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgresql, "Postgres", LivePostgres)
    LivePostgres.asked = []
    backup = _pg({"public.items": 10}, "0/100", 50)
    backup["databases"]["other"] = {"tables": {"public.items": 11}}
    safety = _pg({"public.items": 10}, "0/100", 50)  # took app only
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    # one psql for the databases and the position, one count per database
    assert LivePostgres.asked == ["facts position=True", "counts ['app', 'other']"]
    assert (out["row_deltas"], out["wal"]["bytes"], out["transactions"]) == (
        {"app.public.items": 1}, 0x63, 10)


def test_postgresql_a_recorded_position_that_is_not_an_lsn_is_not_sent_to_the_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgresql, "Postgres", LivePostgres)
    LivePostgres.asked = []
    backup = _pg({"public.items": 10}, "x'; DROP", 50)
    out = postgresql.ENGINE.data_loss(None, backup)  # type: ignore[arg-type]
    assert LivePostgres.asked == ["facts position=False", "counts ['app']"]
    assert (out["wal"]["bytes"], out["row_deltas"]) == (None, {"app.public.items": 1})


def _my(tables: dict[str, int], binlog: dict[str, Any] | None) -> dict[str, Any]:
    return {"databases": {"shop": {"tables": tables}}, "absent": [], "binlog": binlog}


def test_mysql_reads_counts_and_binlog_position_from_the_safety_backup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mysql, "MySQL", Unasked)
    backup = _my({"orders": 5}, {"file": "bin.000002", "position": 400, "gtid": "0-1-10"})
    safety = _my({"orders": 9}, {"file": "bin.000002", "position": 1400, "gtid": "0-1-14"})
    out = mysql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert out["row_deltas"] == {"shop.orders": 4}
    assert out["binlog"]["bytes"] == 1000
    assert out["binlog"]["to"] == {"file": "bin.000002", "position": 1400}
    assert out["gtid"]["transactions"] == 4


class SizedMySQL:
    asked: list[str] = []  # noqa: RUF012 (reset per test)

    def __init__(self, _access: object) -> None:
        pass

    def binlog_sizes(self) -> dict[str, int]:
        SizedMySQL.asked.append("binlog_sizes")
        return {"bin.000002": 1000, "bin.000003": 300}

    def gtid_now(self) -> str:
        SizedMySQL.asked.append("gtid_now")
        return "0-1-30"


def test_mysql_asks_only_what_the_safety_backup_cannot_tell(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # another binlog file: its sizes are the server's; no GTID recorded: asked too
    monkeypatch.setattr(mysql, "MySQL", SizedMySQL)
    SizedMySQL.asked = []
    backup = _my({"orders": 5}, {"file": "bin.000002", "position": 400, "gtid": "0-1-10"})
    safety = _my({"orders": 5}, {"file": "bin.000003", "position": 100})
    out = mysql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert (out["binlog"]["bytes"], out["gtid"]["transactions"]) == (700, 20)
    assert SizedMySQL.asked == ["binlog_sizes", "gtid_now"]


def test_redis_reads_keys_and_write_counters_from_the_safety_backup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis, "Redis", Unasked)
    backup = {"keys": {"db0": 100}, "write_stats": {"run_id": "r1", "write_commands": 500}}
    safety = {"keys": {"db0": 104, "db2": 1},
              "write_stats": {"run_id": "r1", "write_commands": 530}}
    out = redis.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert (out["key_deltas"], out["write_commands"], out["changes"]) == (
        {"db0": 4, "db2": 1}, 30, 30)


def test_mongodb_reads_document_counts_from_the_safety_backup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mongodb, "MongoDB", Unasked)
    backup = {"databases": {"app": {"collections": {"users": 7, "gone": 2}}}}
    safety = {"databases": {"app": {"collections": {"users": 9}}, "more": {"collections": {}}}}
    out = mongodb.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert out == {"document_deltas": {"app.users": 2, "app.gone": -2}, "changes": 4}
