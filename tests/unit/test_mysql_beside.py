"""The MySQL dump from beside the server (``engines.mysql._dump_beside``): through a
FIFO in a directory of backout's own when the platform gives a client there; the
caller's `docker exec` when it gives none or nothing came through; the client's
container removed whenever the dump did not succeed, never left to its --rm alone."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backout.config import Config, DatabaseConfig
from backout.engines import mysql
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.storage.pipeline import (
    DiskFullError,
    NothingStreamedError,
    ProofProcessError,
    Scanned,
    StalledError,
    Written,
)
from tests.support.fakes import FakePlatform


class _My:
    """What ``_dump_beside`` reads of a MySQL: its access's project and service."""
    access = SimpleNamespace(config=SimpleNamespace(project_dir=Path("/srv/shop")),
                             db=SimpleNamespace(service="db"))


@pytest.fixture
def removed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(mysql, "remove_dump_helpers",
                        lambda env, access: calls.append(mysql.dump_helper_label(access)))
    return calls


def _written(path: Path) -> Written:
    return Written(path, 1, 0.1, 0, "", None)


def test_a_directory_a_killed_run_left_is_not_in_the_set_any_more(
        removed: list[str], tmp_path: Path) -> None:
    left = tmp_path / ".beside-old"
    left.mkdir()
    (left / "client.cnf").write_text("[client]\npassword=x\n")

    def dump(argv: list[str], into: Path | None) -> Written:
        assert into is not None
        (tmp_path / "mysql.sql.zst").write_bytes(b"x")
        return _written(tmp_path / "mysql.sql.zst")

    assert mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                              lambda directory: ["client"], lambda written: None) is not None
    assert [p.name for p in tmp_path.iterdir()] == ["mysql.sql.zst"]


def test_the_dump_goes_through_a_fifo_in_a_directory_of_its_own(removed: list[str],
                                                                 tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def argv_for(directory: Path) -> list[str]:
        seen["directory"] = directory
        return ["client", str(directory)]

    def dump(argv: list[str], into: Path | None) -> Written:
        assert into is not None
        seen["argv"], seen["into"] = argv, into
        seen["mode"] = into.stat().st_mode
        seen["dir_mode"] = into.parent.stat().st_mode
        return _written(into)

    written = mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                                 argv_for, lambda written: None)
    assert written is not None and written.path == seen["into"]
    assert seen["directory"].parent == tmp_path  # in the set: a crash leaves it there
    assert seen["into"] == seen["directory"] / mysql.BESIDE_FIFO
    assert stat.S_ISFIFO(seen["mode"]) and stat.S_IMODE(seen["mode"]) == 0o600
    assert stat.S_IMODE(seen["dir_mode"]) == 0o700  # nobody else reaches the FIFO
    assert not seen["directory"].exists()  # removed once the dump is done
    assert removed == []  # a client that succeeded removed itself (--rm)


def test_no_client_beside_is_the_callers_way_and_runs_nothing(removed: list[str],
                                                               tmp_path: Path) -> None:
    def dump(argv: list[str], into: Path | None) -> Written:
        raise AssertionError("nothing to run")

    assert mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                              lambda directory: None, lambda written: None) is None
    assert removed == []
    assert list(tmp_path.iterdir()) == []


def test_nothing_through_the_fifo_is_the_callers_way_and_its_container_goes(
        removed: list[str], tmp_path: Path) -> None:
    def dump(argv: list[str], into: Path | None) -> Written:
        raise NothingStreamedError("db dump: nothing came through dump (exit 2): denied")

    assert mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                              lambda directory: ["client"], lambda written: None) is None
    assert removed == ["io.backout.dump-helper=/srv/shop:db"]


def test_a_client_that_fails_there_is_the_callers_way_and_its_container_goes(
        removed: list[str], tmp_path: Path) -> None:
    """An account over TCP may do less than the one checked: docker exec answers for
    the server (a failure there is the dump's)."""
    def dump(argv: list[str], into: Path | None) -> Written:
        raise ExternalError("db dump failed (exit 2): Access denied; you need RELOAD")

    assert mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                              lambda directory: ["client"], lambda written: None) is None
    assert removed == ["io.backout.dump-helper=/srv/shop:db"]


@pytest.mark.parametrize("error", [
    InterruptedOperation("db dump: stopped by SIGINT"),
    StalledError("db dump: no data moved for 600s"),
    DiskFullError("db dump: no space left"),
    ProofProcessError("db dump: the check of the dump as it was written failed"),
])
def test_a_failure_no_other_way_mends_fails_and_its_container_goes(
        removed: list[str], error: Exception, tmp_path: Path) -> None:
    def dump(argv: list[str], into: Path | None) -> Written:
        raise error

    with pytest.raises(type(error)):
        mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                           lambda directory: ["client"], lambda written: None)
    assert removed == ["io.backout.dump-helper=/srv/shop:db"]
    assert list(tmp_path.iterdir()) == []


def test_a_dump_that_lacks_what_the_server_has_is_the_callers_way(
        removed: list[str], tmp_path: Path) -> None:
    """Another account over TCP (user@'%' where backout checked user@localhost) may see
    fewer tables: its dump is not taken, whatever it holds."""
    def dump(argv: list[str], into: Path | None) -> Written:
        assert into is not None
        return _written(into)

    assert mysql._dump_beside(Environment(), _My(), tmp_path, dump,  # type: ignore[arg-type]
                              lambda directory: ["client"],
                              lambda written: "lacks shop.secret") is None


def _checked(tables: dict[str, dict[str, int]]) -> Written:
    return Written(Path("x"), 1, 0.1, 0, "", Scanned("0", 1, 1, {
        "databases": {db: {"tables": t} for db, t in tables.items()}}))


@pytest.mark.parametrize(("dumped", "expected", "why"), [
    ({"shop": {"a": 1, "b": 0}}, {"shop": {"a", "b"}}, None),
    ({"shop": {"a": 1, "b": 0, "new": 0}}, {"shop": {"a", "b"}}, None),  # made meanwhile
    ({"shop": {"a": 1}}, {"shop": {"a", "b"}}, "lacks shop.b"),
    ({"shop": {}}, {"shop": {"a", "b", "c", "d"}}, "lacks shop.a, shop.b, shop.c and 1 more"),
    ({}, {"shop": {"a"}}, "lacks shop.a"),
    ({"shop": {}}, {"shop": set()}, None),
])
def test_the_tables_a_dump_lacks(dumped: dict[str, dict[str, int]],
                                 expected: dict[str, set[str]], why: str | None) -> None:
    assert mysql._tables_missing(_checked(dumped), expected) == why


def _access(tmp_path: Path, platform: FakePlatform, **fields: Any) -> EngineAccess:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    object.__setattr__(config, "secrets", {"PW": PASSWORD})  # as the config's loader sets it
    db = dataclasses.replace(DatabaseConfig(name="db", type="mysql", service="db"), **fields)
    return EngineAccess(Environment(project_dir=tmp_path), config, db, platform)


PASSWORD = 'p a"s\\s#w;o\nrd\t'


def test_the_client_beside_gets_its_password_in_a_private_option_file(tmp_path: Path) -> None:
    platform = FakePlatform()
    platform.beside = ["docker", "run"]
    my = mysql.MySQL(_access(tmp_path, platform, user="root", password_env="PW"))
    argv = my.beside_dump_argv(["shop"], binlog=True, port=3307, directory=tmp_path)
    assert argv is not None and all(PASSWORD not in word for word in argv)
    (service, inner, env_names, mount, label), = platform.called("beside_argv")
    assert (service, env_names, mount) == ("db", [], (tmp_path, "/backout-stream"))
    assert label == f"io.backout.dump-helper={tmp_path}:db"
    args = inner[inner.index("sh", 2) + 1:]
    assert args[0] == "--defaults-extra-file=/backout-stream/client.cnf"  # first, or ignored
    assert {"--host=127.0.0.1", "--port=3307", "--protocol=TCP", "--master-data=2"} <= set(args)
    assert inner[2].endswith("> /backout-stream/dump")
    cnf = tmp_path / "client.cnf"
    assert stat.S_IMODE(cnf.stat().st_mode) == 0o600
    assert cnf.read_text() == '[client]\npassword="p a\\"s\\\\s#w;o\\nrd\\t"\n'


@pytest.mark.parametrize("fields", [{"mode": "tcp", "host": "db.example", "port": 3306}])
def test_no_client_beside_a_server_reached_otherwise(tmp_path: Path, fields: dict[str, Any]) -> None:
    platform = FakePlatform()
    platform.beside = ["docker", "run"]
    my = mysql.MySQL(_access(tmp_path, platform, **fields))
    assert my.beside_dump_argv(["shop"], binlog=False, port=3306, directory=tmp_path) is None
    base = _access(tmp_path, platform)
    throwaway = mysql.MySQL(EngineAccess(base.env, base.config, base.db, platform,
                                         container="c1"))
    assert throwaway.beside_dump_argv(["shop"], binlog=False, port=3306,
                                      directory=tmp_path) is None
    assert platform.called("beside_argv") == []


def _hex(text: str) -> str:
    return text.encode().hex().upper()


@pytest.mark.parametrize(("no_tcp", "port"), [("0", 3307), ("1", None)])
def test_the_servers_facts_name_databases_and_tables_whatever_their_names_hold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tcp: str, port: int | None) -> None:
    """A tab or a line break in a name comes as hex: it cannot cut one row into two."""
    asked: list[str] = []
    odd = "shop\tb\nx"
    rows = [["10.11.6-MariaDB", "1", "3307", no_tcp],
            ["d", _hex("mysql")], ["d", _hex("shop")], ["d", _hex(odd)],
            ["t", _hex("shop"), _hex("orders")], ["t", _hex(odd), _hex("t\n2")]]

    def query(self: mysql.MySQL, sql: str, **kw: Any) -> list[list[str]]:
        asked.append(sql)
        return rows

    monkeypatch.setattr(mysql.MySQL, "query", query)
    my = mysql.MySQL(_access(tmp_path, FakePlatform()))
    facts = my.server_facts(["shop", "it's"])
    assert facts == mysql.ServerFacts("10.11.6-MariaDB", True, ["shop", odd], port,
                                      {"shop": {"orders"}, odd: {"t\n2"}})
    assert "table_schema IN ('shop', 'it\\'s')" in asked[0]
    my.server_facts()
    assert "table_schema NOT IN ('information_schema', 'mysql'" in asked[1]
