"""Redis's restore, its order through fakes of the platform and the server: Redis is
brought up first (an interrupted attempt may have left it stopped; a definition
changed since is applied before its persistence is read), stopped, its files
replaced, brought up again; the RDB's size is read while it stops."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config, DatabaseConfig
from backout.engines import redis as redis_engine
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import UnhealthyError
from tests.support.fakes import FakePlatform


class FakeRedis:
    def __init__(self, _access: object) -> None:
        pass

    @contextlib.contextmanager
    def session(self) -> Iterator[FakeRedis]:
        yield self

    def dbsize(self) -> int:
        return 3


def _restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platform: FakePlatform
             ) -> list[Any]:
    order: list[Any] = []  # the platform's calls and the fakes' below, as they come
    record = platform._call
    size_started = threading.Event()

    def call(method: str, *args: Any) -> None:
        if method == "stop":
            # the size is read beside the stop: it has started by now (sequential
            # code would read it after the stop, or before it and alone)
            order.append(("stop", args[0], size_started.wait(5)))
        elif method == "bring_up":
            order.append((method, *args))
        record(method, *args)

    def size(env: Environment, artifact: Path) -> int:
        size_started.set()
        return 1234

    monkeypatch.setattr(platform, "_call", call)
    monkeypatch.setattr(redis_engine, "Redis", FakeRedis)
    monkeypatch.setattr(redis_engine, "aof_layout", lambda r: {"mode": "none"})
    monkeypatch.setattr(redis_engine, "decompressed_size", size)
    monkeypatch.setattr(redis_engine, "put_rdb_into_volume",
                        lambda *a, size=None: order.append(("put", size)))
    db = DatabaseConfig("cache", "redis", "redis")
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                    databases={"cache": db})
    env = Environment()
    result = redis_engine.restore_redis(env, EngineAccess(env, config, db, platform),
                                        tmp_path / "redis.rdb.zst", {"keys": {"db0": 3}})
    assert result["counts"] == {"db0": 3}
    return order


@pytest.mark.parametrize("state", ["running", "stopped"])
def test_redis_is_brought_up_stopped_refilled_and_brought_up_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    platform = (FakePlatform(tmp_path, running={"redis": "sha256:r"}) if state == "running"
                else FakePlatform(tmp_path, stopped={"redis": "sha256:r"}))
    calls = _restore(tmp_path, monkeypatch, platform)
    assert calls == [("bring_up", "redis"), ("stop", ("redis",), True), ("put", 1234),
                     ("bring_up", "redis")]
    assert platform.state["redis"] == "running"


def test_a_stop_that_fails_does_not_wait_for_the_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an interrupted or failed stop is reported at once, not after a read through a
    # large artifact: the size's thread is left to end by itself
    platform = FakePlatform(tmp_path, running={"redis": "sha256:r"},
                            health={"redis": "healthy"})
    platform.fail_on("stop")
    release = threading.Event()
    ended: list[bool] = []

    def size(env: Environment, artifact: Path) -> int:
        ended.append(release.wait(10))  # True: let go by the test, after the raise
        return 1

    monkeypatch.setattr(redis_engine, "Redis", FakeRedis)
    monkeypatch.setattr(redis_engine, "aof_layout", lambda r: {"mode": "none"})
    monkeypatch.setattr(redis_engine, "decompressed_size", size)
    db = DatabaseConfig("cache", "redis", "redis")
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                    databases={"cache": db})
    env = Environment()
    with pytest.raises(UnhealthyError, match="stop failed"):
        redis_engine.restore_redis(env, EngineAccess(env, config, db, platform),
                                   tmp_path / "redis.rdb.zst", {"keys": {"db0": 3}})
    release.set()
    for _ in range(200):
        if ended:
            break
        threading.Event().wait(0.05)
    assert ended == [True]
