"""`backout verify`'s checks through the real run_verify on a FakePlatform: the
health probes, the log reads and the database checks run at once (a rollback's
verify waited for each in turn: 1.5 s of an emergency rollback), and the report
keeps its fixed order whatever finishes first."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from backout import verify
from backout.adapters.http import Probe
from backout.config import Config, DatabaseConfig, ServiceConfig
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import ExternalError
from backout.state import Store
from tests.support.fakes import FakeEngine, FakePlatform, install_engine


class _Meeting:
    """Every check waits here for all the others: run one after another, the first
    would wait alone until the barrier breaks."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.order: list[str] = []

    def arrive(self, who: str) -> None:
        self.barrier.wait()
        self.order.append(who)


def _stack(tmp_path: Path) -> tuple[Config, Store, FakePlatform]:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                    services={"web": ServiceConfig("web", health_url="http://web/health"),
                              "api": ServiceConfig("api", health_url="http://api/health")},
                    databases={"mysql": DatabaseConfig("mysql", "mysql", "mysql"),
                               "redis": DatabaseConfig("redis", "redis", "redis")})
    platform = FakePlatform(tmp_path, running={"web": "sha256:w", "api": "sha256:a",
                                               "mysql": "sha256:m", "redis": "sha256:r"})
    return config, Store(config.state_dir), platform


def test_health_logs_and_databases_are_checked_at_once_and_reported_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = _stack(tmp_path)
    meeting = _Meeting(parties=4)  # two health URLs, two databases

    def probe(env: Any, url: str, **kw: Any) -> Probe:
        meeting.arrive(url)
        return Probe(url, 200, 0.001, b"ok", None)

    class Answering(FakeEngine):
        def answer(self, access: EngineAccess) -> str:
            meeting.arrive(access.db.name)
            if access.db.name == "redis":
                raise ExternalError("redis: PING failed")
            return "version 1"

    monkeypatch.setattr(verify.http, "get", probe)
    install_engine(monkeypatch, Answering())
    result = verify.run_verify(Environment(), config, store, platform, settle=0)
    assert sorted(meeting.order) == ["http://api/health", "http://web/health", "mysql", "redis"]
    assert [c.name for c in result.checks] == [
        "container api", "container mysql", "container redis", "container web",
        "health web", "health api", "logs web", "logs api", "database mysql", "database redis"]
    assert [c.name for c in result.failed] == ["database redis"]
    assert result.failed[0].detail == "redis: PING failed"


def test_a_check_that_breaks_is_an_error_not_a_pass(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception inside one concurrent check reaches the caller."""
    config, store, platform = _stack(tmp_path)

    def probe(env: Any, url: str, **kw: Any) -> Probe:
        raise RuntimeError(f"bug probing {url}")

    monkeypatch.setattr(verify.http, "get", probe)
    install_engine(monkeypatch, FakeEngine())
    with pytest.raises(RuntimeError, match="bug probing http://web/health"):
        verify.run_verify(Environment(), config, store, platform, settle=0)
