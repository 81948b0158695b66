"""Running a plan under the operation guard, from the core (the monitor's automatic
rollback uses it; the CLI adds confirmation and rendering around the same guard)."""

from __future__ import annotations

from backout.adapters.docker import Compose
from backout.config import Config
from backout.environment import Environment
from backout.operations import guard
from backout.operations.executor import Executor, OperationOutcome, StepCallback
from backout.operations.plan import Plan
from backout.state import Store


def run_locked(env: Environment, config: Config, store: Store, compose: Compose, plan: Plan,
               command: str, on_step: StepCallback | None = None) -> OperationOutcome:
    """Take the lock (a takeover is audited), refuse if an interrupted operation waits
    for `resume`, run."""
    services = {"env": env, "config": config, "store": store, "compose": compose}
    executor = Executor(store, services, on_step)
    return guard.run_plan(env, store, config.state_dir, command, executor, plan)
