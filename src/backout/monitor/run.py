"""The monitor loop: collect, decide, record, notify, and (if asked) roll back.

Each evaluation collects a Snapshot, applies the policy (pure), persists the
policy state in the store (so a restarted monitor neither forgets a pending
`for:` timer nor fires an incident twice), records incidents and their
timeline, sends notifications (never blocking), and with auto-rollback runs
the rule's rollback exactly once per incident, with a cool-down, then verifies.
If verification fails the incident is escalated and no further automatic
action is taken: a human decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backout.adapters.docker import Compose
from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError, LockedError
from backout.monitor.collect import Collector, ServiceView
from backout.monitor.policy import Decision, Level, PolicyState, Rule, evaluate
from backout.notify import Notifier
from backout.operations.runner import run_locked
from backout.state import Store
from backout.verify import run_verify

STATE_KEY = "monitor.policy_state"
INCIDENT_KEY = "monitor.incidents"  # rule instance -> incident id, for open incidents
LAST_ACTION_KEY = "monitor.last_action_at"


@dataclass
class Monitor:
    env: Environment
    config: Config
    store: Store
    compose: Compose
    rules: Sequence[Rule]
    notifier: Notifier = field(default_factory=Notifier)
    auto_rollback: bool = False
    cooldown: float = 300.0
    window: float = 15.0
    collector: Collector | None = None
    baseline: dict[str, float] = field(default_factory=dict)
    views: dict[str, ServiceView] = field(default_factory=dict)
    escalated: bool = False
    # Where the policy state persists: the monitor's own, or a deploy's watch (which
    # must neither inherit nor disturb a long-running monitor's timers).
    state_key: str = STATE_KEY

    def __post_init__(self) -> None:
        if self.collector is None:
            self.collector = Collector(self.env, self.config, self.compose, window=self.window)
        raw = self.store.fact(self.state_key)
        self.state = PolicyState.from_json(raw) if raw else PolicyState()

    def step(self, t: float | None = None) -> Decision:
        assert self.collector is not None
        snapshot, self.views = self.collector.collect(t)
        decision, self.state = evaluate(self.rules, snapshot, self.state, self.baseline)
        self.store.set_fact(self.state_key, self.state.to_json())
        self.store.set_fact("monitor.level", {"level": decision.level.value, "t": decision.t,
                                              "since": decision.level_since})
        self._record(decision)
        return decision

    # -- incidents, notifications, actions ---------------------------------
    def _record(self, decision: Decision) -> None:
        incidents: dict[str, int] = dict(self.store.fact(INCIDENT_KEY) or {})
        if decision.level != decision.previous_level:
            self._notify({"kind": "level", "level": decision.level.value,
                          "previous": decision.previous_level.value,
                          "summary": f"level {decision.previous_level.value} -> "
                                     f"{decision.level.value}"
                                     + (f": {decision.active[0].reason}" if decision.active else "")})
        for tr in decision.transitions:
            key = f"{tr.rule}|{tr.signal}"
            if tr.kind == "fired" and tr.rule_level in (Level.RED, Level.YELLOW):
                rule = next(r for r in self.rules if r.name == tr.rule)
                iid = self.store.open_incident(rule=tr.rule, level=tr.rule_level.value,
                                               severity=rule.severity, reason=tr.reason,
                                               values={"signal": tr.signal, "value": tr.value,
                                                       "threshold": tr.threshold})
                incidents[key] = iid
                self._notify({"kind": "incident", "incident": iid, "level": tr.rule_level.value,
                              "severity": rule.severity, "summary": tr.reason})
            elif tr.kind == "cleared" and key in incidents:
                iid = incidents.pop(key)
                self.store.incident_event(iid, "resolved", {"reason": tr.reason})
                self._notify({"kind": "resolved", "incident": iid, "level": "GREEN",
                              "summary": f"incident {iid} resolved: {tr.reason}"})
        self.store.set_fact(INCIDENT_KEY, incidents)
        for action in decision.actions:
            key = f"{action.rule}|" + next((tr.signal for tr in decision.transitions
                                           if tr.rule == action.rule and tr.kind == "fired"), "")
            open_id = incidents.get(key)
            if action.action.startswith("rollback") and self.auto_rollback:
                self._rollback(action.action, action.service, open_id, action.reason)
            elif open_id is not None:
                self.store.incident_event(open_id, "action", {"action": action.action,
                                                              "automatic": False})

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
                plan = service_rollback.plan(self.env, self.config, self.store, self.compose,
                                             service, None)
            else:
                target = previous_release(self.store, self.compose)
                plan = emergency.plan(self.env, self.config, self.store, self.compose,
                                      str(target), with_data=action == "rollback-with-data")
            if iid is not None:
                self.store.incident_event(iid, "action", {"rollback": plan.summary,
                                                          "automatic": True, "reason": reason})
            outcome = run_locked(self.env, self.config, self.store, self.compose, plan,
                                 f"monitor auto-rollback ({plan.kind})")
            if outcome.error is not None:
                raise outcome.error
            result = run_verify(self.env, self.config, self.store, self.compose,
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
            on_decision: Callable[[Decision], None] | None = None) -> Decision | None:
        start = time.monotonic()
        decision = None
        while duration is None or time.monotonic() - start < duration:
            tick = time.monotonic()
            decision = self.step()
            if on_decision is not None:
                on_decision(decision)
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
        return decision


def previous_release(store: Store, compose: Compose) -> int:
    """The newest recorded release whose images differ from what runs now."""
    running = {c.service: c.image_id for c in compose.containers() if c.state == "running"}
    for rel in store.releases():
        if any(running.get(svc) != info["image_id"] for svc, info in rel["services"].items()
               if svc in running):
            return int(rel["id"])
    raise BackoutError("no recorded release differs from what runs now: nothing to roll back to")
