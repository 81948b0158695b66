"""The one guard around everything that changes the stack or its data.

Every mutating command, a guarded deploy and the monitor's automatic rollback go
through it, so they cannot drift apart:

1. take the operation lock (two operations never run at once); taking over the
   lock of a holder that died is warned about and recorded in the audit log;
2. decide what to do about an operation a crash left unfinished
   (``Unfinished``): refuse until ``backout resume`` ran (the default), let it
   be (``resume`` itself, and commands that only keep it safe), or, for a new
   backup or checkpoint, abandon interrupted backups: run their cleanup steps
   (restart the writers), mark them abandoned, and refuse anything else;
3. run the plan (``run_plan``) or whatever the caller does under the lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from backout import faults
from backout.environment import Environment
from backout.errors import UsageError
from backout.operations.executor import Executor, OperationOutcome, load_plan
from backout.operations.plan import Plan
from backout.state import OperationLock, OperationRow, Store

# Kinds a new backup supersedes after an interruption (their partial set is
# removed by the new plan's cleanup step).
ABANDONABLE = ("backup", "checkpoint")


class Unfinished(Enum):
    """What a command does when an interrupted operation waits for ``resume``."""

    REFUSE = "refuse"
    ALLOW = "allow"  # resume; prune and release record, which keep what it uses
    ABANDON_BACKUPS = "abandon-backups"  # backup/checkpoint: see the module docstring


def refusal(op: OperationRow) -> UsageError:
    """The error of a command refused because ``op`` waits for ``backout resume``."""
    return UsageError(f"operation #{op['id']} ({op['kind']}) was interrupted and is unfinished",
                      fix="run `backout resume` first")


@contextmanager
def guard(env: Environment, store: Store, state_dir: Path, command: str, *,
          unfinished: Unfinished = Unfinished.REFUSE,
          abandon_with: Executor | None = None) -> Iterator[OperationLock]:
    """Hold the operation lock for ``command`` while the block runs; see the module
    docstring. ``abandon_with`` runs the cleanup steps of abandoned backups."""
    with OperationLock(state_dir).acquire(command) as lock:
        if lock.took_over is not None:
            prev = lock.took_over
            env.warn(f"took over the lock left by {prev.describe()}, which is no longer running")
            store.record_event("lock.takeover", target=prev.command,
                               reason="previous holder died without releasing",
                               detail={"pid": prev.pid, "host": prev.host, "since": prev.since})
        faults.hit("lock-acquired")
        if unfinished is Unfinished.REFUSE:
            pending = store.unfinished_operations()
            if pending:
                raise refusal(pending[-1])
        elif unfinished is Unfinished.ABANDON_BACKUPS:
            _abandon_interrupted_backups(env, store, abandon_with)
        yield lock


def _abandon_interrupted_backups(env: Environment, store: Store,
                                 executor: Executor | None) -> None:
    """A new backup supersedes an interrupted one: finish its always-steps (restart
    writers), mark it abandoned; its partial set is cleaned by the new plan."""
    for op in store.unfinished_operations():
        if op["kind"] not in ABANDONABLE:
            raise refusal(op)
        plan = load_plan(store, op["id"])
        if any(s.always for s in plan.steps):
            if executor is None:
                raise RuntimeError("abandoning an interrupted backup needs an executor")
            executor.run(plan, op["id"], only_always=True)
        store.abandon_operation(op["id"], "superseded by a new backup after an interruption")
        env.warn(f"operation #{op['id']} ({op['kind']}) had been interrupted; abandoned it")


def run_plan(env: Environment, store: Store, state_dir: Path, command: str, executor: Executor,
             plan: Plan) -> OperationOutcome:
    """Under the guard (refusing while an interrupted operation waits), start and run
    ``plan`` (the monitor's automatic rollback)."""
    with guard(env, store, state_dir, command):
        return executor.run(plan, executor.start(plan))
