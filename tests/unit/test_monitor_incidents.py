"""The monitor's bookkeeping around a decision (Monitor.step, _book, _notify, run,
_follow_release): which incidents are opened and resolved with what in them, which
notifications go out, which rollbacks are handed on (and only with auto-rollback),
what one evaluation writes to the store, and how the loop paces itself."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backout.config import Config
from backout.environment import Environment
from backout.monitor import run as monitor_run
from backout.monitor.collect import ServiceView
from backout.monitor.run import (
    BASELINES_KEY,
    INCIDENT_KEY,
    LEVEL_KEY,
    STATE_KEY,
    Monitor,
    baseline_in_use,
    load_baselines,
)
from backout.notify import Notifier
from backout.policy.baseline import Baseline
from backout.policy.rules import (
    DEFAULT_RULES,
    ActionRequest,
    Decision,
    Firing,
    Level,
    PolicyState,
    Rule,
    Snapshot,
    Transition,
)
from backout.state import Store
from tests.support.fakes import FakePlatform
from tests.support.notifier import RecordingNotifier

GREEN, YELLOW, RED = Level.GREEN, Level.YELLOW, Level.RED
ERRORS = Rule(name="red-errors", signal="error_rate", comparison=">", threshold=0.5, level=RED,
              severity="SEV-1", action="rollback-service")
SLOW = Rule(name="yellow-slow", signal="p95", comparison=">", threshold=5, level=YELLOW,
            severity="SEV-3", action="notify")
INFO = Rule(name="green-info", signal="queue_lag", comparison="<", threshold=10, level=GREEN,
            severity="SEV-4", action="none")
RULES = (ERRORS, SLOW, INFO)


class Script:
    """A collector playing snapshots from a list: (images, signals) per evaluation."""

    def __init__(self, frames: Sequence[tuple[dict[str, str], dict[str, float | None]]],
                 clock: Any = None, cost: float = 0.0) -> None:
        self.frames = list(frames)
        self.images: dict[str, str] = {}
        self.t = 1000.0
        self.clock, self.cost = clock, cost

    def collect(self, t: float | None = None) -> tuple[Snapshot, dict[str, ServiceView]]:
        self.images, signals = self.frames.pop(0) if len(self.frames) > 1 else self.frames[0]
        self.t += 5
        if self.clock is not None:
            self.clock.now += self.cost
        return Snapshot(self.t, signals), {}


def _monitor(tmp_path: Path, rules: Sequence[Rule] = RULES, *, auto: bool = False,
             collector: Any = None, **kw: Any) -> Monitor:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    kw.setdefault("notifier", RecordingNotifier())
    return Monitor(Environment(), config, Store(config.state_dir), FakePlatform(tmp_path),
                   rules, auto_rollback=auto, collector=collector or Script([({}, {})]), **kw)


def _tr(rule: Rule, kind: str, *, signal: str | None = None, value: float | None = 0.9,
        reason: str = "why") -> Transition:
    return Transition(t=10.0, rule=rule.name, signal=signal or rule.signal, kind=kind,
                      rule_level=rule.level, level_before=GREEN, level_after=rule.level,
                      value=value, threshold=rule.threshold, reason=reason)


def _firing(rule: Rule, reason: str) -> Firing:
    return Firing(rule=rule.name, signal=rule.signal, service=None, level=rule.level,
                  severity=rule.severity, action=rule.action, value=1.0,
                  threshold=rule.threshold, since=5.0, nodata=False, reason=reason)


def _act(rule: Rule, service: str | None = None, reason: str = "errors") -> ActionRequest:
    return ActionRequest(t=10.0, rule=rule.name, action=rule.action, service=service,
                         severity=rule.severity, reason=reason)


def _decision(level: Level = GREEN, previous: Level = GREEN, *, active: Sequence[Firing] = (),
              transitions: Sequence[Transition] = (),
              actions: Sequence[ActionRequest] = ()) -> Decision:
    return Decision(t=10.0, level=level, previous_level=previous, level_since=10.0,
                    active=tuple(active), transitions=tuple(transitions), actions=tuple(actions))


def _timeline(store: Store, iid: int) -> list[tuple[str, Any]]:
    [incident] = [i for i in store.incidents() if i["id"] == iid]
    return [(e["kind"], e["detail"]) for e in incident["timeline"]]


# --------------------------------------------------------------------------- _book


def test_a_level_change_is_one_notice_naming_both_levels_and_the_first_reason(
        tmp_path: Path) -> None:
    mon = _monitor(tmp_path)
    notices, rollbacks = mon._book(_decision(RED, YELLOW, active=[
        _firing(ERRORS, "error rate 0.9 > 0.5"), _firing(SLOW, "p95 9 > 5")]))
    assert notices == [{"kind": "level", "level": "RED", "previous": "YELLOW",
                        "summary": "level YELLOW -> RED: error rate 0.9 > 0.5"}]
    assert rollbacks == [] and mon.store.incidents() == []
    assert mon.store.fact(INCIDENT_KEY) == {}


def test_a_level_change_without_an_active_rule_has_no_reason(tmp_path: Path) -> None:
    notices, _ = _monitor(tmp_path)._book(_decision(GREEN, RED))
    assert notices == [{"kind": "level", "level": "GREEN", "previous": "RED",
                        "summary": "level RED -> GREEN"}]


def test_the_same_level_is_no_notice(tmp_path: Path) -> None:
    assert _monitor(tmp_path)._book(_decision(RED, RED, active=[_firing(ERRORS, "x")])) == ([], [])


@pytest.mark.parametrize("rule", [ERRORS, SLOW])
def test_a_red_or_yellow_rule_firing_opens_an_incident(tmp_path: Path, rule: Rule) -> None:
    mon = _monitor(tmp_path)
    notices, _ = mon._book(_decision(rule.level, rule.level, transitions=[
        _tr(rule, "fired", value=0.9, reason="it crossed")]))
    [incident] = mon.store.incidents()
    assert (incident["rule"], incident["level"], incident["severity"], incident["reason"],
            incident["status"]) == (rule.name, rule.level.value, rule.severity, "it crossed", "open")
    assert _timeline(mon.store, incident["id"]) == [
        ("detected", {"rule": rule.name, "reason": "it crossed",
                      "values": {"signal": rule.signal, "value": 0.9,
                                 "threshold": rule.threshold}})]
    assert mon.store.fact(INCIDENT_KEY) == {f"{rule.name}|{rule.signal}": incident["id"]}
    assert notices == [{"kind": "incident", "incident": incident["id"], "level": rule.level.value,
                        "severity": rule.severity, "summary": "it crossed"}]


def test_a_green_rule_firing_opens_no_incident(tmp_path: Path) -> None:
    mon = _monitor(tmp_path)
    notices, _ = mon._book(_decision(transitions=[_tr(INFO, "fired")]))
    assert notices == [] and mon.store.incidents() == [] and mon.store.fact(INCIDENT_KEY) == {}


def test_a_cleared_rule_resolves_its_own_incident_only(tmp_path: Path) -> None:
    mon = _monitor(tmp_path)
    mon._book(_decision(RED, GREEN, transitions=[
        _tr(ERRORS, "fired", signal="error_rate{service=web}"),
        _tr(ERRORS, "fired", signal="error_rate{service=api}"),
        _tr(SLOW, "fired")]))
    ids = dict(mon.store.fact(INCIDENT_KEY))
    assert set(ids) == {"red-errors|error_rate{service=web}", "red-errors|error_rate{service=api}",
                        "yellow-slow|p95"}
    web = ids["red-errors|error_rate{service=web}"]
    notices, _ = mon._book(_decision(RED, RED, transitions=[
        _tr(ERRORS, "cleared", signal="error_rate{service=web}", reason="back under 0.1"),
        _tr(SLOW, "cleared", signal="p95{service=other}", reason="never opened")]))
    assert notices == [{"kind": "resolved", "incident": web, "level": "GREEN",
                        "summary": f"incident {web} resolved: back under 0.1"}]
    assert _timeline(mon.store, web)[-1] == ("resolved", {"reason": "back under 0.1"})
    del ids["red-errors|error_rate{service=web}"]
    assert mon.store.fact(INCIDENT_KEY) == ids
    assert sorted(i["id"] for i in mon.store.open_incidents()) == sorted(ids.values())
    # a "nodata" transition is neither an opening nor a resolution
    assert mon._book(_decision(RED, RED, transitions=[
        _tr(SLOW, "nodata"), _tr(ERRORS, "data", signal="error_rate{service=api}")])) == ([], [])
    assert mon.store.fact(INCIDENT_KEY) == ids


def test_incidents_survive_a_restart_through_the_store(tmp_path: Path) -> None:
    _monitor(tmp_path)._book(_decision(RED, GREEN, transitions=[_tr(ERRORS, "fired")]))
    again = _monitor(tmp_path)
    notices, _ = again._book(_decision(GREEN, RED, transitions=[_tr(ERRORS, "cleared")]))
    assert [n["kind"] for n in notices] == ["level", "resolved"]
    assert again.store.open_incidents() == [] and again.store.fact(INCIDENT_KEY) == {}


def test_with_auto_rollback_a_rollback_action_is_handed_on_with_its_incident(
        tmp_path: Path) -> None:
    mon = _monitor(tmp_path, auto=True)
    action = _act(ERRORS)
    notify = _act(SLOW)
    _, rollbacks = mon._book(_decision(RED, GREEN, transitions=[
        _tr(ERRORS, "fired"), _tr(SLOW, "fired")], actions=[action, notify]))
    ids = mon.store.fact(INCIDENT_KEY)
    assert rollbacks == [(action, ids["red-errors|error_rate"])]
    # the rollback is not recorded as an action yet (the rollback itself does that)
    assert [k for k, _ in _timeline(mon.store, ids["red-errors|error_rate"])] == ["detected"]
    assert _timeline(mon.store, ids["yellow-slow|p95"])[-1] == (
        "action", {"action": "notify", "automatic": False})


def test_without_auto_rollback_the_rollback_is_only_recorded_as_asked_for(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, auto=False)
    _, rollbacks = mon._book(_decision(RED, GREEN, transitions=[_tr(ERRORS, "fired")],
                                       actions=[_act(ERRORS)]))
    assert rollbacks == []
    iid = mon.store.fact(INCIDENT_KEY)["red-errors|error_rate"]
    assert _timeline(mon.store, iid)[-1] == ("action", {"action": "rollback-service",
                                                        "automatic": False})


def test_an_action_without_a_transition_this_time_has_no_incident(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, auto=True)
    mon._book(_decision(RED, GREEN, transitions=[_tr(SLOW, "fired")]))
    # the rollback is handed on without an incident; the notify writes nowhere
    action = _act(ERRORS)
    _, rollbacks = mon._book(_decision(RED, RED, actions=[action, _act(SLOW)]))
    assert rollbacks == [(action, None)]
    [incident] = mon.store.incidents()
    assert [k for k, _ in _timeline(mon.store, incident["id"])] == ["detected"]


# --------------------------------------------------------------------------- _notify


@pytest.mark.parametrize(("problems", "kind"), [((), "notified"),
                                                (("webhook answered 502",), "notify_failed")])
def test_a_notification_about_an_incident_is_recorded_in_its_timeline(
        tmp_path: Path, problems: tuple[str, ...], kind: str) -> None:
    mon = _monitor(tmp_path, notifier=RecordingNotifier(problems=problems))
    iid = mon.store.open_incident(rule="r", level="RED", severity="SEV-1", reason="x", values={})
    mon._notify({"kind": "incident", "incident": str(iid), "summary": "x"})
    assert _timeline(mon.store, iid)[-1] == (kind, {"problems": list(problems),
                                                    "kind": "incident"})
    assert isinstance(mon.notifier, RecordingNotifier)
    assert mon.notifier.sent == [{"kind": "incident", "incident": str(iid), "summary": "x"}]


def test_a_notification_without_an_incident_writes_nothing(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, notifier=RecordingNotifier(problems=("down",)))
    mon._notify({"kind": "level", "summary": "level GREEN -> RED"})
    assert mon.store.incidents() == [] and mon.store.events() == []


def test_a_real_notifier_failing_never_raises(tmp_path: Path) -> None:
    mon = _monitor(tmp_path)
    mon.notifier = Notifier(command="/nonexistent/notify-hook")
    iid = mon.store.open_incident(rule="r", level="RED", severity="SEV-1", reason="x", values={})
    mon._notify({"kind": "incident", "incident": iid, "summary": "x"})
    kind, detail = _timeline(mon.store, iid)[-1]
    assert kind == "notify_failed" and detail["problems"][0].startswith("notify command failed")


# --------------------------------------------------------------------------- step


WEB = "error_rate{service=web}"
BAD = {WEB: 0.9, "p95": 1.0, "queue_lag": 50.0}
GOOD = {WEB: 0.0, "p95": 1.0, "queue_lag": 50.0}


def test_one_evaluation_records_state_level_incident_then_notifies_then_rolls_back(
        tmp_path: Path) -> None:
    mon = _monitor(tmp_path, auto=True, collector=Script([({}, BAD), ({}, BAD), ({}, GOOD)]))
    seen: list[tuple[Any, ...]] = []
    sent: list[dict[str, Any]] = []

    def rollback(action: str, service: str | None, iid: int | None, reason: str) -> None:
        # called after the notices and after the transaction committed
        seen.append((action, service, iid, reason, len(sent),
                     Store(mon.config.state_dir).fact(INCIDENT_KEY)))

    mon._rollback = rollback  # type: ignore[method-assign]
    assert isinstance(mon.notifier, RecordingNotifier)
    sent = mon.notifier.sent
    d = mon.step()
    assert d.level == RED
    [incident] = mon.store.incidents()
    iid = incident["id"]
    [(action, service, got_iid, reason, notices_before, stored)] = seen
    assert (action, service, got_iid) == ("rollback-service", "web", iid)
    assert reason == d.actions[0].reason and "0.9" in reason
    assert notices_before == 2 and stored == {f"red-errors|{WEB}": iid}
    assert [e["kind"] for e in sent] == ["level", "incident"]
    assert mon.store.fact(LEVEL_KEY) == {"level": "RED", "t": d.t, "since": d.level_since}
    saved = PolicyState.from_json(mon.store.fact(STATE_KEY))
    assert saved == mon.state and saved.level == RED and saved.t == d.t

    d = mon.step()  # still RED: no new incident, no second rollback
    assert len(seen) == 1 and len(mon.store.incidents()) == 1 and d.actions == ()
    mon.step()
    assert mon.store.fact(LEVEL_KEY)["level"] == "GREEN"


def test_a_restarted_monitor_continues_from_the_stored_state(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, collector=Script([({}, BAD)]))
    mon.step()
    again = _monitor(tmp_path, collector=Script([({}, BAD)]))
    assert again.state == mon.state
    d = again.step()
    assert d.transitions == () and d.previous_level == RED  # no second firing
    assert len(again.store.incidents()) == 1


def test_a_watch_keeps_its_own_policy_state(tmp_path: Path) -> None:
    _monitor(tmp_path, collector=Script([({}, BAD)])).step()
    watch = _monitor(tmp_path, collector=Script([({}, BAD)]), state_key="deploy.watch.state")
    assert watch.state == PolicyState()
    d = watch.step()
    assert [t.kind for t in d.transitions] == ["fired"]
    assert watch.store.fact("deploy.watch.state") is not None
    assert PolicyState.from_json(watch.store.fact(STATE_KEY)).t == 1005.0  # untouched


# --------------------------------------------------------------------------- run


class Clock:
    def __init__(self) -> None:
        self.now = 7000.0  # monotonic time is not since the start


class PacedStop(threading.Event):
    """A stop event whose wait advances a fake clock instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.clock.now += timeout
        return self.is_set()


@pytest.mark.parametrize(("interval", "cost", "duration", "waits"), [
    (5.0, 2.0, 10.0, [3.0, 3.0]),     # each evaluation takes 2 s of the 5 s interval
    (5.0, 2.0, 10.5, [3.0, 3.0, 0.0]),  # the third ends past the duration: no wait after it
    (1.0, 2.0, 5.0, [0.0, 0.0, 0.0]),  # slower than the interval: no wait at all
])
def test_run_paces_evaluations_by_the_interval_for_the_duration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float, cost: float,
        duration: float, waits: list[float]) -> None:
    clock = Clock()
    monkeypatch.setattr(monitor_run, "time", SimpleNamespace(monotonic=lambda: clock.now))
    mon = _monitor(tmp_path, collector=Script([({}, GOOD)], clock, cost))
    stop = PacedStop(clock)
    decisions: list[Decision] = []
    last = mon.run(interval, duration=duration, stop=stop, on_decision=decisions.append,
                   clock=lambda: clock.now)
    assert stop.waits == waits
    assert len(decisions) == len(waits) and last is decisions[-1]


def test_run_without_time_left_evaluates_nothing(tmp_path: Path) -> None:
    mon = _monitor(tmp_path)
    assert mon.run(0.01, duration=0) is None
    assert mon.store.fact(LEVEL_KEY) is None


def test_run_ends_after_an_escalation_without_waiting(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(monitor_run, "time", SimpleNamespace(monotonic=lambda: clock.now))
    mon = _monitor(tmp_path, collector=Script([({}, GOOD)]))
    original = mon.step

    def step(t: float | None = None) -> Decision:
        mon.escalated = True
        return original(t)

    mon.step = step  # type: ignore[method-assign]
    stop = PacedStop(clock)
    assert mon.run(1.0, duration=100, stop=stop, clock=lambda: clock.now) is not None
    assert stop.waits == []


# --------------------------------------------------------------------------- the release


def test_the_release_follows_the_running_images(tmp_path: Path) -> None:
    frames = [({}, GOOD), ({"web": "sha256:1"}, GOOD), ({"web": "sha256:1"}, GOOD),
              ({"web": "sha256:2"}, GOOD), ({"web": "sha256:1"}, GOOD)]
    mon = _monitor(tmp_path, collector=Script(frames))
    mon.store.add_release(git_commit="c", git_dirty=False, diff_path=None, compose_config={},
                          services={"web": {"image_id": "sha256:1"}})
    mon.step()
    assert mon.release is None  # nothing known to run yet
    keys = []
    for _ in range(4):
        mon.step()
        keys.append(mon.release)
    assert keys[0] == keys[1] == keys[3] == "1"
    assert keys[2] is not None and keys[2].startswith("images:")


def test_default_rules_are_usable_by_the_bookkeeping(tmp_path: Path) -> None:
    """Every default RED/YELLOW rule that fires finds its rule (severity) by name."""
    mon = _monitor(tmp_path, DEFAULT_RULES)
    for rule in DEFAULT_RULES:
        if rule.level in (RED, YELLOW):
            mon._book(_decision(rule.level, GREEN, transitions=[_tr(rule, "fired")]))
    assert {i["severity"] for i in mon.store.incidents()} == {
        r.severity for r in DEFAULT_RULES if r.level in (RED, YELLOW)}


def test_without_a_collector_the_monitor_builds_one_for_its_stack(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    store = Store(config.state_dir)
    env = Environment()
    platform = object()
    mon = Monitor(env, config, store, platform, RULES, window=42.0)  # type: ignore[arg-type]
    collector = mon.collector
    assert collector is not None and type(collector).__name__ == "Collector"
    assert (collector.env, collector.config, collector.platform, collector.state) == \
        (env, config, platform, store)
    assert collector.window == 42.0
    assert (mon.state, mon.release, mon.baseline, mon.escalated) == \
        (PolicyState(), None, None, False)
    assert not mon.auto_rollback and mon.cooldown == 300.0 and mon.state_key == STATE_KEY


@pytest.mark.parametrize("auto", [False, True])
def test_two_services_failing_at_once_each_get_their_own_action(tmp_path: Path,
                                                                auto: bool) -> None:
    """One rule firing for two services in one evaluation: two incidents, and each
    action (recorded, or handed on as a rollback) belongs to its own service's."""
    api = "error_rate{service=api}"
    mon = _monitor(tmp_path, auto=auto, collector=Script([({}, {**BAD, api: 0.8})]))
    handed: list[tuple[str | None, int | None]] = []
    mon._rollback = lambda action, service, iid, reason: handed.append((service, iid))  # type: ignore[method-assign]
    mon.step()
    ids = mon.store.fact(INCIDENT_KEY)
    assert set(ids) == {f"red-errors|{WEB}", f"red-errors|{api}"}
    if auto:
        assert sorted(handed, key=str) == sorted([("web", ids[f"red-errors|{WEB}"]),
                                                  ("api", ids[f"red-errors|{api}"])], key=str)
    else:
        for key in ids:
            assert [e for e in _timeline(mon.store, ids[key]) if e[0] == "action"] == [
                ("action", {"action": "rollback-service", "automatic": False})], key


# --------------------------------------------------------------------------- the baseline

RELATIVE = Rule(name="yellow-slower", signal="p95", comparison=">", threshold=3, level=YELLOW,
                severity="SEV-3", action="notify", relative_to_baseline=True)


def test_the_baseline_is_captured_once_per_release_and_announced(tmp_path: Path) -> None:
    healthy = ({"web": "sha256:1"}, {"p95": 0.2})
    mon = _monitor(tmp_path, (RELATIVE,), collector=Script([healthy] * 6),
                   baseline_evaluations=2)
    mon.store.add_release(git_commit="c", git_dirty=False, diff_path=None, compose_config={},
                          services={"web": {"image_id": "sha256:1"}})
    for _ in range(5):
        mon.step()
    [event] = [e for e in mon.store.events() if e["action"] == "monitor.baseline"]
    assert (event["target"], event["reason"]) == ("release 1", "2 healthy evaluations in a row")
    assert event["detail"] == {"values": {"p95": 0.2}}
    assert set(load_baselines(mon.store)) == {"1"}


def test_no_baseline_without_a_running_release(tmp_path: Path) -> None:
    mon = _monitor(tmp_path, (RELATIVE,), collector=Script([({}, {"p95": 0.2})]),
                   baseline_evaluations=1)
    for _ in range(3):
        mon.step()
    assert mon.store.fact(BASELINES_KEY) is None and mon.store.events() == []


def test_an_unreadable_stored_baseline_is_skipped_not_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good = Baseline("2", {"p95": 0.1}, 5.0, 3)
    store.set_fact(BASELINES_KEY, {"1": {"release": "1"}, "2": good.to_json(), "3": "garbage"})
    assert load_baselines(store) == {"2": good}


def test_status_shows_the_baseline_of_what_runs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add_release(git_commit="c", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": "sha256:1"}})
    store.set_fact(BASELINES_KEY, {"1": Baseline("1", {"p95": 0.1}, 5.0, 3).to_json()})
    assert baseline_in_use(store, FakePlatform(tmp_path)) is None  # nothing runs
    summary = baseline_in_use(store, FakePlatform(tmp_path, running={"web": "sha256:1"}))
    assert summary == {"release": "1", "captured_for": "1", "inherited": False,
                       "captured_at": 5.0, "values": {"p95": 0.1}, "warmup": None}
    other = baseline_in_use(store, FakePlatform(tmp_path, running={"web": "sha256:2"}))
    assert other is not None and other["inherited"] and other["captured_for"] == "1"
    assert other["release"].startswith("images:")
    # release 1 runs again after release 2 got a newer baseline: its own is shown
    store.add_release(git_commit="c2", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": "sha256:2"}})
    store.set_fact(BASELINES_KEY, {"1": Baseline("1", {"p95": 0.1}, 5.0, 3).to_json(),
                                   "2": Baseline("2", {"p95": 0.3}, 9.0, 3).to_json()})
    again = baseline_in_use(store, FakePlatform(tmp_path, running={"web": "sha256:1"}))
    assert again is not None and (again["captured_for"], again["values"]) == ("1", {"p95": 0.1})


def test_step_passes_its_time_to_the_collector(tmp_path: Path) -> None:
    asked: list[float | None] = []
    script = Script([({}, GOOD)])
    collect = script.collect

    def recording(t: float | None = None) -> tuple[Snapshot, dict[str, ServiceView]]:
        asked.append(t)
        return collect(t)

    script.collect = recording  # type: ignore[method-assign]
    mon = _monitor(tmp_path, collector=script)
    mon.step(123.0)
    mon.step()
    assert asked == [123.0, None]
