"""The monitor's automatic rollback (Monitor._rollback), in-process: which plan it
runs for which rule action, under the operation lock, then verification; the
cool-down; what it writes to the incident's timeline; what it notifies; when it
escalates (a human decides) and when it stands aside (another operation holds the lock)."""

from __future__ import annotations

import json
import logging
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backout.config import Config
from backout.config.model import VerifyConfig
from backout.environment import Environment
from backout.errors import BackoutError, UnhealthyError
from backout.monitor import run as monitor_run
from backout.monitor.run import LAST_ACTION_KEY, Monitor, previous_release
from backout.notify import Notifier
from backout.operations.executor import Executor, RunContext, register_action
from backout.operations.plan import Plan, Step
from backout.policy.rules import DEFAULT_RULES
from backout.rollback import emergency
from backout.state import OperationLock, Store
from backout.verify import Check, VerifyResult
from tests.support.fakes import FakePlatform, run_context
from tests.support.notifier import RecordingNotifier
from tests.support.switchfake import SwitchFakePlatform

NOW = 50_000.0
OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


class VerifyRecorder:
    """Stands in for run_verify: records how it was asked, answers ``checks``."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        self.calls: list[dict[str, Any]] = []

    def __call__(self, env: Environment, config: Config, store: Store, platform: Any, *,
                 settle: float | None = None, since: datetime | None = None) -> VerifyResult:
        self.calls.append({"env": env, "config": config, "store": store, "platform": platform,
                           "settle": settle, "since": since, "at": datetime.now(UTC)})
        return VerifyResult(list(self.checks))


HOLDERS: list[str | None] = []


@register_action("test.monitor.emergency")
def _emergency_step(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    holder = OperationLock(ctx.config.state_dir).holder()
    HOLDERS.append(holder.command if holder else None)
    if params.get("fail"):
        raise UnhealthyError("the stack did not come back", fix="look at `backout status`")
    return {"ok": True}


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    HOLDERS.clear()
    monkeypatch.setattr(monitor_run, "time", SimpleNamespace(time=lambda: NOW,
                                                             monotonic=time.monotonic))


@pytest.fixture
def verify(monkeypatch: pytest.MonkeyPatch) -> VerifyRecorder:
    recorder = VerifyRecorder([Check("container web", True, "running"),
                               Check("logs web", True, "0 error lines")])
    monkeypatch.setattr(monitor_run, "run_verify", recorder)
    return recorder


@pytest.fixture
def emergency_plans(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """emergency.plan replaced by a one-step plan; records what it was asked."""
    asked: list[dict[str, Any]] = []

    def fake_plan(env: Environment, config: Config, store: Store, platform: Any, target: str,
                  with_data: bool) -> Plan:
        asked.append({"env": env, "config": config, "store": store, "platform": platform,
                      "target": target, "with_data": with_data})
        return Plan("rollback.emergency", {"target": target},
                    (Step("bring the stack back", "test.monitor.emergency", "the whole stack",
                          {"fail": target == "fail"}, key="back"),),
                    summary=f"whole stack back to release {target}")

    monkeypatch.setattr(emergency, "plan", fake_plan)
    return asked


def _monitor(tmp_path: Path, *, settle: int = 10, notifier: Notifier | None = None,
             platform: FakePlatform | None = None) -> Monitor:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                    verify=VerifyConfig(settle_seconds=settle))
    store = Store(config.state_dir)
    # release 1 ran OLD, release 2 (what runs now) runs NEW
    store.add_release(git_commit="c1", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": OLD}})
    store.add_release(git_commit="c2", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": NEW}})
    if platform is None:
        platform = SwitchFakePlatform(tmp_path, running={"web": NEW},
                                      images={"web:old": OLD, "web:new": NEW})
    return Monitor(Environment(), config, store, platform, DEFAULT_RULES,
                   notifier=notifier or RecordingNotifier(), auto_rollback=True,
                   collector=SimpleNamespace(images={}))  # type: ignore[arg-type]


def _incident(store: Store) -> int:
    return store.open_incident(rule="red-error-rate", level="RED", severity="SEV-1",
                               reason="error rate 0.4 > 0.05", values={"signal": "error_rate"})


def _timeline(store: Store, iid: int) -> list[tuple[str, Any]]:
    [incident] = [i for i in store.incidents() if i["id"] == iid]
    return [(e["kind"], e["detail"]) for e in incident["timeline"]]


def _sent(mon: Monitor) -> list[dict[str, Any]]:
    assert isinstance(mon.notifier, RecordingNotifier)
    return mon.notifier.sent


# --------------------------------------------------------------------------- success


def test_a_service_rollback_runs_under_the_lock_then_is_verified_and_reported(
        tmp_path: Path, verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path, settle=30)
    iid = _incident(mon.store)
    started = datetime.now(UTC)
    mon._rollback("rollback-service", "web", iid, "error rate 0.4 > 0.05")

    platform = mon.platform
    assert isinstance(platform, FakePlatform)
    # the service went back to release 1's image, nothing else was touched
    assert platform.running_images() == {"web": OLD}
    [(service, ref)] = platform.called("start_beside")
    assert service == "web" and ref.endswith(":target-" + "a" * 12)
    assert [c[0] for c in platform.called("retire")] == [("c-web-1",)]  # the old container
    assert platform.called("converge") == [] and platform.called("stop") == []
    op = mon.store.last_operation()
    assert op is not None and (op["kind"], op["status"]) == ("rollback.service", "succeeded")
    assert mon.store.fact(LAST_ACTION_KEY) == NOW
    assert not mon.escalated

    # verification: the settle period is capped at 10 s, logs from now on only
    [call] = verify.calls
    assert call["settle"] == 10
    assert call["config"] is mon.config and call["store"] is mon.store
    assert call["platform"] is platform and call["env"] is mon.env
    assert call["since"].tzinfo is not None and started <= call["since"] <= call["at"]

    summary = "roll web back from " + "b" * 12 + " to " + "a" * 12 + " (release 1), start-first"
    assert _timeline(mon.store, iid)[1:] == [
        ("action", {"rollback": summary, "automatic": True, "reason": "error rate 0.4 > 0.05"}),
        ("verified", {"checks": 2}),
        ("notified", {"problems": [], "kind": "rolled_back"}),
    ]
    assert _sent(mon) == [{"kind": "rolled_back", "incident": iid, "level": "RED",
                           "summary": f"automatic rollback done and verified: {summary}"}]
    [incident] = mon.store.open_incidents()
    assert incident["status"] == "open"  # resolved by the policy clearing, not here


def test_a_short_settle_period_is_kept(tmp_path: Path, verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path, settle=3)
    mon._rollback("rollback-service", "web", None, "r")
    assert [c["settle"] for c in verify.calls] == [3]


def test_without_an_incident_it_still_rolls_back_and_notifies(tmp_path: Path,
                                                              verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path)
    mon._rollback("rollback-service", "web", None, "r")
    assert mon.platform.running_images() == {"web": OLD}
    assert [(e["kind"], e["incident"]) for e in _sent(mon)] == [("rolled_back", None)]
    assert mon.store.incidents() == []


def test_the_real_verification_runs_after_the_rollback(tmp_path: Path) -> None:
    """No stand-in for verify: its checks of the rolled-back stack are what is counted."""
    mon = _monitor(tmp_path, settle=0)
    iid = _incident(mon.store)
    mon._rollback("rollback-service", "web", iid, "r")
    kinds = [k for k, _ in _timeline(mon.store, iid)]
    assert kinds == ["detected", "action", "verified", "notified"], _timeline(mon.store, iid)
    verified = dict(_timeline(mon.store, iid))["verified"]
    assert verified["checks"] >= 2
    assert mon.store.events()[0]["action"] == "verify"
    assert mon.store.events()[0]["reason"] == "ok"


@pytest.mark.parametrize(("action", "service", "with_data"), [
    ("rollback-emergency", None, False),
    ("rollback-with-data", None, True),
    ("rollback-with-data", "web", True),
    ("rollback-service", None, False),  # no service named: the whole stack
    ("rollback-emergency", "web", False),
])
def test_the_action_chooses_the_whole_stack_plan_and_its_target(
        tmp_path: Path, verify: VerifyRecorder, emergency_plans: list[dict[str, Any]],
        action: str, service: str | None, with_data: bool) -> None:
    mon = _monitor(tmp_path)
    iid = _incident(mon.store)
    mon._rollback(action, service, iid, "data corruption")
    [asked] = emergency_plans
    # the target: the newest release whose images differ from what runs (release 1)
    assert (asked["target"], asked["with_data"]) == ("1", with_data)
    assert asked["env"] is mon.env and asked["config"] is mon.config
    assert asked["store"] is mon.store and asked["platform"] is mon.platform
    # the plan ran under the operation lock, named after the monitor and the plan
    assert HOLDERS == ["monitor auto-rollback (rollback.emergency)"]
    assert OperationLock(mon.config.state_dir).holder() is None  # released after
    assert mon.platform.called("replace_service") == []
    assert _timeline(mon.store, iid)[1] == (
        "action", {"rollback": "whole stack back to release 1", "automatic": True,
                   "reason": "data corruption"})
    assert [e["kind"] for e in _sent(mon)] == ["rolled_back"]


# --------------------------------------------------------------------------- cool-down


@pytest.mark.parametrize("ago", [0.0, 1.0, 299.0, 299.9])
def test_within_the_cool_down_nothing_is_done(tmp_path: Path, verify: VerifyRecorder,
                                              ago: float) -> None:
    mon = _monitor(tmp_path)
    mon.store.set_fact(LAST_ACTION_KEY, NOW - ago)
    iid = _incident(mon.store)
    mon._rollback("rollback-service", "web", iid, "r")
    assert mon.platform.running_images() == {"web": NEW}
    assert mon.store.last_operation() is None and verify.calls == []
    assert mon.store.fact(LAST_ACTION_KEY) == NOW - ago
    assert _timeline(mon.store, iid)[1:] == [("action", {"skipped": "cool-down",
                                                         "cooldown_s": 300.0})]
    assert _sent(mon) == [] and not mon.escalated


def test_the_cool_down_is_the_monitors_and_without_an_incident_nothing_is_written(
        tmp_path: Path, verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path)
    mon.cooldown = 30.0
    mon.store.set_fact(LAST_ACTION_KEY, NOW - 29)
    mon._rollback("rollback-service", "web", None, "r")
    assert mon.store.last_operation() is None and mon.store.incidents() == []
    mon.store.set_fact(LAST_ACTION_KEY, NOW - 31)  # over: it acts
    mon._rollback("rollback-service", "web", None, "r")
    assert mon.platform.running_images() == {"web": OLD}


@pytest.mark.parametrize("ago", [300.0, 301.0, 10_000.0])
def test_after_the_cool_down_it_acts_again(tmp_path: Path, verify: VerifyRecorder,
                                           ago: float) -> None:
    mon = _monitor(tmp_path)
    mon.store.set_fact(LAST_ACTION_KEY, NOW - ago)
    mon._rollback("rollback-service", "web", None, "r")
    assert mon.platform.running_images() == {"web": OLD}
    assert mon.store.fact(LAST_ACTION_KEY) == NOW


def test_after_an_escalation_nothing_more_is_done(tmp_path: Path, verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path)
    mon.escalated = True
    iid = _incident(mon.store)
    mon._rollback("rollback-service", "web", iid, "r")
    assert mon.platform.calls == [] and mon.store.fact(LAST_ACTION_KEY) is None
    assert mon.store.last_operation() is None and _timeline(mon.store, iid) == [
        ("detected", {"reason": "error rate 0.4 > 0.05", "rule": "red-error-rate",
                      "values": {"signal": "error_rate"}})]
    assert _sent(mon) == []


# --------------------------------------------------------------------------- escalation


def _escalated(mon: Monitor, iid: int, error: str) -> None:
    assert mon.escalated
    assert _timeline(mon.store, iid)[-2:] == [
        ("escalated", {"error": error}),
        ("notified", {"problems": [], "kind": "escalated"}),
    ]
    [incident] = [i for i in mon.store.incidents() if i["id"] == iid]
    assert incident["status"] == "escalated"
    assert _sent(mon)[-1] == {"kind": "escalated", "incident": iid, "level": "RED",
                              "summary": "automatic rollback failed, a human is needed: "
                                         + error}


def test_a_failed_plan_escalates_and_is_not_verified(
        tmp_path: Path, verify: VerifyRecorder, emergency_plans: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    mon = _monitor(tmp_path)
    monkeypatch.setattr(monitor_run, "previous_release", lambda store, platform: "fail")
    iid = _incident(mon.store)
    mon._rollback("rollback-emergency", None, iid, "r")
    _escalated(mon, iid, "the stack did not come back (fix: look at `backout status`)")
    assert verify.calls == []
    assert [k for k, _ in _timeline(mon.store, iid)] == ["detected", "action", "escalated",
                                                         "notified"]
    op = mon.store.last_operation()
    assert op is not None and op["status"] == "failed"
    assert mon.store.fact(LAST_ACTION_KEY) == NOW  # an attempt counts for the cool-down
    # escalated: a later RED does nothing
    mon._rollback("rollback-emergency", None, iid, "r")
    assert len(emergency_plans) == 1


def test_no_release_to_go_back_to_escalates_before_any_action(
        tmp_path: Path, verify: VerifyRecorder, emergency_plans: list[dict[str, Any]]) -> None:
    mon = _monitor(tmp_path, platform=FakePlatform(tmp_path, running={"web": OLD}))
    mon.store.update_release(2, services={"web": {"image_id": OLD}})
    iid = _incident(mon.store)
    mon._rollback("rollback-emergency", None, iid, "r")
    _escalated(mon, iid, "no recorded release differs from what runs now: nothing to roll back to")
    assert emergency_plans == [] and mon.store.last_operation() is None
    assert "action" not in [k for k, _ in _timeline(mon.store, iid)]


def test_a_failed_verification_escalates_naming_the_failed_checks(
        tmp_path: Path, verify: VerifyRecorder) -> None:
    verify.checks = [Check("container web", False, "restarting"), Check("health web", True, ""),
                     Check("logs web", False, "12 error lines")]
    mon = _monitor(tmp_path)
    iid = _incident(mon.store)
    mon._rollback("rollback-service", "web", iid, "r")
    _escalated(mon, iid, "verification failed after the automatic rollback: "
                         "container web, logs web")
    assert "verified" not in [k for k, _ in _timeline(mon.store, iid)]
    assert "rolled_back" not in [e["kind"] for e in _sent(mon)]
    assert mon.platform.running_images() == {"web": OLD}  # the rollback itself ran


def test_an_interrupted_operation_waiting_for_resume_escalates(
        tmp_path: Path, verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path)
    plan = Plan("rollback.db", {}, (Step("one", "test.monitor.emergency", "x", {}, key="one"),))
    waiting = Executor(mon.store, run_context(mon.store, mon.config)).start(plan)
    iid = _incident(mon.store)
    mon._rollback("rollback-service", "web", iid, "r")
    _escalated(mon, iid, f"operation #{waiting} (rollback.db) was interrupted and is "
                         "unfinished (fix: run `backout resume` first)")
    assert mon.platform.running_images() == {"web": NEW} and HOLDERS == []


def test_a_failed_escalation_notice_is_recorded_as_such(tmp_path: Path,
                                                        verify: VerifyRecorder) -> None:
    verify.checks = [Check("container web", False, "exited")]
    mon = _monitor(tmp_path, notifier=RecordingNotifier(problems=("webhook answered 500",)))
    iid = _incident(mon.store)
    mon._rollback("rollback-service", "web", iid, "r")
    assert mon.escalated
    assert _timeline(mon.store, iid)[-1] == ("notify_failed", {"problems": ["webhook answered 500"],
                                                               "kind": "escalated"})


# --------------------------------------------------------------------------- the lock


@pytest.mark.parametrize("last", [None, NOW - 1000])
def test_another_operation_holding_the_lock_owns_the_response(
        tmp_path: Path, verify: VerifyRecorder, last: float | None) -> None:
    mon = _monitor(tmp_path)
    if last is not None:
        mon.store.set_fact(LAST_ACTION_KEY, last)
    iid = _incident(mon.store)
    with OperationLock(mon.config.state_dir).acquire("backout deploy"):
        mon._rollback("rollback-service", "web", iid, "r")
    assert not mon.escalated and _sent(mon) == [] and verify.calls == []
    assert mon.platform.running_images() == {"web": NEW}
    # the cool-down is not consumed: the next RED after the deploy may act at once
    assert mon.store.fact(LAST_ACTION_KEY) == last
    [(kind, detail)] = _timeline(mon.store, iid)[2:]
    assert kind == "action" and detail["skipped"] == "locked"
    assert "`backout deploy`" in detail["holder"] and set(detail) == {"skipped", "holder"}
    # the "action" line before it is the rollback it was about to run
    assert _timeline(mon.store, iid)[1][1]["automatic"] is True
    mon._rollback("rollback-service", "web", iid, "r")
    assert mon.platform.running_images() == {"web": OLD}


def test_a_locked_stack_without_an_incident_writes_nothing(tmp_path: Path,
                                                           verify: VerifyRecorder) -> None:
    mon = _monitor(tmp_path)
    with OperationLock(mon.config.state_dir).acquire("backout rollback db"):
        mon._rollback("rollback-service", "web", None, "r")
    assert not mon.escalated and mon.store.incidents() == [] and _sent(mon) == []


# --------------------------------------------------------------------------- previous_release


def _releases(store: Store, *images: dict[str, str]) -> None:
    for n, services in enumerate(images, 1):
        store.add_release(git_commit=f"c{n}", git_dirty=False, diff_path=None, compose_config={},
                          services={s: {"image_id": i} for s, i in services.items()})


def test_previous_release_is_the_newest_that_differs_in_a_running_service(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _releases(store,
              {"web": "w1", "db": "d1"},          # 1: differs
              {"web": "w2", "db": "d1"},          # 2: differs (web)
              {"web": "w3", "db": "d1", "old": "o1"},  # 3: same as running; old not running
              {"web": "w3", "db": "d1"})          # 4: what runs
    platform = FakePlatform(tmp_path, running={"web": "w3", "db": "d1"})
    assert previous_release(store, platform) == 2
    platform.state["db"] = "exited"  # a stopped service does not count
    assert previous_release(store, platform) == 2
    store.add_release(git_commit="c5", git_dirty=False, diff_path=None, compose_config={},
                      services={"cache": {"image_id": "x"}})  # no running service in it
    assert previous_release(store, platform) == 2
    store.add_release(git_commit="c6", git_dirty=False, diff_path=None, compose_config={},
                      services={"db": {"image_id": "d2"}, "web": {"image_id": "w3"}})
    platform.state["db"] = "running"
    assert previous_release(store, platform) == 6


def test_previous_release_refuses_when_none_differs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _releases(store, {"web": "w1"}, {"web": "w1"})
    with pytest.raises(BackoutError) as info:
        previous_release(store, FakePlatform(tmp_path, running={"web": "w1"}))
    assert info.value.message == ("no recorded release differs from what runs now: "
                                  "nothing to roll back to")
    with pytest.raises(BackoutError):
        previous_release(Store(tmp_path / "empty"), FakePlatform(tmp_path, running={"web": "w1"}))



def test_a_lock_left_by_a_dead_operation_is_taken_over_and_audited(
        tmp_path: Path, verify: VerifyRecorder, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    mon = _monitor(tmp_path)
    mon.config.state_dir.mkdir(parents=True, exist_ok=True)
    (mon.config.state_dir / "lock").write_text(json.dumps({
        "pid": 2 ** 22 + 4321, "host": socket.gethostname(), "start_time": "1",
        "command": "backout deploy", "since": "2026-01-01T00:00:00Z"}))
    # An in-process CLI run earlier in the session stops "backout" from propagating.
    monkeypatch.setattr(logging.getLogger("backout"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="backout"):
        mon._rollback("rollback-service", "web", None, "r")
    assert not mon.escalated and mon.platform.running_images() == {"web": OLD}
    [event] = [e for e in mon.store.events() if e["action"] == "lock.takeover"]
    assert event["target"] == "backout deploy"
    assert "took over the lock left by `backout deploy`" in caplog.text
