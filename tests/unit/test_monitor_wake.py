"""The monitor loop woken by the engine's events (issue 16): an event the platform
reports ends the wait between evaluations at once, so a health-check failure Docker
reports is evaluated without waiting for the interval; events are coalesced; the
listener reconnects; a platform without events keeps to the interval. The policy is
untouched: only *when* a snapshot is taken changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from backout.config import Config, ServiceConfig
from backout.environment import Environment
from backout.errors import DockerUnavailableError
from backout.monitor.run import STOP_CHECK, Monitor, wait
from backout.platforms.base import ContainerInfo
from backout.policy.rules import DEFAULT_RULES, Decision, Level
from backout.signals.events import EventWaker
from backout.state import Store
from tests.support.fakes import FakePlatform

HOUR = 3600.0


class Unhealthy(FakePlatform):
    """Containers carry Docker's healthcheck failing streak, which the test sets."""

    def __init__(self, project_dir: Path) -> None:
        super().__init__(project_dir, running={"web": "sha256:w1"})
        self.streak = 0
        self.emits_events = True

    def containers(self, *services: str) -> list[ContainerInfo]:
        found = super().containers(*services)
        return [replace(c, failing_streak=self.streak,
                        health="unhealthy" if self.streak >= 2 else "healthy") for c in found]


def monitor(tmp_path: Path, platform: FakePlatform) -> Monitor:
    cfg = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                 services={"web": ServiceConfig("web")})
    return Monitor(Environment(), cfg, Store(tmp_path / ".backout"), platform, DEFAULT_RULES)


def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Running:
    """A monitor run in a thread of its own (the store belongs to the thread that made
    it, as in `backout monitor`); the test drives it through on_decision and events."""

    def __init__(self, tmp_path: Path, platform: FakePlatform,
                 on_decision: Callable[[Monitor, Decision], None]) -> None:
        self.stop = threading.Event()
        self.made = threading.Event()
        self.mon: Monitor | None = None

        def main() -> None:
            self.mon = monitor(tmp_path, platform)
            self.made.set()
            self.mon.run(HOUR, on_decision=lambda d: on_decision(self.mon, d),  # type: ignore[arg-type]
                         stop=self.stop)

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()

    def join(self) -> Monitor:
        self.thread.join(10)  # the interval is an hour: only events bring more evaluations
        assert not self.thread.is_alive() and self.mon is not None
        return self.mon


def test_an_unhealthy_event_wakes_the_loop_before_the_interval(tmp_path: Path) -> None:
    platform = Unhealthy(tmp_path)
    decisions: list[Decision] = []

    def on_decision(mon: Monitor, decision: Decision) -> None:
        decisions.append(decision)
        if len(decisions) == 1:
            platform.streak = 3  # Docker's healthcheck fails...
            platform.event_streams[-1].push("web", "health_status: unhealthy")  # ...and says so
        else:
            running.stop.set()

    running = Running(tmp_path, platform, on_decision)
    mon = running.join()
    assert [d.level for d in decisions] == [Level.GREEN, Level.RED]
    assert decisions[1].active[0].rule == "red-health-check"
    assert mon.wake_ups == 1 and mon.evaluations == 2
    assert mon.woken_by is not None and mon.woken_by.action == "health_status: unhealthy"
    assert platform.event_streams[-1].closed  # the listener is stopped with the loop


def test_events_during_an_evaluation_bring_exactly_one_more(tmp_path: Path) -> None:
    platform = Unhealthy(tmp_path)
    second = threading.Event()

    def on_decision(mon: Monitor, decision: Decision) -> None:
        if mon.evaluations == 1:
            for action in ("die", "restart", "health_status: healthy"):
                platform.event_streams[-1].push("web", action)
        elif mon.evaluations == 2:
            second.set()

    running = Running(tmp_path, platform, on_decision)
    assert second.wait(10)
    time.sleep(STOP_CHECK / 2)  # no third evaluation follows the coalesced events
    running.stop.set()
    mon = running.join()
    assert mon.evaluations == 2 and mon.wake_ups == 1


def test_without_events_the_loop_keeps_to_its_interval(tmp_path: Path) -> None:
    platform = FakePlatform(tmp_path, running={"web": "sha256:w1"})  # no event stream
    assert EventWaker(Environment(), platform).start() is False
    mon = monitor(tmp_path, platform)
    now = [0.0]

    def two_seconds_later(decision: Decision) -> None:
        now[0] += 2.0  # each evaluation takes 2 s by the injected clock

    mon.run(0.0, duration=5.0, on_decision=two_seconds_later, clock=lambda: now[0])
    assert mon.evaluations == 3 and mon.wake_ups == 0  # at 0, 2 and 4 s
    emitting = Unhealthy(tmp_path)
    monitor(tmp_path, emitting).run(0.0, duration=1.0, events=False,
                                    on_decision=two_seconds_later, clock=lambda: now[0])
    assert emitting.event_streams == []  # asked not to listen: no stream opened


def test_wait_ends_early_only_for_wake_or_stop() -> None:
    now = [0.0]
    waited: list[float] = []
    stop = threading.Event()

    class Clocked(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            waited.append(timeout)
            now[0] += timeout
            return False

    assert wait(2.0, stop, Clocked(), lambda: now[0]) is False
    assert waited == [STOP_CHECK] * 4 and now[0] == 2.0  # the whole interval, in slices
    woken = threading.Event()
    woken.set()
    assert wait(HOUR, stop, woken) is True  # at once
    stop.set()
    assert wait(HOUR, stop, threading.Event()) is False  # at once
    assert wait(HOUR, stop, None) is False


def test_the_listener_reconnects_after_the_stream_ends_or_the_engine_is_down(
        tmp_path: Path) -> None:
    platform = FakePlatform(tmp_path)
    platform.emits_events = True
    platform.events_fail = [DockerUnavailableError("engine down")]
    seen: list[str] = []
    waker = EventWaker(Environment(), platform, retry_seconds=0.01,
                       on_event=lambda e: seen.append(e.action))
    assert waker.start() is True  # down at first: it keeps trying
    try:
        assert until(lambda: len(platform.event_streams) == 1)
        platform.event_streams[0].push("web", "oom")
        assert waker.wake.wait(5)
        waker.wake.clear()
        platform.event_streams[0].end()  # the engine restarted
        assert until(lambda: len(platform.event_streams) == 2)
        platform.event_streams[1].push("web", "die")
        assert waker.wake.wait(5)
        assert seen == ["oom", "die"] and waker.last is not None and waker.last.action == "die"
    finally:
        waker.stop()
    assert platform.event_streams[1].closed
    assert waker._thread is not None and not waker._thread.is_alive()


def test_each_evaluation_says_how_long_it_took(tmp_path: Path) -> None:
    """`evaluation_s` (in every `monitor --json` line): the clock from the evaluation's
    start to its decision, collect + decide + record; the wait after it is not in it."""
    now = [100.0]
    mon = monitor(tmp_path, Unhealthy(tmp_path))
    step = mon.step

    def slow_step(t: float | None = None) -> Decision:
        now[0] += 0.3  # what collecting and recording took
        return step(t)

    mon.step = slow_step  # type: ignore[method-assign]
    seen: list[float | None] = []
    stop = threading.Event()

    def on_decision(_d: Decision) -> None:
        seen.append(mon.evaluation_s)
        now[0] += 7.0  # time spent after the decision is the next wait's, not this one's
        if len(seen) == 2:
            stop.set()

    mon.run(0.01, on_decision=on_decision, stop=stop, events=False, clock=lambda: now[0])
    assert seen == [0.3, 0.3]
