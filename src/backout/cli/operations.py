"""``backout resume``, ``backout history``, ``backout events``: the journal of
operations and the audit log."""

from __future__ import annotations

import click

from backout.cli.common import (
    Ctx,
    ExitCode,
    check_outcome,
    command,
    deploy_report,
    emit,
    run_plan,
    step_reports,
    table,
)
from backout.operations import summary
from backout.operations.history import history
from backout.operations.resume import resume


@command("resume")
def resume_cmd(ctx: Ctx) -> int:
    """Finish an operation that was interrupted (crash, kill -9, power loss)."""
    done = resume(ctx.env, ctx.config, ctx.store,
                  lambda plan, op_id: run_plan(ctx, plan, op_id=op_id))
    removed = done.removed_partial_sets
    op, plan, outcome = done.operation, done.plan, done.outcome
    if op is None or plan is None or outcome is None:
        emit(ctx.env, "resume", {"resumed": None, "removed_partial_sets": removed},
             "nothing to resume" + (f"; removed partial backup sets left by interrupted "
                                    f"runs: {', '.join(removed)}" if removed else ""))
        return ExitCode.OK
    if removed:
        ctx.env.warn(f"removed partial backup sets left by interrupted runs: {', '.join(removed)}")
    if plan.kind == "deploy":
        return deploy_report(ctx, plan, outcome, None)
    check_outcome(ctx, plan, outcome)
    state = summary.describe(ctx.store, op["id"])
    emit(ctx.env, "resume", {"resumed": op["id"], "kind": op["kind"], "status": outcome.status,
                             "steps": step_reports(outcome), "state": state,
                             "removed_partial_sets": removed},
         [f"resumed operation #{op['id']} ({op['kind']}): {outcome.status}",
          *summary.lines(state)])
    return ExitCode.OK


@command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def history_cmd(ctx: Ctx, limit: int) -> None:
    """Operations with their outcome and duration."""
    ops = history(ctx.store, limit)
    human = table([[str(o["id"]), o["kind"], o["status"], o["created_at"],
                    f"{o['duration_s']:.1f}s" if o["duration_s"] is not None else "-",
                    o["error"] or ""] for o in ops],
                  ["ID", "KIND", "STATUS", "STARTED", "TOOK", "ERROR"]) if ops else ["no operations"]
    emit(ctx.env, "history", {"operations": ops}, human)


@command("events")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def events_cmd(ctx: Ctx, limit: int) -> None:
    """The audit log: who did what, when, and why."""
    events = ctx.store.events(limit)
    human = table([[e["ts"], e["actor"], e["action"], e["target"] or "", e["reason"] or ""]
                   for e in events], ["WHEN", "WHO", "WHAT", "TARGET", "WHY"]) if events else ["no events"]
    emit(ctx.env, "events", {"events": events}, human)


