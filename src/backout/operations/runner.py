"""Running a plan under the operation lock, from the core (the monitor's automatic
rollback uses it; the CLI adds confirmation and rendering around the same steps)."""

from __future__ import annotations

from backout.config import Config
from backout.environment import Environment
from backout.errors import UsageError
from backout.operations.executor import (
    Executor,
    OperationOutcome,
    RunContext,
    StepCallback,
    unfinished,
)
from backout.operations.plan import Plan
from backout.platforms.base import Platform
from backout.state import OperationLock, Store


def run_locked(env: Environment, config: Config, store: Store, platform: Platform, plan: Plan,
               command: str, on_step: StepCallback | None = None) -> OperationOutcome:
    """Take the lock, refuse if an interrupted operation waits for `resume`, run."""
    with OperationLock(config.state_dir).acquire(command) as lock:
        if lock.took_over is not None:
            env.warn(f"took over the lock left by {lock.took_over.describe()}, which is no "
                     "longer running")
        pending = unfinished(store)
        if pending:
            raise UsageError(f"operation #{pending[-1]['id']} ({pending[-1]['kind']}) was "
                             "interrupted and is unfinished", fix="run `backout resume` first")
        executor = Executor(store, RunContext(env, config, store, platform), on_step)
        return executor.run(plan, executor.start(plan))
