"""The MySQL dump from beside the server (``engines.mysql._dump_beside``): through a
FIFO in a directory of backout's own when the platform gives a client there; the
caller's `docker exec` when it gives none or nothing came through; the client's
container removed whenever the dump did not succeed, never left to its --rm alone."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backout.engines import mysql
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.storage.pipeline import NothingStreamedError, Written


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


def test_the_dump_goes_through_a_fifo_in_a_directory_of_its_own(removed: list[str]) -> None:
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

    written = mysql._dump_beside(Environment(), _My(), dump, argv_for)  # type: ignore[arg-type]
    assert written is not None and written.path == seen["into"]
    assert seen["into"] == seen["directory"] / mysql.BESIDE_FIFO
    assert stat.S_ISFIFO(seen["mode"]) and stat.S_IMODE(seen["mode"]) == 0o600
    assert stat.S_IMODE(seen["dir_mode"]) == 0o700  # nobody else reaches the FIFO
    assert not seen["directory"].exists()  # removed once the dump is done
    assert removed == []  # a client that succeeded removed itself (--rm)


def test_no_client_beside_is_the_callers_way_and_runs_nothing(removed: list[str]) -> None:
    def dump(argv: list[str], into: Path | None) -> Written:
        raise AssertionError("nothing to run")

    assert mysql._dump_beside(Environment(), _My(), dump,  # type: ignore[arg-type]
                              lambda directory: None) is None
    assert removed == []


def test_nothing_through_the_fifo_is_the_callers_way_and_its_container_goes(
        removed: list[str]) -> None:
    def dump(argv: list[str], into: Path | None) -> Written:
        raise NothingStreamedError("db dump: nothing came through dump (exit 2): denied")

    assert mysql._dump_beside(Environment(), _My(), dump,  # type: ignore[arg-type]
                              lambda directory: ["client"]) is None
    assert removed == ["io.backout.dump-helper=/srv/shop:db"]


@pytest.mark.parametrize("error", [ExternalError("db dump failed (exit 2): table crashed"),
                                   InterruptedOperation("db dump: stopped by SIGINT")])
def test_a_dump_that_fails_there_fails_and_its_container_goes(
        removed: list[str], error: Exception) -> None:
    def dump(argv: list[str], into: Path | None) -> Written:
        raise error

    with pytest.raises(type(error)):
        mysql._dump_beside(Environment(), _My(), dump,  # type: ignore[arg-type]
                           lambda directory: ["client"])
    assert removed == ["io.backout.dump-helper=/srv/shop:db"]
