"""Running a plan under the operation guard, from the core (the monitor's automatic
rollback uses it; the CLI adds confirmation and rendering around the same guard)."""

from __future__ import annotations

from backout.config import Config
from backout.environment import Environment
from backout.operations import guard
from backout.operations.executor import Executor, OperationOutcome, RunContext, StepCallback
from backout.operations.plan import Plan
from backout.platforms.base import Platform
from backout.state import Store


def run_locked(env: Environment, config: Config, store: Store, platform: Platform, plan: Plan,
               command: str, on_step: StepCallback | None = None) -> OperationOutcome:
    """Take the lock (a takeover is audited), refuse if an interrupted operation waits
    for `resume`, run."""
    executor = Executor(store, RunContext(env, config, store, platform), on_step)
    return guard.run_plan(env, store, config.state_dir, command, executor, plan)
