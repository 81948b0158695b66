"""Automatic baselines, pure: which release runs, when a baseline is captured and with
which values, which one is in use; then the monitor loop keeping them in the store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from backout.config import Config
from backout.environment import Environment
from backout.monitor.collect import Collector, ServiceView
from backout.monitor.run import BASELINES_KEY, INCIDENT_KEY, Monitor, load_baselines
from backout.policy import baseline
from backout.policy.baseline import Baseline, Warmup, observe, release_key, select
from backout.policy.rules import (
    DEFAULT_RULES,
    Decision,
    Level,
    PolicyState,
    Rule,
    Snapshot,
    evaluate,
)
from backout.signals.probes import ProbeTracker
from backout.state import Store

P95 = "p95_latency_seconds{service=backend}"
ERR = "error_rate{service=backend}"
SLOWER = Rule(name="yellow-latency-vs-baseline", signal="p95_latency_seconds", comparison=">",
              threshold=3, level=Level.YELLOW, severity="SEV-3", action="notify",
              relative_to_baseline=True)
RELEASES = [{"id": 2, "services": {"backend": {"image_id": "sha256:b2"},
                                   "mysql": {"image_id": "sha256:m"}}},
            {"id": 1, "services": {"backend": {"image_id": "sha256:b1"},
                                   "mysql": {"image_id": "sha256:m"}}}]


@pytest.mark.parametrize(("images", "key"), [
    ({"backend": "sha256:b2", "mysql": "sha256:m"}, "2"),
    ({"backend": "sha256:b1", "mysql": "sha256:m"}, "1"),  # rolled back: release 1 again
    ({"backend": "sha256:b3", "mysql": "sha256:m"}, "images:"),  # deployed, not recorded
    ({"backend": "sha256:b2"}, "images:"),  # a recorded service is not running
    ({"backend": "sha256:b2", "mysql": "sha256:m", "new": "sha256:n"}, "images:"),
])
def test_release_key(images: dict[str, str], key: str) -> None:
    found = release_key(RELEASES, images)
    assert found == key if key != "images:" else found.startswith("images:") and len(found) == 19


def test_unrecorded_releases_differ_by_their_images() -> None:
    a = release_key([], {"backend": "sha256:x"})
    assert a == release_key([], {"backend": "sha256:x"}) != release_key([], {"backend": "sha256:y"})


def decision(*active: Level, nodata: Sequence[str] = ()) -> Decision:
    from backout.policy.rules import Firing

    firings = tuple(Firing(rule=f"r{i}", signal="s", service=None, level=lv, severity="SEV-3",
                           action="none", value=1.0, threshold=0.0, since=0.0, nodata=False,
                           reason="") for i, lv in enumerate(active))
    return Decision(t=0, level=Level.GREEN, previous_level=Level.GREEN, level_since=0,
                    active=firings, nodata=tuple(nodata))


@pytest.mark.parametrize(("d", "is_healthy"), [
    (decision(), True),
    (decision(Level.GREEN), True),  # GREEN notes are monitor-only
    (decision(Level.YELLOW), False),
    (decision(Level.RED, Level.GREEN), False),
    # waiting for this very baseline is not a lack of health...
    (decision(nodata=[f"yellow-latency-vs-baseline: {P95}"]), True),
    # ...no data of any other rule is (the health is unknown)
    (decision(nodata=[f"red-error-rate: {ERR}"]), False),
])
def test_healthy(d: Decision, is_healthy: bool) -> None:
    assert baseline.healthy(d, [*DEFAULT_RULES, SLOWER]) is is_healthy


def feed(frames: Sequence[tuple[bool, Mapping[str, float | None]]], evaluations: int = 4,
         release: str = "1") -> list[Baseline | None]:
    warm, out = Warmup(), []
    for t, (ok, signals) in enumerate(frames):
        warm, got = observe(warm, release, ok, Snapshot(float(t), signals), ["p95_latency_seconds"],
                            evaluations)
        out.append(got)
    return out


H = {P95: 0.02, ERR: 0.0}


@pytest.mark.parametrize(("frames", "captured_at", "value"), [
    # four healthy evaluations in a row: captured on the fourth, median of the four
    ([(True, {P95: v}) for v in (0.01, 0.03, 0.02, 0.5)], 3, 0.025),
    # an unhealthy evaluation starts the count over
    ([(True, H), (True, H), (False, H), (True, H), (True, H), (True, H), (True, H)], 6, 0.02),
    # no traffic (no P95) in more than half of the window: not yet; half is enough
    ([(True, {P95: None}), (True, {P95: None}), (True, {P95: None}), (True, {P95: 0.02}),
      (True, {P95: 0.04}), (True, {P95: 0.06})], 4, 0.03),
    # never healthy long enough
    ([(True, H), (True, H), (True, H), (False, H)] * 3, None, None),
])
def test_captured_after_n_healthy_evaluations(frames: list[tuple[bool, dict[str, float | None]]],
                                              captured_at: int | None,
                                              value: float | None) -> None:
    results = feed(frames)
    got = [(i, b) for i, b in enumerate(results) if b is not None]
    if captured_at is None:
        assert got == []
        return
    (i, b), *_ = got
    assert i == captured_at and b.values == {P95: pytest.approx(value)}
    assert b.release == "1" and b.evaluations == 4 and b.captured_at == captured_at


def test_only_signals_of_relative_rules_are_captured() -> None:
    assert baseline.watched(DEFAULT_RULES) == ("p95_latency_seconds",)
    assert baseline.watched([r for r in DEFAULT_RULES if not r.relative_to_baseline]) == ()
    [b] = [b for b in feed([(True, {**H, "p95_latency_seconds{service=frontend}": 0.1})] * 4) if b]
    assert set(b.values) == {P95, "p95_latency_seconds{service=frontend}"}  # not error_rate
    assert feed([(True, H)] * 6, release="1")[3] is not None


def test_a_new_release_starts_its_warmup_over() -> None:
    warm = Warmup()
    for t in range(3):
        warm, got = observe(warm, "1", True, Snapshot(t, H), ["p95_latency_seconds"], 4)
    warm, got = observe(warm, "2", True, Snapshot(3, H), ["p95_latency_seconds"], 4)
    assert got is None and warm.release == "2" and len(warm.samples) == 1


@pytest.mark.parametrize(("stored", "release", "expected"), [
    ({}, "1", None),
    ({"1": 10.0}, "1", "1"),
    ({"1": 10.0, "2": 20.0}, "1", "1"),  # rolled back to 1: its own baseline again
    ({"1": 10.0, "2": 20.0}, "3", "2"),  # a new release inherits the newest
    ({"1": 30.0, "2": 20.0}, "images:abc", "1"),
])
def test_select(stored: dict[str, float], release: str, expected: str | None) -> None:
    baselines = {k: Baseline(k, {P95: 0.1}, t, 4) for k, t in stored.items()}
    chosen = select(baselines, release)
    assert (chosen.release if chosen else None) == expected


def test_keep_drops_the_oldest_and_json_round_trips() -> None:
    many = {str(i): Baseline(str(i), {P95: i / 100}, float(i), 12) for i in range(30)}
    kept = baseline.keep(many, limit=20)
    assert sorted(kept, key=int) == [str(i) for i in range(10, 30)]
    assert Baseline.from_json(kept["12"].to_json()) == kept["12"]


def test_a_relative_rule_uses_the_captured_baseline() -> None:
    [b] = [b for b in feed([(True, H)] * 4) if b]
    rules = [SLOWER]
    state = PolicyState()
    d, state = evaluate(rules, Snapshot(10, {P95: 0.05}), state, b.values)
    assert d.level == Level.GREEN  # 0.05 < 3 x 0.02
    d, state = evaluate(rules, Snapshot(15, {P95: 6.0}), state, b.values)
    assert d.level == Level.YELLOW and "3x baseline (0.06)" in d.transitions[0].reason


# -- the loop: a fake collector, a real store ------------------------------------------


class FakeCollector(Collector):
    """Snapshots from a script instead of a stack (unit tests may fake the signals)."""

    def __init__(self, frames: list[tuple[dict[str, str], dict[str, float | None]]]) -> None:
        self.frames = frames
        self.t = 1000.0
        self.images: dict[str, str] = {}
        self.probes = ProbeTracker()

    def collect(self, t: float | None = None) -> tuple[Snapshot, dict[str, ServiceView]]:
        images, signals = self.frames.pop(0)
        self.images, self.t = images, self.t + 5
        return Snapshot(self.t, signals), {}


def monitor(tmp_path: Path, frames: list[tuple[dict[str, str], dict[str, float | None]]],
            rules: Sequence[Rule] = (*DEFAULT_RULES, SLOWER)) -> Monitor:
    store = Store(tmp_path / ".backout")
    if not store.releases():
        store.add_release(git_commit="c1", git_dirty=False, diff_path=None, compose_config={},
                          services={"backend": {"image_id": "sha256:b1"}})
    cfg = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    return Monitor(Environment(), cfg, store, platform=None,  # type: ignore[arg-type]
                   rules=rules, collector=FakeCollector(frames), baseline_evaluations=3)


V1, V2 = {"backend": "sha256:b1"}, {"backend": "sha256:b2"}


def test_monitor_captures_persists_and_reuses_the_baseline(tmp_path: Path) -> None:
    mon = monitor(tmp_path, [(V1, H)] * 3)
    summaries: list[Any] = []
    for _ in range(3):
        mon.step()
        summaries.append(mon.baseline_summary())
    assert summaries[0]["warmup"] == {"healthy": 1, "needed": 3}
    assert summaries[0]["captured_for"] is None
    assert summaries[2]["captured_for"] == "1" and summaries[2]["values"] == {P95: 0.02}
    assert summaries[2]["warmup"] is None
    assert set(mon.store.fact(BASELINES_KEY)) == {"1"}
    assert next(e["action"] for e in mon.store.events()) == "monitor.baseline"

    # a restarted monitor uses it at once; a slow new release trips the relative rule
    again = monitor(tmp_path, [(V1, H), (V2, {P95: 0.9, ERR: 0.0}), (V2, {P95: 0.9})])
    again.step()
    assert again.baseline_summary()["captured_for"] == "1"  # type: ignore[index]
    d = again.step()
    summary = again.baseline_summary()
    assert summary is not None and summary["inherited"] and summary["release"].startswith("images:")
    assert d.level == Level.YELLOW
    assert [t.rule for t in d.transitions if t.kind == "fired"] == ["yellow-latency-vs-baseline"]
    again.step()  # not healthy: the slow release gets no baseline of its own
    assert set(load_baselines(again.store)) == {"1"}


def test_monitor_stops_between_evaluations_and_after_an_escalation(tmp_path: Path) -> None:
    import threading

    mon = monitor(tmp_path, [(V1, H)] * 10)
    stop = threading.Event()
    seen: list[Decision] = []

    def on_decision(d: Decision) -> None:
        seen.append(d)
        if len(seen) == 2:
            stop.set()

    mon.run(0.01, on_decision=on_decision, stop=stop, events=False)  # no platform
    assert len(seen) == 2  # the evaluation under way finished, no further one started
    assert PolicyState.from_json(mon.store.fact("monitor.policy_state")).t == seen[-1].t

    seen.clear()
    mon.escalated = True
    mon.run(0.01, on_decision=seen.append, events=False)
    assert len(seen) == 1


def test_an_incident_is_recorded_with_the_state_that_fired_it(tmp_path: Path) -> None:
    """State, level and incident are one transaction: a failure while booking the
    incident leaves the rule unfired, so the next monitor fires it (once)."""
    bad = (V1, {**H, "data_corruption": 1.0})
    mon = monitor(tmp_path, [bad, bad])

    def broken(**_kw: Any) -> int:
        raise RuntimeError("disk gone")

    mon.store.open_incident = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        mon.step()
    assert mon.store.fact("monitor.policy_state") is None and mon.store.open_incidents() == []
    again = monitor(tmp_path, [bad, bad])
    again.step()
    again.step()
    assert [i["rule"] for i in again.store.open_incidents()] == ["red-data-corruption"]
    assert set(again.store.fact(INCIDENT_KEY)) == {"red-data-corruption|data_corruption"}
