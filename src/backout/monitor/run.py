"""The monitor loop: collect, decide, record, notify, and (if asked) roll back.

Each evaluation collects a Snapshot, applies the policy (pure), persists the
policy state in the store (so a restarted monitor neither forgets a pending
`for:` timer nor fires an incident twice), records incidents and their
timeline, captures the release's baseline once it has been healthy for a while
(``backout.policy.baseline``), sends notifications (never blocking), and with
auto-rollback runs the rule's rollback exactly once per incident, with a
cool-down, then verifies. If verification fails the incident is escalated, no
further automatic action is taken and the loop stops: a human decides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError, LockedError
from backout.monitor.collect import Collector, ServiceView
from backout.notify import Notifier
from backout.operations.runner import run_locked
from backout.platforms.base import EngineEvent, Platform
from backout.policy import baseline
from backout.policy.baseline import Baseline
from backout.policy.rules import (
    ActionRequest,
    Decision,
    Level,
    PolicyState,
    Rule,
    Snapshot,
    evaluate,
    parse_signal,
)
from backout.signals.engine import STATS_WAIT, StatsReader
from backout.signals.events import EventWaker
from backout.state import Store
from backout.verify import run_verify

STATE_KEY = "monitor.policy_state"
LEVEL_KEY = "monitor.level"
INCIDENT_KEY = "monitor.incidents"  # rule instance -> incident id, for open incidents
LAST_ACTION_KEY = "monitor.last_action_at"
BASELINES_KEY = "monitor.baselines"  # release key -> captured baseline (JSON)


def load_baselines(store: Store) -> dict[str, Baseline]:
    """The captured baselines in the store (unreadable entries are skipped)."""
    out: dict[str, Baseline] = {}
    for key, data in (store.fact(BASELINES_KEY) or {}).items():
        try:
            out[str(key)] = Baseline.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def baseline_in_use(store: Store, platform: Platform) -> dict[str, Any] | None:
    """What ``backout status`` shows: the baseline relative rules use for what runs now
    (None when nothing runs); asks the engine, not a running monitor."""
    images = platform.running_images()
    if not images:
        return None
    key = baseline.release_key(store.releases(), images)
    return baseline.summary(baseline.select(load_baselines(store), key), key)


@dataclass
class Monitor:
    env: Environment
    config: Config
    store: Store
    platform: Platform
    rules: Sequence[Rule]
    notifier: Notifier = field(default_factory=Notifier)
    auto_rollback: bool = False
    cooldown: float = 300.0
    window: float = 15.0
    collector: Collector | None = None
    # how long an evaluation waits for a fresh stats round (None: always one)
    stats_wait: float | None = STATS_WAIT
    baseline_evaluations: int = baseline.DEFAULT_EVALUATIONS
    views: dict[str, ServiceView] = field(default_factory=dict)
    escalated: bool = False
    # Where the policy state persists: the monitor's own, or a deploy's watch (which
    # must neither inherit nor disturb a long-running monitor's timers).
    state_key: str = STATE_KEY
    release: str | None = None  # baseline.release_key of what runs
    evaluations: int = 0  # by run()
    wake_ups: int = 0  # evaluations of run() started early by an engine event
    # seconds the last evaluation of run() took: collect, decide, record (its rollback,
    # when it started one, included)
    evaluation_s: float | None = None
    woken_by: EngineEvent | None = None  # the event that started the last such one

    def __post_init__(self) -> None:
        if self.collector is None:
            self.collector = Collector(self.env, self.config, self.platform, window=self.window,
                                       state=self.store,
                                       stats=StatsReader(self.platform, self.stats_wait))
        raw = self.store.fact(self.state_key)
        self.state = PolicyState.from_json(raw) if raw else PolicyState()
        self.baselines = load_baselines(self.store)
        self.warmup = baseline.Warmup()
        self._images: dict[str, str] | None = None

    # -- baseline ------------------------------------------------------------
    @property
    def baseline(self) -> Baseline | None:
        """The baseline relative rules use now (this release's, else inherited)."""
        return None if self.release is None else baseline.select(self.baselines, self.release)

    def baseline_summary(self) -> dict[str, Any] | None:
        if self.release is None:
            return None
        own = self.release in self.baselines
        return baseline.summary(self.baseline, self.release,
                                None if own else len(self.warmup.samples),
                                None if own else self.baseline_evaluations)

    def _follow_release(self) -> None:
        assert self.collector is not None
        images = self.collector.images
        if images and images != self._images:
            self._images = dict(images)
            self.release = baseline.release_key(self.store.releases(), images)

    def _capture(self, decision: Decision, snapshot: Snapshot) -> None:
        """Feed the warm-up; store a baseline once the release was healthy long enough."""
        if self.release is None or self.release in self.baselines:
            return
        self.warmup, captured = baseline.observe(
            self.warmup, self.release, baseline.healthy(decision, self.rules), snapshot,
            baseline.watched(self.rules), self.baseline_evaluations)
        if captured is None:
            return
        self.baselines = baseline.keep({**self.baselines, captured.release: captured})
        self.store.set_fact(BASELINES_KEY, {k: b.to_json() for k, b in self.baselines.items()})
        self.store.record_event("monitor.baseline", target=baseline.describe_release(self.release),
                                reason=f"{captured.evaluations} healthy evaluations in a row",
                                detail={"values": dict(captured.values)})

    # -- one evaluation ------------------------------------------------------
    def step(self, t: float | None = None) -> Decision:
        """Collect, decide, then record everything the decision changes in one store
        transaction (policy state, level, baseline, incidents), so a monitor killed at
        any moment restarts from a consistent state: an incident is opened exactly when
        the state saying its rule fired is saved. Notifications and rollbacks follow."""
        assert self.collector is not None
        snapshot, self.views = self.collector.collect(t)
        self._follow_release()
        current = self.baseline
        decision, state = evaluate(self.rules, snapshot, self.state,
                                   None if current is None else current.values)
        with self.store.transaction():
            self.store.set_fact(self.state_key, state.to_json())
            self.store.set_fact(LEVEL_KEY, {"level": decision.level.value, "t": decision.t,
                                            "since": decision.level_since})
            self._capture(decision, snapshot)
            notices, rollbacks = self._book(decision)
        self.state = state
        for event in notices:
            self._notify(event)
        for action, open_id in rollbacks:
            self._rollback(action.action, action.service, open_id, action.reason)
        return decision

    # -- incidents, notifications, actions ---------------------------------
    def _book(self, decision: Decision) -> tuple[list[dict[str, Any]],
                                                 list[tuple[ActionRequest, int | None]]]:
        """Open and resolve incidents (store writes only); returns the notifications to
        send and the rollbacks to run once the writes are committed."""
        incidents: dict[str, int] = dict(self.store.fact(INCIDENT_KEY) or {})
        notices: list[dict[str, Any]] = []
        if decision.level != decision.previous_level:
            notices.append({"kind": "level", "level": decision.level.value,
                            "previous": decision.previous_level.value,
                            "summary": f"level {decision.previous_level.value} -> "
                                       f"{decision.level.value}"
                                       + (f": {decision.active[0].reason}" if decision.active
                                          else "")})
        for tr in decision.transitions:
            key = f"{tr.rule}|{tr.signal}"
            if tr.kind == "fired" and tr.rule_level in (Level.RED, Level.YELLOW):
                rule = next(r for r in self.rules if r.name == tr.rule)
                iid = self.store.open_incident(rule=tr.rule, level=tr.rule_level.value,
                                               severity=rule.severity, reason=tr.reason,
                                               values={"signal": tr.signal, "value": tr.value,
                                                       "threshold": tr.threshold})
                incidents[key] = iid
                notices.append({"kind": "incident", "incident": iid,
                                "level": tr.rule_level.value, "severity": rule.severity,
                                "summary": tr.reason})
            elif tr.kind == "cleared" and key in incidents:
                iid = incidents.pop(key)
                self.store.incident_event(iid, "resolved", {"reason": tr.reason})
                notices.append({"kind": "resolved", "incident": iid, "level": "GREEN",
                                "summary": f"incident {iid} resolved: {tr.reason}"})
        self.store.set_fact(INCIDENT_KEY, incidents)
        rollbacks: list[tuple[ActionRequest, int | None]] = []
        for action in decision.actions:
            # One rule can fire for several services at once: the action belongs to the
            # incident of its own service's instance.
            key = f"{action.rule}|" + next((tr.signal for tr in decision.transitions
                                           if tr.rule == action.rule and tr.kind == "fired"
                                           and parse_signal(tr.signal)[1] == action.service), "")
            open_id = incidents.get(key)
            if action.action.startswith("rollback") and self.auto_rollback:
                rollbacks.append((action, open_id))
            elif open_id is not None:
                self.store.incident_event(open_id, "action", {"action": action.action,
                                                              "automatic": False})
        return notices, rollbacks

    def _notify(self, event: dict[str, Any]) -> None:
        problems = self.notifier.send(self.env, event)
        iid = event.get("incident")
        if iid is not None:
            self.store.incident_event(int(iid), "notify_failed" if problems else "notified",
                                      {"problems": problems, "kind": event["kind"]})

    def _rollback(self, action: str, service: str | None, iid: int | None, reason: str) -> None:
        if self.escalated:
            return
        last = self.store.fact(LAST_ACTION_KEY)
        now = time.time()
        if last is not None and now - float(last) < self.cooldown:
            if iid is not None:
                self.store.incident_event(iid, "action", {"skipped": "cool-down",
                                                          "cooldown_s": self.cooldown})
            return
        self.store.set_fact(LAST_ACTION_KEY, now)
        from backout.rollback import emergency
        from backout.rollback import service as service_rollback

        try:
            if action == "rollback-service" and service:
                plan = service_rollback.plan(self.store, self.platform, service, None,
                                             config=self.config)
            else:
                target = previous_release(self.store, self.platform)
                plan = emergency.plan(self.env, self.config, self.store, self.platform,
                                      str(target), with_data=action == "rollback-with-data")
            if iid is not None:
                self.store.incident_event(iid, "action", {"rollback": plan.summary,
                                                          "automatic": True, "reason": reason})
            outcome = run_locked(self.env, self.config, self.store, self.platform, plan,
                                 f"monitor auto-rollback ({plan.kind})")
            if outcome.error is not None:
                raise outcome.error
            result = run_verify(self.env, self.config, self.store, self.platform,
                                settle=min(self.config.verify.settle_seconds, 10),
                                since=datetime.now(UTC))
            if not result.ok:
                raise BackoutError("verification failed after the automatic rollback: "
                                   + ", ".join(c.name for c in result.failed))
            if iid is not None:
                self.store.incident_event(iid, "verified", {"checks": len(result.checks)})
            self._notify({"kind": "rolled_back", "incident": iid, "level": "RED",
                          "summary": f"automatic rollback done and verified: {plan.summary}"})
        except LockedError as exc:
            # Another operation (a guarded deploy watching its release, an operator's
            # rollback) is changing the stack: it owns the response, so this monitor
            # neither acts nor escalates; the next RED after it finishes may act.
            self.store.set_fact(LAST_ACTION_KEY, last)
            if iid is not None:
                self.store.incident_event(iid, "action", {"skipped": "locked",
                                                          "holder": exc.one_line()})
        except BackoutError as exc:
            self.escalated = True
            if iid is not None:
                self.store.incident_event(iid, "escalated", {"error": exc.one_line()})
            self._notify({"kind": "escalated", "incident": iid, "level": "RED",
                          "summary": f"automatic rollback failed, a human is needed: "
                                     f"{exc.one_line()}"})

    def run(self, interval: float, *, duration: float | None = None,
            on_decision: Callable[[Decision], None] | None = None,
            stop: threading.Event | None = None, events: bool = True,
            clock: Callable[[], float] = time.monotonic) -> Decision | None:
        """Evaluate every ``interval`` seconds until ``duration`` is over, ``stop`` is set
        (checked between evaluations, never in the middle of one) or an automatic
        rollback escalated (a human decides; nothing more is done automatically).

        With ``events``, the engine's event stream (a container's health status, exit,
        OOM kill, restart) ends the wait at once: the next evaluation starts as soon as
        Docker reports the change, and the interval counts from it. Events during an
        evaluation are coalesced into one more evaluation right after it."""
        stop = stop or threading.Event()
        if isinstance(self.collector, Collector):
            # paced evaluations are an interval apart; ones the events start early are
            # not another interval of a failing probe
            self.collector.probes.spacing = interval / 2
        waker = EventWaker(self.env, self.platform) if events else None
        wake = waker.wake if waker is not None and waker.start() else None
        start = clock()
        decision = None
        try:
            while not stop.is_set() and (duration is None or clock() - start < duration):
                tick = clock()
                if wake is not None:
                    wake.clear()
                decision = self.step()
                self.evaluations += 1  # counted before on_decision sees it
                self.evaluation_s = round(clock() - tick, 4)
                if on_decision is not None:
                    on_decision(decision)
                if self.escalated:
                    break
                pause = interval - (clock() - tick)
                if duration is not None:
                    pause = min(pause, duration - (clock() - start))
                if wait(pause, stop, wake, clock):
                    self.wake_ups += 1
                    self.woken_by = waker.last if waker is not None else None
        finally:
            if waker is not None:
                waker.stop()
        return decision


STOP_CHECK = 0.5  # seconds: how soon a wait on engine events notices ``stop``


def wait(seconds: float, stop: threading.Event, wake: threading.Event | None,
         clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait ``seconds``, less when ``stop`` or ``wake`` is set; True when woken."""
    if wake is None:
        stop.wait(max(0.0, seconds))
        return False
    deadline = clock() + seconds
    while not stop.is_set():
        left = deadline - clock()
        if left <= 0:
            return False
        if wake.wait(min(left, STOP_CHECK)):
            return True
    return False


def previous_release(store: Store, platform: Platform) -> int:
    """The newest recorded release whose images differ from what runs now."""
    running = platform.running_images()
    for rel in store.releases():
        if any(running.get(svc) != info["image_id"] for svc, info in rel["services"].items()
               if svc in running):
            return int(rel["id"])
    raise BackoutError("no recorded release differs from what runs now: nothing to roll back to")
