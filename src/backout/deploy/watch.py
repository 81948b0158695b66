"""The watch period of a guarded deploy: the monitor's loop, for a bounded time,
without its own rollback (the deploy's plan rolls back), stopping at the first RED.

The policy state lives under a key of the deploy's operation, so a resumed deploy
keeps its pending ``for:`` timers and a long-running ``backout monitor`` is neither
inherited from nor disturbed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from backout.config import Config
from backout.environment import Environment
from backout.errors import UnhealthyError
from backout.monitor.run import Monitor
from backout.notify import Notifier
from backout.operations import interrupt
from backout.platforms.base import Platform
from backout.policy.rules import Decision, Level
from backout.state import Store

INCIDENT_FACT = "deploy.op{op}.incident"
RED_ACTIONS_FACT = "deploy.op{op}.red_actions"


class RedDuringWatch(UnhealthyError):
    code = "red"


def watch(env: Environment, config: Config, store: Store, platform: Platform, seconds: float,
          op_id: int, *, on_decision: Callable[[Decision, float], None] | None = None,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] | None = None,
          monitor: Any = None) -> dict[str, Any]:
    """Evaluate every ``[monitor] interval_seconds`` for ``seconds``; raise
    RedDuringWatch at the first RED (recording its incident and the RED rules'
    actions for the rollback steps). ``monitor`` is for tests (anything with step()).
    A first Ctrl-C ends the watch (InterruptedOperation): the deploy then rolls back."""
    intr = interrupt.current()
    sleep = sleep or intr.sleep
    if seconds <= 0:
        return {"watched_s": 0, "evaluations": 0, "level": None}
    notify = config.monitor.notify
    mon = monitor or Monitor(
        env, config, store, platform, config.monitor.effective_rules,
        notifier=Notifier(notify.webhook_url, notify.webhook_format, notify.command),
        auto_rollback=False, window=float(config.monitor.window_seconds),
        state_key=f"deploy.op{op_id}.policy_state",
        # memory and CPU as of each evaluation, the last one's included: the watch
        # has no evaluation time to keep, a leak in its last interval must count
        stats_wait=None)
    interval = float(config.monitor.interval_seconds)
    opened_before = {i["id"] for i in store.open_incidents()}
    start = clock()
    evaluations = 0
    worst = Level.GREEN
    while True:
        intr.check("the watch")
        tick = clock()
        decision = mon.step()
        evaluations += 1
        if on_decision is not None:
            on_decision(decision, tick - start)
        if decision.level == Level.YELLOW:
            worst = Level.YELLOW
        if decision.level == Level.RED:
            red = [f for f in decision.active if f.level == Level.RED]
            why = "; ".join(f"{f.rule}: {f.reason}" for f in red) or "RED"
            new = [i["id"] for i in store.open_incidents() if i["id"] not in opened_before]
            if new:
                store.set_fact(INCIDENT_FACT.format(op=op_id), new[0])
            # A rule may ask for the data to go back too (rollback-with-data).
            store.set_fact(RED_ACTIONS_FACT.format(op=op_id), sorted({f.action for f in red}))
            raise RedDuringWatch(f"RED after {tick - start:.0f}s of the watch: {why}",
                                 fix="the deploy rolls back by itself; see `backout incidents`")
        elapsed = clock() - start
        if elapsed >= seconds:
            return {"watched_s": round(elapsed, 1), "evaluations": evaluations,
                    "level": decision.level.value, "worst": worst.value}
        sleep(max(0.0, min(interval - (clock() - tick), seconds - elapsed)))
        intr.check("the watch")
