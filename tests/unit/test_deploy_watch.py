"""The deploy's watch loop with a scripted monitor on a real store: it evaluates
every interval until the time is up, and stops at the first RED with the rule, its
incident and the actions the RED rules asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config
from backout.deploy.watch import INCIDENT_FACT, RED_ACTIONS_FACT, RedDuringWatch, watch
from backout.environment import Environment
from backout.policy.rules import Decision, Firing, Level
from backout.state import Store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Scripted:
    """step() returns the next level; opens an incident when it says RED."""

    def __init__(self, store: Store, clock: Clock, levels: list[Level]) -> None:
        self.store, self.clock, self.levels, self.calls = store, clock, levels, 0

    def step(self) -> Decision:
        level = self.levels[min(self.calls, len(self.levels) - 1)]
        self.calls += 1
        active: tuple[Firing, ...] = ()
        if level == Level.RED:
            self.store.open_incident(rule="red-error-rate", level="RED", severity="SEV-1",
                                     reason="error_rate 0.8 > 0.5", values={})
            active = (Firing("red-error-rate", "error_rate{service=web}", "web", Level.RED,
                             "SEV-1", "rollback-with-data", 0.8, 0.5, 0.0, False,
                             "error_rate 0.8 > 0.5"),)
        return Decision(self.clock(), level, Level.GREEN, 0.0, active=active)


def _run(tmp_path: Path, levels: list[Level], seconds: float) -> tuple[Any, Scripted, Store]:
    store = Store(tmp_path)
    clock = Clock()
    mon = Scripted(store, clock, levels)
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)  # interval 5 s
    seen: list[float] = []
    result = watch(Environment(), config, store, None, seconds, 7,  # type: ignore[arg-type]
                   on_decision=lambda d, e: seen.append(e), clock=clock, sleep=clock.sleep,
                   monitor=mon)
    return result, mon, store


def test_green_watch_runs_its_time_at_the_interval(tmp_path: Path) -> None:
    result, mon, _store = _run(tmp_path, [Level.NODATA, Level.GREEN, Level.YELLOW], 30)
    assert mon.calls == 7  # t = 0, 5, ..., 30
    assert result == {"watched_s": 30.0, "evaluations": 7, "level": "YELLOW",
                      "worst": "YELLOW"}


def test_red_stops_the_watch_with_the_rule_and_its_incident(tmp_path: Path) -> None:
    with pytest.raises(RedDuringWatch, match="red-error-rate") as info:
        _run(tmp_path, [Level.GREEN, Level.GREEN, Level.RED], 600)
    assert "after 10s" in info.value.message
    store = Store(tmp_path)
    assert store.fact(INCIDENT_FACT.format(op=7)) == store.open_incidents()[0]["id"]
    assert store.fact(RED_ACTIONS_FACT.format(op=7)) == ["rollback-with-data"]


def test_no_watch(tmp_path: Path) -> None:
    result, mon, _store = _run(tmp_path, [Level.RED], 0)
    assert mon.calls == 0 and result["evaluations"] == 0
