"""The deploy's watch loop in detail, on a scripted clock and a real store: the
monitor it builds (no rollback of its own, its own policy state), how long it
sleeps between evaluations, what it reports, what a RED records, and that a first
Ctrl-C ends it."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config, MonitorConfig, NotifyConfig
from backout.deploy.watch import INCIDENT_FACT, RED_ACTIONS_FACT, RedDuringWatch, watch
from backout.environment import Environment
from backout.errors import InterruptedOperation, UnhealthyError
from backout.operations import interrupt
from backout.policy.rules import Decision, Firing, Level
from backout.state import Store

WATCH = importlib.import_module("backout.deploy.watch")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _firing(rule: str, level: Level, action: str, reason: str) -> Firing:
    return Firing(rule, "error_rate{service=web}", "web", level, "SEV-1", action, 0.8, 0.5, 0.0,
                  False, reason)


class Script:
    """A monitor: each step() takes ``took`` seconds of the clock and returns the next
    level (with ``firings`` on RED, and an incident opened when ``opens``)."""

    def __init__(self, store: Store, clock: Clock, levels: list[Level], *, took: float = 0.0,
                 firings: tuple[Firing, ...] = (), opens: bool = True) -> None:
        self.store, self.clock, self.levels, self.took = store, clock, levels, took
        self.firings, self.opens, self.calls = firings, opens, 0

    def step(self) -> Decision:
        level = self.levels[min(self.calls, len(self.levels) - 1)]
        self.calls += 1
        self.clock.now += self.took
        active: tuple[Firing, ...] = ()
        if level == Level.RED:
            if self.opens:
                self.store.open_incident(rule="r", level="RED", severity="SEV-1", reason="x",
                                         values={})
            active = self.firings
        return Decision(self.clock(), level, Level.GREEN, 0.0, active=active)


def _watch(tmp_path: Path, mon: Any, clock: Clock, seconds: float, store: Store,
           seen: list[float] | None = None, config: Config | None = None) -> dict[str, Any]:
    config = config or Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    return watch(Environment(), config, store, None, seconds, 7,  # type: ignore[arg-type]
                 on_decision=(lambda d, e: seen.append(e)) if seen is not None else None,
                 clock=clock, sleep=clock.sleep, monitor=mon)


def test_the_last_sleep_is_cut_to_the_time_left(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    seen: list[float] = []
    mon = Script(store, clock, [Level.GREEN])
    levels: list[Level] = []
    result = watch(Environment(), Config(path=tmp_path / "b.toml", project_dir=tmp_path),
                   store, None, 12, 7,  # type: ignore[arg-type]
                   on_decision=lambda d, e: (levels.append(d.level), seen.append(e)),
                   clock=clock, sleep=clock.sleep, monitor=mon)
    assert levels == [Level.GREEN] * 4  # each decision is shown as it is made
    assert clock.sleeps == [5.0, 5.0, 2.0]
    assert seen == [0.0, 5.0, 10.0, 12.0]
    assert result == {"watched_s": 12.0, "evaluations": 4, "level": "GREEN", "worst": "GREEN"}


def test_the_time_an_evaluation_takes_is_taken_off_the_interval(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    mon = Script(store, clock, [Level.GREEN], took=2.0)
    result = _watch(tmp_path, mon, clock, 10, store)
    assert clock.sleeps == [3.0, 3.0]  # 2 s evaluating + 3 s asleep = the 5 s interval
    assert result["watched_s"] == 12.0 and result["evaluations"] == 3


def test_an_evaluation_longer_than_the_interval_does_not_sleep(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    mon = Script(store, clock, [Level.GREEN], took=7.0)
    _watch(tmp_path, mon, clock, 10, store)
    assert clock.sleeps == [0.0]


def test_the_interval_comes_from_the_config(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                    monitor=MonitorConfig(interval_seconds=2))
    _watch(tmp_path, Script(store, clock, [Level.GREEN]), clock, 5, store, config=config)
    assert clock.sleeps == [2.0, 2.0, 1.0]


def test_the_watched_time_is_rounded_and_the_worst_level_kept(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    mon = Script(store, clock, [Level.YELLOW, Level.GREEN, Level.NODATA], took=0.04)
    result = _watch(tmp_path, mon, clock, 6, store)
    assert result == {"watched_s": 6.0, "evaluations": 3, "level": "NODATA", "worst": "YELLOW"}
    clock2 = Clock()
    result = _watch(tmp_path, Script(store, clock2, [Level.GREEN], took=0.26), clock2, 0.1,
                    store)
    assert result["watched_s"] == 0.3  # rounded to a tenth


def test_red_records_the_new_incident_and_every_red_rules_action(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    older = store.open_incident(rule="old", level="RED", severity="SEV-1", reason="o", values={})
    firings = (_firing("red-errors", Level.RED, "rollback", "error_rate 0.8 > 0.5"),
               _firing("yellow-latency", Level.YELLOW, "notify", "p99 2s > 1s"),
               _firing("red-data", Level.RED, "rollback-with-data", "writes failing"),
               _firing("red-errors-2", Level.RED, "rollback", "5xx"))
    mon = Script(store, clock, [Level.GREEN, Level.RED], firings=firings)
    with pytest.raises(RedDuringWatch) as info:
        _watch(tmp_path, mon, clock, 600, store)
    assert info.value.message == ("RED after 5s of the watch: red-errors: error_rate 0.8 > 0.5; "
                                  "red-data: writes failing; red-errors-2: 5xx")
    assert info.value.fix == "the deploy rolls back by itself; see `backout incidents`"
    assert isinstance(info.value, UnhealthyError) and info.value.code == "red"
    new = [i["id"] for i in store.open_incidents() if i["id"] != older]
    assert store.fact(INCIDENT_FACT.format(op=7)) == new[0]
    assert store.fact(RED_ACTIONS_FACT.format(op=7)) == ["rollback", "rollback-with-data"]
    assert mon.calls == 2


def test_red_without_a_new_incident_or_firing(tmp_path: Path) -> None:
    store, clock = Store(tmp_path), Clock()
    store.open_incident(rule="old", level="RED", severity="SEV-1", reason="o", values={})
    with pytest.raises(RedDuringWatch) as info:
        _watch(tmp_path, Script(store, clock, [Level.RED], opens=False), clock, 600, store)
    assert info.value.message == "RED after 0s of the watch: RED"
    assert store.fact(INCIDENT_FACT.format(op=7)) is None  # the older one is not the deploy's
    assert store.fact(RED_ACTIONS_FACT.format(op=7)) == []


def test_the_monitor_it_builds_has_no_rollback_and_its_own_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    store, clock = Store(tmp_path), Clock()

    def monitor(*args: Any, **kw: Any) -> Script:
        built.append((args, kw))
        return Script(store, clock, [Level.GREEN])
    monkeypatch.setattr(WATCH, "Monitor", monitor)
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                    monitor=MonitorConfig(window_seconds=30, notify=NotifyConfig(
                        webhook_url="http://hook", webhook_format="slack", command="page")))
    platform = object()
    env = Environment()
    watch(env, config, store, platform, 1, 9,  # type: ignore[arg-type]
          clock=clock, sleep=clock.sleep)
    [(args, kw)] = built
    assert args == (env, config, store, platform, config.monitor.effective_rules)
    assert kw["auto_rollback"] is False and kw["window"] == 30.0
    assert kw["state_key"] == "deploy.op9.policy_state"
    notifier = kw["notifier"]
    assert (notifier.webhook_url, notifier.webhook_format, notifier.command) == (
        "http://hook", "slack", "page")


def test_no_watch_builds_no_monitor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WATCH, "Monitor", lambda *a, **k: pytest.fail("built a monitor"))
    store = Store(tmp_path)
    assert watch(Environment(), Config(path=tmp_path / "b.toml", project_dir=tmp_path), store,
                 None, -1, 1) == {  # type: ignore[arg-type]
        "watched_s": 0, "evaluations": 0, "level": None}


@pytest.fixture
def fresh_interrupt() -> Any:
    state = interrupt.reset()
    yield state
    interrupt.reset()


def test_a_first_ctrl_c_ends_the_watch(tmp_path: Path, fresh_interrupt: Any) -> None:
    store, clock = Store(tmp_path), Clock()
    fresh_interrupt.abortable = True

    class Interrupted(Script):
        def step(self) -> Decision:
            decision = super().step()
            if self.calls == 2:
                fresh_interrupt.request("SIGINT")
            return decision
    mon = Interrupted(store, clock, [Level.GREEN])
    with pytest.raises(InterruptedOperation, match="the watch: stopped by SIGINT"):
        _watch(tmp_path, mon, clock, 600, store)
    # the sleep under way ends at once on a real interrupt; no evaluation follows it
    assert mon.calls == 2 and clock.sleeps == [5.0, 5.0]


def test_an_interrupt_before_the_watch_evaluates_nothing(tmp_path: Path,
                                                         fresh_interrupt: Any) -> None:
    store, clock = Store(tmp_path), Clock()
    fresh_interrupt.abortable = True
    fresh_interrupt.request("SIGINT")
    mon = Script(store, clock, [Level.GREEN])
    with pytest.raises(InterruptedOperation) as info:
        _watch(tmp_path, mon, clock, 600, store)
    assert info.value.message == "the watch: stopped by SIGINT" and mon.calls == 0


def test_a_ctrl_c_during_the_sleep_ends_it_before_the_next_evaluation(
        tmp_path: Path, fresh_interrupt: Any) -> None:
    store, clock = Store(tmp_path), Clock()
    fresh_interrupt.abortable = True

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        fresh_interrupt.request("SIGTERM")
    mon = Script(store, clock, [Level.GREEN])
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    with pytest.raises(InterruptedOperation, match="SIGTERM"):
        watch(Environment(), config, store, None, 600, 7,  # type: ignore[arg-type]
              clock=clock, sleep=sleep, monitor=mon)
    assert mon.calls == 1


def test_without_a_sleep_given_it_sleeps_through_the_interrupt_state(
        tmp_path: Path, fresh_interrupt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, clock = Store(tmp_path), Clock()
    monkeypatch.setattr(fresh_interrupt, "sleep", clock.sleep)
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    watch(Environment(), config, store, None, 10, 7,  # type: ignore[arg-type]
          clock=clock, monitor=Script(store, clock, [Level.GREEN]))
    assert clock.sleeps == [5.0, 5.0]
