"""Redis's data-loss window: key counts miss writes that change no count."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from backout.engines import redis as redis_engine


class FakeRedis:
    keys: ClassVar[dict[str, int]] = {}
    stats: ClassVar[dict[str, Any] | None] = None

    def __init__(self, _access: object) -> None:
        pass

    @contextlib.contextmanager
    def session(self) -> Iterator[FakeRedis]:
        yield self

    def keyspace(self) -> dict[str, int]:
        return dict(self.keys)

    def write_stats(self) -> dict[str, Any] | None:
        return self.stats


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeRedis]:
    monkeypatch.setattr(redis_engine, "Redis", FakeRedis)
    FakeRedis.keys, FakeRedis.stats = {}, None
    return FakeRedis


SECTION = {"keys": {"db0": 100}, "write_stats": {"run_id": "r1", "write_commands": 500}}


def loss(section: dict[str, Any]) -> dict[str, Any]:
    return redis_engine.ENGINE.data_loss(None, section)  # type: ignore[arg-type]


def test_overwrites_change_no_count_but_count_as_changes(fake: type[FakeRedis]) -> None:
    fake.keys, fake.stats = {"db0": 100}, {"run_id": "r1", "write_commands": 540}
    out = loss(SECTION)
    assert (out["key_deltas"], out["write_commands"], out["changes"]) == ({}, 40, 40)


def test_key_count_wins_when_larger(fake: type[FakeRedis]) -> None:
    fake.keys, fake.stats = {"db0": 130, "db1": 5}, {"run_id": "r1", "write_commands": 510}
    out = loss(SECTION)
    assert (out["key_deltas"], out["write_commands"], out["changes"]) == (
        {"db0": 30, "db1": 5}, 10, 35)


def test_restarted_server_falls_back_to_key_counts(fake: type[FakeRedis]) -> None:
    fake.keys, fake.stats = {"db0": 97}, {"run_id": "r2", "write_commands": 3}
    out = loss(SECTION)
    assert (out["key_deltas"], out["write_commands"], out["changes"]) == ({"db0": -3}, None, 3)


def test_no_recorded_stats_reads_none(fake: type[FakeRedis]) -> None:
    fake.keys, fake.stats = {"db0": 101}, {"run_id": "r1", "write_commands": 999}
    out = loss({"keys": {"db0": 100}})
    assert out == {"key_deltas": {"db0": 1}, "changes": 1}


def test_counters_reset_on_the_same_server_read_none(fake: type[FakeRedis]) -> None:
    # CONFIG RESETSTAT: the same run id, fewer write commands than recorded
    fake.keys, fake.stats = {"db0": 100}, {"run_id": "r1", "write_commands": 7}
    out = loss(SECTION)
    assert (out["key_deltas"], out["write_commands"], out["changes"]) == ({}, None, 0)
