"""The journaling executor.

Every step is written to the store as ``running`` before it starts and ``done``
(with its result) after it finishes, each in its own committed transaction. A
crash between the two leaves a ``running`` step: resume runs it again, so every
action must be idempotent (safe to repeat after a partial run). Results of done
steps are kept and handed to later steps under their step keys, so a resumed run
sees what an uninterrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backout import faults
from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError, InterruptedOperation, NotFoundError, UsageError
from backout.operations import interrupt
from backout.operations.plan import Plan, Step
from backout.platforms.base import Platform
from backout.policy.rules import Decision
from backout.state.store import Store

# An action gets the run context, the step's params and the results of the
# steps done so far (by step key); it returns a JSON-serialisable result.
Action = Callable[["RunContext", dict[str, Any], dict[str, Any]], Any]
_ACTIONS: dict[str, Action] = {}


# Modules with an ``ACTIONS`` table (action name -> function). A resumed operation may
# be of any kind: an action is looked up in them in this order, each loaded when the
# ones before it do not have it (a service rollback never imports the backups' and the
# deploy's trees, 0.05 s of its start). Names are unique across them (tested). Plain
# tables rather than decorators: mutation testing (mutmut) skips decorated functions.
ACTION_MODULES = ("backout.switch", "backout.rollback.service", "backout.rollback.emergency",
                  "backout.rollback.db", "backout.backup.operation", "backout.backup.offsite",
                  "backout.deploy.operation")


def _load(module: str) -> None:
    import importlib

    table: dict[str, Action] = importlib.import_module(module).ACTIONS
    for action, fn in table.items():
        # an entry already there stays: a test's stand-in, registered on purpose; one
        # a test took away comes back
        _ACTIONS.setdefault(action, fn)


def load_actions() -> None:
    """Every table loaded."""
    for module in ACTION_MODULES:
        _load(module)


def find_action(name: str) -> Action | None:
    """The action a step names, the tables loaded in order until one has it; None
    when none does."""
    for module in ACTION_MODULES:
        if name in _ACTIONS:
            break
        _load(module)
    return _ACTIONS.get(name)


def action(name: str) -> Action:
    """The action a step names (KeyError when no table has it)."""
    found = find_action(name)
    if found is None:
        raise KeyError(name)
    return found


def register_action(name: str) -> Callable[[Action], Action]:
    """Register one action outside the tables (tests' stand-ins and throwaway plans)."""
    def decorate(fn: Action) -> Action:
        _ACTIONS[name] = fn
        return fn

    return decorate


def call_action(name: str, ctx: RunContext, params: dict[str, Any],
                results: dict[str, Any]) -> Any:
    """Run another registered action inside a step (a guarded deploy's rollback steps
    reuse the rollback actions this way)."""
    return action(name)(ctx, params, results)


@dataclass(frozen=True)
class RunContext:
    """What actions get besides their params: made by the caller, completed with the
    operation's id by the executor."""

    env: Environment
    config: Config
    store: Store
    platform: Platform
    # Told about each decision of a deploy's watch, with the seconds watched so far
    # (the CLI shows them); None: nobody is watching.
    on_decision: Callable[[Decision, float], None] | None = None
    operation_id: int = 0  # set by the executor for the operation it runs


@dataclass(frozen=True)
class StepReport:
    """What became of one step, for the operator: ``done``, ``skipped`` (with why:
    the action decided there was nothing to do, or the executor did not run it) or
    ``failed`` (with the error). A step that did nothing is never reported done."""

    name: str
    status: str  # done | skipped | failed | deferred (left for `backout resume`)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "reason": self.reason}


# Told about each step as it starts and ends: (step, running|done|skipped|failed|deferred,
# the skip reason or the error).
StepCallback = Callable[[Step, str, "str | None"], None]

NOT_NEEDED = "runs only if an earlier step fails"
ABANDONING = "the operation is abandoned: only its cleanup steps run"


def skip_reason(result: Any) -> str | None:
    """An action says it decided to do nothing by returning ``{"skipped": why}``."""
    if isinstance(result, dict) and isinstance(result.get("skipped"), str):
        return str(result["skipped"])
    return None


@dataclass(frozen=True)
class OperationOutcome:
    operation_id: int
    # succeeded | failed | interrupted (a signal cut it short; the cleanup steps ran)
    # | unfinished (a cleanup step waits for `backout resume`)
    status: str
    results: dict[str, Any]
    error: BackoutError | None = None
    failed_step: str | None = None
    steps: tuple[StepReport, ...] = ()
    signal: str | None = None  # SIGINT/SIGTERM received while it ran
    deferred_step: str | None = None  # the cleanup step left for resume


class Executor:
    def __init__(self, store: Store, context: RunContext,
                 on_step: StepCallback | None = None) -> None:
        self.store = store
        self.context = context
        self.on_step: StepCallback = on_step or (lambda _s, _st, _d: None)

    def start(self, plan: Plan) -> int:
        for step in plan.steps:
            if find_action(step.action) is None:
                raise RuntimeError(f"plan names unknown action {step.action!r}")
        keys = [step.key for step in plan.steps]
        if len(set(keys)) != len(keys):
            raise RuntimeError(f"plan has a step key twice: {sorted(keys)}")
        op_id = self.store.create_operation(plan.kind, plan.params, plan.to_json(),
                                            [(s.key, s.name, s.reason) for s in plan.steps])
        self.store.record_event("operation.start", target=f"{plan.kind} #{op_id}",
                                reason=plan.summary)
        return op_id

    def run(self, plan: Plan, op_id: int, *, only_always: bool = False) -> OperationOutcome:
        """Run the steps not journaled as done. ``only_always`` runs just the steps
        that must run in every case (used to abandon an interrupted operation).

        A first SIGINT/SIGTERM (backout.operations.interrupt) skips the remaining
        normal steps as a failure would, so the always and on-failure steps still run.
        """
        # A journal from before step keys: its steps get the keys its plan reads with.
        self.store.fill_step_keys(op_id, [s.key for s in plan.steps])
        rows = self.store.operation_steps(op_id)
        status = {r["seq"]: r["status"] for r in rows}
        results: dict[str, Any] = {}
        error: BackoutError | None = None
        failed_step: str | None = None
        for r in rows:
            if r["status"] == "done" and r["detail"] is not None:
                results[plan.steps[r["seq"]].key] = r["detail"]
            # A step that failed before an interruption stays failed: the resumed run
            # finishes the always-steps (and the on-failure ones) as the first would have.
            elif r["status"] == "failed" and error is None:
                detail = r["detail"] or {}
                failed_step = plan.steps[r["seq"]].name
                error = BackoutError(f"{failed_step}: {detail.get('error', 'failed')}")
        ctx = dataclasses.replace(self.context, operation_id=op_id)
        intr = interrupt.current()
        interrupted = False
        deferred: str | None = None
        unexpected: Exception | None = None
        reports: list[StepReport] = []

        def report(step: Step, state: str, detail: str | None) -> None:
            reports.append(StepReport(step.name, state, detail))
            self.on_step(step, state, detail)

        for seq, step in enumerate(plan.steps):
            if status.get(seq) == "done":
                reason = skip_reason(results.get(step.key))
                reports.append(StepReport(step.name, "skipped" if reason else "done",
                                          reason or "in an earlier run"))
                continue
            if status.get(seq) == "failed":
                reports.append(StepReport(step.name, "failed", "in an earlier run"))
                continue
            cleanup = step.always or step.on_failure
            if intr.requested and error is None and not only_always and not cleanup:
                error = InterruptedOperation(f"interrupted by {intr.signal} before step "
                                             f"{step.name!r}")
                failed_step, interrupted = step.name, True
            why_not = (NOT_NEEDED if step.on_failure and error is None and not only_always else
                       ABANDONING if only_always and not cleanup else
                       (f"interrupted by {intr.signal}" if interrupted else
                        f"an earlier step failed ({failed_step})")
                       if error is not None and not cleanup else None)
            if why_not is not None:
                self.store.mark_step(op_id, seq, "skipped", None)
                report(step, "skipped", why_not)
                continue
            self.store.mark_step_started(op_id, seq)
            self.on_step(step, "running", None)
            intr.enter((op_id, plan.kind), step.name,
                       abortable=error is None and not only_always and not cleanup)
            faults.hit(f"step-{seq}-started")
            try:
                result = action(step.action)(ctx, step.params, results)
            except BackoutError as exc:
                if exc.retry_on_resume and cleanup:
                    # The cleanup cannot run now (the engine does not answer): it and
                    # every later step stay pending, for `backout resume`.
                    self.store.mark_step(op_id, seq, "pending", {"deferred": exc.one_line()})
                    report(step, "deferred", f"left for `backout resume`: {exc.one_line()}")
                    deferred = step.name
                    error = error or exc
                    failed_step = failed_step or step.name
                    break
                self.store.mark_step(op_id, seq, "failed", {"error": exc.one_line()})
                report(step, "failed", exc.one_line())
                if error is None:
                    error, failed_step = exc, step.name
                    interrupted = isinstance(exc, InterruptedOperation)
                continue
            except Exception as exc:  # a bug: still run the always-steps, then re-raise it
                text = f"internal error: {type(exc).__name__}: {exc}"
                self.store.mark_step(op_id, seq, "failed", {"error": text})
                report(step, "failed", text)
                if error is None:
                    error, failed_step = BackoutError(f"{step.name}: {text}"), step.name
                unexpected = unexpected or exc
                continue
            finally:
                intr.leave()
            results[step.key] = result
            # Journaled as done (the step ran and decided); reported as what it did.
            self.store.mark_step(op_id, seq, "done", result)
            reason = skip_reason(result)
            report(step, "skipped" if reason else "done", reason)
            faults.hit(f"step-{seq}-done")
        if deferred is not None:
            self.store.record_event("operation.deferred", target=f"{plan.kind} #{op_id}",
                                    reason=error.one_line() if error else None,
                                    detail={"step": deferred})
            return OperationOutcome(op_id, "unfinished", results, error, failed_step,
                                    tuple(reports), intr.signal, deferred)
        final = "interrupted" if interrupted else "failed" if error else "succeeded"
        self.store.finish_operation(op_id, final, error.one_line() if error else None)
        self.store.record_event(f"operation.{final}", target=f"{plan.kind} #{op_id}",
                                reason=error.one_line() if error else None)
        if unexpected is not None:
            raise unexpected  # the operation is closed as failed; the CLI reports the bug (70)
        return OperationOutcome(op_id, final, results, error, failed_step, tuple(reports),
                                intr.signal)


def load_plan(store: Store, op_id: int) -> Plan:
    op = store.operation(op_id)
    if op is None:
        raise NotFoundError(f"no operation {op_id}", fix="list them with `backout history`")
    if op["status"] != "running":
        raise UsageError(f"operation {op_id} is {op['status']}, nothing to resume")
    return Plan.from_json(op["plan"])

