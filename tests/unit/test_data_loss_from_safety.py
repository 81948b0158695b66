"""The restore's final data-loss window against the safety backup just taken: where
the server shows that nothing was written since that dump began (PostgreSQL's WAL
position, MySQL's binlog position unchanged), the backup's counts are the live ones
and no table is counted again; any write since, a database the backup did not take
or a table it left out, and the tables are counted. Redis and MongoDB are asked
live in any case."""
from __future__ import annotations

from typing import Any, ClassVar

import pytest

from backout.engines import mongodb, mysql, postgresql, redis


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
    ("not an lsn", "0/10", None), ("0/10", "0/zz", None), ("0x1/10", "0/10", None),
    ("0/1_0", "0/10", None), (" 0/10", "0/10", None), ("0/123456789", "0/10", None),
])
def test_lsn_distance_is_pg_wal_lsn_diff(start: str, end: str, distance: int | None) -> None:
    assert postgresql.lsn_distance(start, end) == distance


class LivePostgres:
    """The server: its WAL position and counters (one psql), and its row counts."""
    lsn: ClassVar[str] = "0/180"
    databases: ClassVar[set[str]] = {"app"}
    asked: ClassVar[list[str]] = []

    def __init__(self, _access: object) -> None:
        pass

    def facts(self, *, version: bool = False, position: bool = False) -> postgresql.ServerFacts:
        LivePostgres.asked.append("facts")
        return postgresql.ServerFacts(
            databases=set(self.databases), lsn=self.lsn,
            stats={d: {"transactions": 57, "stats_reset": ""} for d in self.databases})

    def table_counts(self, databases: list[str]) -> dict[str, dict[str, int]]:
        LivePostgres.asked.append(f"counts {sorted(databases)}")
        return {d: {"public.items": 20} for d in databases}


@pytest.fixture
def live_pg(monkeypatch: pytest.MonkeyPatch) -> type[LivePostgres]:
    monkeypatch.setattr(postgresql, "Postgres", LivePostgres)
    LivePostgres.lsn, LivePostgres.databases, LivePostgres.asked = "0/180", {"app"}, []
    return LivePostgres


def test_postgresql_nothing_written_since_the_safety_backup_its_counts_are_used(
        live_pg: type[LivePostgres]) -> None:
    backup = _pg({"public.items": 10, "public.log": 4}, "0/100", 50)
    safety = _pg({"public.items": 13, "public.log": 4, "public.new": 2}, "0/180", 55)
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert live_pg.asked == ["facts"]  # no table counted
    assert out == {"row_deltas": {"app.public.items": 3, "app.public.new": 2}, "changes": 5,
                   "databases_missing_now": [], "wal": {"from": "0/100", "bytes": 0x80},
                   "transactions": 7}


def test_postgresql_a_write_since_the_safety_backup_has_the_tables_counted(
        live_pg: type[LivePostgres]) -> None:
    # a writer backout was not told of, or writers back before a resumed restore
    live_pg.lsn = "0/1C0"
    backup = _pg({"public.items": 10}, "0/100", 50)
    safety = _pg({"public.items": 13}, "0/180", 55)
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert live_pg.asked == ["facts", "counts ['app']"]
    assert (out["row_deltas"], out["wal"]["bytes"]) == ({"app.public.items": 10}, 0xC0)


def test_postgresql_a_database_gone_since_the_backup(live_pg: type[LivePostgres]) -> None:
    live_pg.databases = set()
    backup = _pg({"public.items": 10}, "0/100", 50)
    safety = _pg({}, "0/180", 3, absent=["app"])
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert live_pg.asked == ["facts"]
    assert (out["row_deltas"], out["databases_missing_now"], out["transactions"]) == (
        {"app.public.items": -10}, ["app"], None)


def test_postgresql_a_database_the_safety_backup_did_not_take_has_the_tables_counted(
        live_pg: type[LivePostgres]) -> None:
    live_pg.databases = {"app", "other"}
    backup = _pg({"public.items": 10}, "0/100", 50)
    backup["databases"]["other"] = {"tables": {"public.items": 11}}
    safety = _pg({"public.items": 10}, "0/180", 50)  # took app only
    out = postgresql.ENGINE.data_loss(None, backup, safety)  # type: ignore[arg-type]
    assert live_pg.asked == ["facts", "counts ['app', 'other']"]
    assert out["row_deltas"] == {"app.public.items": 10, "other.public.items": 9}


def test_postgresql_without_a_safety_backup_the_tables_are_counted(
        live_pg: type[LivePostgres]) -> None:
    out = postgresql.ENGINE.data_loss(None, _pg({"public.items": 10}, "0/100", 50))  # type: ignore[arg-type]
    assert live_pg.asked == ["facts", "counts ['app']"]
    assert out["transactions"] == 7


class LiveMySQL:
    position: ClassVar[dict[str, Any] | None] = None
    asked: ClassVar[list[str]] = []

    def __init__(self, _access: object) -> None:
        pass

    def binlog_position(self) -> dict[str, Any] | None:
        LiveMySQL.asked.append("position")
        return self.position

    def binlog_sizes(self) -> dict[str, int]:
        LiveMySQL.asked.append("binlog_sizes")
        return {"bin.000002": 1000, "bin.000003": 300}

    def gtid_now(self) -> str:
        LiveMySQL.asked.append("gtid_now")
        return "0-1-14"

    def gtid_at(self, file: str, position: int) -> str:
        LiveMySQL.asked.append(f"gtid_at {file} {position}")
        return "0-1-9"

    def user_databases(self) -> list[str]:
        LiveMySQL.asked.append("databases")
        return ["shop"]

    def table_counts(self, databases: list[str]) -> dict[str, dict[str, int]]:
        LiveMySQL.asked.append("counts")
        return {d: {"orders": 11} for d in databases}


@pytest.fixture
def live_my(monkeypatch: pytest.MonkeyPatch) -> type[LiveMySQL]:
    monkeypatch.setattr(mysql, "MySQL", LiveMySQL)
    LiveMySQL.position = {"file": "bin.000002", "position": 1400}
    LiveMySQL.asked = []
    return LiveMySQL


def _my(tables: dict[str, int], binlog: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
    return {"databases": {"shop": {"tables": tables}}, "absent": [], "binlog": binlog, **more}


BACKUP_AT = {"file": "bin.000002", "position": 400, "gtid": "0-1-10"}


def test_mysql_binlog_unmoved_since_the_safety_backup_its_counts_are_used(
        live_my: type[LiveMySQL]) -> None:
    safety = _my({"orders": 9}, {"file": "bin.000002", "position": 1400, "gtid": "0-1-14"})
    out = mysql.ENGINE.data_loss(None, _my({"orders": 5}, BACKUP_AT), safety)  # type: ignore[arg-type]
    assert "counts" not in live_my.asked and "databases" not in live_my.asked
    assert out["row_deltas"] == {"shop.orders": 4}
    assert (out["binlog"]["bytes"], out["gtid"]["transactions"]) == (1000, 4)


@pytest.mark.parametrize("safety", [
    _my({"orders": 9}, {"file": "bin.000002", "position": 1200}),   # written to since
    _my({"orders": 9}, {"file": "bin.000001", "position": 1400}),   # another file
    _my({"orders": 9}, None),                                       # no binlog then
    _my({"orders": 9}, {"file": "bin.000002", "position": 1400},    # a table left out
        not_dumped=[{"kind": "table", "object": "shop.broken", "why": "x"}]),
], ids=["moved", "other-file", "no-binlog", "not-dumped"])
def test_mysql_has_the_tables_counted_unless_the_safety_backup_holds_the_live_data(
        live_my: type[LiveMySQL], safety: dict[str, Any]) -> None:
    out = mysql.ENGINE.data_loss(None, _my({"orders": 5}, BACKUP_AT), safety)  # type: ignore[arg-type]
    assert "counts" in live_my.asked
    assert out["row_deltas"] == {"shop.orders": 6}


def test_mysql_across_binlog_files_asks_their_sizes(live_my: type[LiveMySQL]) -> None:
    live_my.position = {"file": "bin.000003", "position": 100}
    safety = _my({"orders": 5}, {"file": "bin.000003", "position": 100})
    out = mysql.ENGINE.data_loss(None, _my({"orders": 5}, BACKUP_AT), safety)  # type: ignore[arg-type]
    assert "counts" not in live_my.asked
    assert (out["binlog"]["bytes"], out["row_deltas"]) == (700, {})


def test_mysql_a_database_gone_since_the_backup_counts_as_empty_and_missing(
        live_my: type[LiveMySQL], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its tables are asked beside the listing (which does not hold it): whatever
    that answer holds, the database counts as gone."""
    monkeypatch.setattr(LiveMySQL, "user_databases", lambda self: ["other"])
    out = mysql.ENGINE.data_loss(None, _my({"orders": 5}, BACKUP_AT))  # type: ignore[arg-type]
    assert out["databases_missing_now"] == ["shop"]
    assert out["row_deltas"] == {"shop.orders": -5}


def test_mysql_the_plans_estimate_asks_its_reads_at_once(
        live_my: type[LiveMySQL], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a safety backup (the plan's estimate) the position, the GTIDs now and
    at the backup (its dump did not write it) and the databases are asked at once (a
    `docker exec` each: one after the other made a second of the plan): each waits
    here until all four are under way."""
    import threading

    together = threading.Barrier(4, timeout=5)
    for name in ("binlog_position", "gtid_now", "user_databases", "gtid_at"):
        real = getattr(LiveMySQL, name)

        def meet(self: LiveMySQL, *args: Any, _real: Any = real) -> Any:
            together.wait()  # BrokenBarrierError when asked one after the other
            return _real(self, *args)

        monkeypatch.setattr(LiveMySQL, name, meet)
    without_gtid = {k: v for k, v in BACKUP_AT.items() if k != "gtid"}
    out = mysql.ENGINE.data_loss(None, _my({"orders": 5}, without_gtid))  # type: ignore[arg-type]
    assert out["row_deltas"] == {"shop.orders": 6}
    assert out["gtid"] == {"from": "0-1-9", "to": "0-1-14", "transactions": 5}
    assert out["binlog"]["bytes"] == 1000
    assert "gtid_at bin.000002 400" in live_my.asked


class Asked(Exception):
    pass


def test_redis_and_mongodb_are_asked_live_whatever_the_safety_backup_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # their live figures cost no scan (Redis) or nothing tells that the backup
    # still holds the live data (MongoDB)
    def asked(_access: object) -> None:
        raise Asked

    monkeypatch.setattr(redis, "Redis", asked)
    monkeypatch.setattr(mongodb, "MongoDB", asked)
    with pytest.raises(Asked):
        redis.ENGINE.data_loss(None, {"keys": {"db0": 1}}, {"keys": {"db0": 1}})  # type: ignore[arg-type]
    with pytest.raises(Asked):
        mongodb.ENGINE.data_loss(  # type: ignore[arg-type]
            None, {"databases": {"a": {"collections": {}}}},
            {"databases": {"a": {"collections": {}}}})


def test_mysql_table_counts_one_client_run_names_in_hex_under_the_names_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def query(sql: str, **_kw: Any) -> list[list[str]]:
        asked.append(sql)
        rows = [("app", "b\tc"), ("App", "a"), ("we`ird", "it's")]  # the server's spelling
        return [[s.encode().hex().upper(), t.encode().hex().upper(), str(n)]
                for n, (s, t) in enumerate(rows, start=1)]

    my = mysql.MySQL(None)  # type: ignore[arg-type]
    monkeypatch.setattr(my, "query", query)
    counts = my.table_counts(["APP", "we`ird", "empty"])
    assert counts == {"APP": {"a": 2, "b\tc": 1}, "we`ird": {"it's": 3}, "empty": {}}
    assert len(asked) == 1
    assert "'APP', 'we`ird', 'empty'" in asked[0] and "HEX(table_name)" in asked[0]
    assert my.table_counts([]) == {} and len(asked) == 1
