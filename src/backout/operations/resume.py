"""``backout resume``: find the operation a crash left unfinished and run the rest of
its journaled plan, under the guard (which lets this one command pass while an
operation waits); then remove partial backup sets nothing will continue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backout.config import Config
from backout.environment import Environment
from backout.operations.executor import OperationOutcome, load_plan
from backout.operations.guard import Unfinished, guard
from backout.operations.plan import Plan
from backout.state import OperationRow, Store
from backout.storage import sets

# Runs a journaled plan from where it stopped: (plan, operation id) -> its outcome.
RunPlan = Callable[[Plan, int], OperationOutcome]


@dataclass(frozen=True)
class Resumed:
    operation: OperationRow | None  # None: nothing was unfinished
    plan: Plan | None = None
    outcome: OperationOutcome | None = None
    removed_partial_sets: list[str] = field(default_factory=list)


def resume(env: Environment, config: Config, store: Store, run: RunPlan) -> Resumed:
    """Resume the newest unfinished operation with ``run``; without one, only clean
    up partial sets left by interrupted runs."""
    with guard(env, store, config.state_dir, "resume", unfinished=Unfinished.ALLOW):
        ops = store.unfinished_operations()
        if not ops:
            return Resumed(None, removed_partial_sets=sets.cleanup_partials(config.backup_dir))
        op = ops[-1]
        plan = load_plan(store, op["id"])
        outcome = run(plan, op["id"])
        # What an earlier run could not remove (a crash inside a dump): partial sets
        # no unfinished operation will continue.
        removed = sets.cleanup_partials(config.backup_dir,
                                        keep=sets.set_ids_in_use(store) or None)
    return Resumed(op, plan, outcome, removed)
