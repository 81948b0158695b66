"""Consecutive probe failures are counted an interval apart, not per evaluation: the
engine's events may start evaluations a moment apart (a container's exit, then its
restart), and a rule on "failed N times in a row" must not fire on one moment."""
from __future__ import annotations

from pathlib import Path

from backout.config import Config
from backout.environment import Environment
from backout.monitor.collect import Collector
from backout.monitor.run import Monitor
from backout.signals.probes import ProbeTracker
from backout.state import Store
from tests.support.fakes import FakePlatform


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_closer_than_the_spacing_count_once() -> None:
    clock = Clock()
    tracker = ProbeTracker(spacing=2.5, clock=clock)
    tracker.count("web", False)
    clock.now += 0.2  # the restart event, a moment after the exit
    tracker.count("web", False)
    assert tracker.consecutive["web"] == 1
    clock.now += 2.3  # the next paced evaluation: 2.5 s after the counted one
    tracker.count("web", False)
    assert tracker.consecutive["web"] == 2


def test_failures_are_spaced_by_when_their_evaluations_started() -> None:
    # a probe that timed out ends 5 s into its evaluation; the next evaluation starts
    # at once (it overran the interval) and its probe fails fast: two evaluations, one
    # interval apart by their starts, are two failures
    clock = Clock()
    tracker = ProbeTracker(spacing=2.5, clock=clock)
    clock.now = 105.4
    tracker.count("web", False, at=100.0)
    clock.now = 106.0
    tracker.count("web", False, at=105.4)
    assert tracker.consecutive["web"] == 2
    tracker.count("web", False, at=105.6)  # an event's evaluation a moment later
    assert tracker.consecutive["web"] == 2


def test_a_success_resets_the_count_and_the_spacing() -> None:
    clock = Clock()
    tracker = ProbeTracker(spacing=2.5, clock=clock)
    tracker.count("web", False)
    clock.now += 0.5
    tracker.count("web", True)
    assert tracker.consecutive["web"] == 0
    clock.now += 0.1
    tracker.count("web", False)  # a new streak starts at once
    assert tracker.consecutive["web"] == 1


def test_services_are_spaced_independently() -> None:
    clock = Clock()
    tracker = ProbeTracker(spacing=2.5, clock=clock)
    tracker.count("web", False)
    clock.now += 1
    tracker.count("api", False)
    clock.now += 1.5
    tracker.count("web", False)
    tracker.count("api", False)
    assert tracker.consecutive == {"web": 2, "api": 1}


def test_without_spacing_every_failure_counts() -> None:
    tracker = ProbeTracker(clock=Clock())
    for _ in range(3):
        tracker.count("web", False)
    assert tracker.consecutive["web"] == 3


def test_the_monitor_spaces_failures_half_its_interval(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    platform = FakePlatform(tmp_path)
    mon = Monitor(Environment(), config, Store(config.state_dir), platform, [])  # type: ignore[arg-type]
    assert isinstance(mon.collector, Collector)
    mon.run(4.0, duration=0)
    assert mon.collector.probes.spacing == 2.0
