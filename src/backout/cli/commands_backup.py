"""``backout checkpoint``, ``backout backup``, ``backout backups ...``, ``resume``, ``history``."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from backout.backup.operation import PUBLISH, RECORD_CHECKPOINT, plan_backup
from backout.backup.verify import verify_set
from backout.cli.main import Ctx, cli, command, complete
from backout.cli.output import emit, human_size, table
from backout.errors import BackoutError, ExitCode, InterruptedOperation
from backout.operations import interrupt, summary
from backout.operations.executor import Executor, load_plan
from backout.operations.guard import Unfinished
from backout.operations.plan import Plan, Step
from backout.policy.rules import Decision
from backout.state import Store
from backout.storage import sets


def step_line(step: Step, status: str, detail: str | None, *, tty: bool) -> str | None:
    """One line per step outcome (and, on a terminal, one as it starts). A skipped
    step says so and why: "restore redis: ok" for a restore that did not happen
    would make an operator believe the data was rolled back."""
    if status == "running":
        return f"  {step.name} …\n" if tty else None  # a log file: one line per outcome
    mark = {"done": "ok", "failed": "FAILED"}.get(status, status)
    return f"  {step.name}: {mark}" + (f" ({detail})" if detail and status != "done" else "") \
        + "\n"


def step_reports(outcome: Any) -> list[dict[str, Any]]:
    """The ``steps`` key of a plan's JSON result: every step with what became of it."""
    return [r.to_json() for r in outcome.steps]


def run_plan(ctx: Ctx, plan: Plan, *, op_id: int | None = None,
             on_decision: Callable[[Decision, float], None] | None = None) -> Any:
    tty = ctx.env.stderr.isatty()

    def on_step(step: Step, status: str, detail: str | None) -> None:
        line = None if ctx.env.json else step_line(step, status, detail, tty=tty)
        if line is not None:
            ctx.env.stderr.write(line)
            ctx.env.stderr.flush()

    def notify(text: str) -> None:
        # From a signal handler: straight to the descriptor, not through a buffered
        # stream the handler may have interrupted.
        os.write(ctx.env.stderr.fileno() if _has_fileno(ctx.env.stderr) else 2,
                 f"\nbackout: {text}\n".encode())

    executor = Executor(ctx.store, ctx.run_context(on_decision), on_step)
    with interrupt.handling(notify):
        if op_id is None:
            op_id = executor.start(plan)
        return executor.run(plan, op_id)


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def set_ids_in_use(store: Store) -> set[str]:
    """Sets the unfinished operations will still write (their partials stay)."""
    return sets.referenced_set_ids(op["plan"] for op in store.unfinished_operations())


def check_outcome(ctx: Ctx, plan: Plan, outcome: Any, also: str | None = None) -> None:
    """Raise the error an unsuccessful operation ends with, naming the state it left
    (each database, the writers) and the next command, as `backout status` does.
    ``also``: more of the state, in words (a deploy's outcome)."""
    if outcome.status == "succeeded":
        if outcome.signal:
            ctx.env.warn(f"{outcome.signal} arrived after the last change; the operation "
                         "completed")
        return
    state = summary.describe(ctx.store, outcome.operation_id)
    where = f" at step {outcome.failed_step!r}" if outcome.failed_step else ""
    told = "; ".join(t for t in (also, summary.one_line(state)) if t)
    if outcome.status == "interrupted":
        raise InterruptedOperation(
            f"{plan.summary}: interrupted by {outcome.signal or 'a signal'}{where} "
            f"(operation #{outcome.operation_id})" + (f"; {told}" if told else ""),
            fix=(f"nothing to resume; to try again: `{state['next']}`" if state["next"]
                 else "nothing to resume"))
    error = outcome.error or BackoutError(f"{plan.summary} failed")
    if outcome.status == "unfinished":
        error.message = (f"{plan.summary}: left unfinished{where} (operation "
                         f"#{outcome.operation_id}): {error.message}"
                         + (f"; {told}" if told else ""))
        error.fix = f"{error.fix + '; then ' if error.fix else ''}run `backout resume`"
        raise error
    # One document on stdout: the error's (see main._fail); the journal has the rest.
    ctx.env.warn(f"operation #{outcome.operation_id} failed{where}"
                 + (f": {told}" if told else "") + "; see `backout history`")
    raise error


def _backup(ctx: Ctx, which: list[str], quiesce: bool, checkpoint: bool, label: str | None,
            dry_run: bool) -> int:
    plan = plan_backup(ctx.config, which=which, quiesce=quiesce, checkpoint=checkpoint,
                       label=label)
    name = "checkpoint" if checkpoint else "backup"
    if dry_run:
        emit(ctx.env, name, {"dry_run": True, "plan": plan.to_json()}, plan.render())
        return ExitCode.OK
    # A new backup supersedes an interrupted one (operations.guard).
    cleanup = Executor(ctx.store, ctx.run_context())
    with ctx.mutating(name, Unfinished.ABANDON_BACKUPS, abandon_with=cleanup):
        outcome = run_plan(ctx, plan)
    data: dict[str, Any] = {"operation_id": outcome.operation_id, "status": outcome.status,
                            "set_id": plan.params["set_id"], "steps": step_reports(outcome)}
    check_outcome(ctx, plan, outcome)
    cp = outcome.results.get(RECORD_CHECKPOINT)
    if cp:
        data.update(checkpoint_id=cp["checkpoint_id"], release_id=cp["release_id"])
    pub = outcome.results[PUBLISH]
    human = [f"{name} complete: backup set {pub['set_id']}"
             + (f", checkpoint {cp['checkpoint_id']} (release {cp['release_id']})" if cp else ""),
             f"  at {pub['path']}"]
    emit(ctx.env, name, data, human)
    return ExitCode.OK


@command(cli, "checkpoint")
@click.option("--label", help="A note kept with the checkpoint (e.g. 'before migration 42').")
@click.option("--quiesce", is_flag=True,
              help="Stop the app services that write while dumping, so all databases share one "
                   "point in time; they are started again even if the backup fails.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
def checkpoint_cmd(ctx: Ctx, label: str | None, quiesce: bool, dry_run: bool) -> int:
    """Record the current release and back up every configured database (and volume),
    as one record."""
    return _backup(ctx, [*ctx.config.databases, *ctx.config.volumes], quiesce, True, label,
                   dry_run)


@command(cli, "backup")
@click.argument("which", default="all", shell_complete=complete("backup-name"))
@click.option("--label", help="A note kept in the manifest.")
@click.option("--quiesce", is_flag=True, help="Stop writers while dumping (see checkpoint).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
def backup_cmd(ctx: Ctx, which: str, label: str | None, quiesce: bool, dry_run: bool) -> int:
    """Back up one database or volume (by its name in backout.toml), or `all`."""
    names = [*ctx.config.databases, *ctx.config.volumes] if which == "all" else [which]
    return _backup(ctx, names, quiesce, False, label, dry_run)


@cli.group("backups")
def backups_group() -> None:
    """List, verify and prune backup sets."""


@command(backups_group, "list")
@click.option("--all", "show_all", is_flag=True, help="Also list unusable (incomplete) sets.")
def backups_list(ctx: Ctx, show_all: bool) -> None:
    """Backup sets, newest first. Usable: a valid manifest, every artifact of the
    recorded size, and no failed verification. VERIFIED: the last full check (every
    byte read: sha256, format, counts) and when."""
    infos = sets.list_sets(ctx.config.backup_dir)
    checks = ctx.store.last_verifications()
    rows = []
    for info in infos:
        m = info.manifest or {}
        last = checks.get(info.id)
        usable, problem = info.usable, info.problem
        if usable and last is not None and not last["ok"]:
            usable, problem = False, f"failed verification at {last['verified_at']}: {last['detail']}"
        if not usable and not show_all:
            continue
        size = sum(a["bytes"] for a in (m.get("artifacts") or {}).values())
        rows.append({"id": info.id, "usable": usable, "problem": problem,
                     "kind": m.get("kind"), "label": m.get("label"),
                     "completed_at": m.get("completed_at"), "databases": sorted(m.get("databases") or {}),
                     "volumes": sorted(m.get("volumes") or {}), "bytes": size,
                     "git_commit": m.get("git_commit"), "verified": last})
    human = table([[r["id"], r["kind"] or "-",
                    ",".join([*r["databases"], *(f"volume:{v}" for v in r["volumes"])]) or "-",
                    human_size(r["bytes"]), r["label"] or "",
                    _verified(r["verified"]),
                    "usable" if r["usable"] else f"UNUSABLE: {r['problem']}"] for r in rows],
                  ["ID", "KIND", "DATABASES", "SIZE", "LABEL", "VERIFIED", "STATE"]) \
        if rows else ["no backup sets"]
    emit(ctx.env, "backups list", {"backups": rows}, human)


def _verified(last: dict[str, Any] | None) -> str:
    if last is None:
        return "never (sizes only)"
    return f"{'ok' if last['ok'] else 'FAILED'} {last['verified_at'][:16]}"


@command(backups_group, "verify")
@click.argument("set_id", shell_complete=complete("backup"))
@click.option("--restore-test", is_flag=True,
              help="Also restore into throwaway containers of the same images and compare "
                   "counts with the manifest.")
def backups_verify(ctx: Ctx, set_id: str, restore_test: bool) -> int:
    """Re-read every artifact: checksum, decompression, format and counts."""
    info = sets.get_set(ctx.config.backup_dir, set_id)
    report = verify_set(ctx.env, info)
    ctx.store.record_verification(set_id, ok=report.ok, kind="checksum",
                                  detail=None if report.ok else "; ".join(
                                      p for p in [report.problem, *(a.problem for a in
                                                                    report.artifacts)] if p))
    human = [f"backup {report.set_id}: {'ok' if report.ok else 'FAILED'}"]
    if report.problem:
        human.append(f"  {report.problem}")
    human += [f"  {a.name}: {'ok' if a.ok else a.problem}" for a in report.artifacts]
    data: dict[str, Any] = {"verify": report.to_json()}
    ok = report.ok
    if restore_test and report.ok and info.manifest is not None:
        from backout.backup.restore_test import restore_test as run_restore_test

        results = run_restore_test(ctx.env, ctx.config, ctx.platform, info.path, info.manifest)
        data["restore_test"] = results
        for name, res in results.items():
            ok = ok and bool(res["ok"])
            detail = res.get("error") or ("counts match the manifest" if res["ok"] else
                                          f"counts differ: expected {res['expected']}, "
                                          f"restored {res['restored']}")
            human.append(f"  restore test {name}: {'ok' if res['ok'] else 'FAILED'} ({detail})")
    data["verify"]["ok"] = ok
    if restore_test and "restore_test" in data:
        ctx.store.record_verification(set_id, ok=ok, kind="restore-test",
                                      detail=None if ok else "restore test failed")
    emit(ctx.env, "backups verify", data, human)
    return ExitCode.OK if ok else ExitCode.VERIFICATION_FAILED


@command(cli, "resume")
def resume_cmd(ctx: Ctx) -> int:
    """Finish an operation that was interrupted (crash, kill -9, power loss)."""
    with ctx.mutating("resume", Unfinished.ALLOW):
        ops = ctx.store.unfinished_operations()
        if not ops:
            removed = sets.cleanup_partials(ctx.config.backup_dir)
            emit(ctx.env, "resume", {"resumed": None, "removed_partial_sets": removed},
                 "nothing to resume" + (f"; removed partial backup sets left by interrupted "
                                        f"runs: {', '.join(removed)}" if removed else ""))
            return ExitCode.OK
        op = ops[-1]
        plan = load_plan(ctx.store, op["id"])
        outcome = run_plan(ctx, plan, op_id=op["id"])
        # What an earlier run could not remove (a crash inside a dump): partial sets
        # no unfinished operation will continue.
        removed = sets.cleanup_partials(ctx.config.backup_dir,
                                        keep=set_ids_in_use(ctx.store) or None)
    if removed:
        ctx.env.warn(f"removed partial backup sets left by interrupted runs: {', '.join(removed)}")
    if plan.kind == "deploy":
        from backout.cli.commands_deploy import deploy_report

        return deploy_report(ctx, plan, outcome, None)
    check_outcome(ctx, plan, outcome)
    state = summary.describe(ctx.store, op["id"])
    emit(ctx.env, "resume", {"resumed": op["id"], "kind": op["kind"], "status": outcome.status,
                             "steps": step_reports(outcome), "state": state,
                             "removed_partial_sets": removed},
         [f"resumed operation #{op['id']} ({op['kind']}): {outcome.status}",
          *summary.lines(state)])
    return ExitCode.OK


@command(cli, "history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def history_cmd(ctx: Ctx, limit: int) -> None:
    """Operations with their outcome and duration."""
    ops: list[dict[str, Any]] = [
        {**op, "duration_s": _duration(op["created_at"], op["finished_at"])}
        for op in ctx.store.history(limit)]
    human = table([[str(o["id"]), o["kind"], o["status"], o["created_at"],
                    f"{o['duration_s']:.1f}s" if o["duration_s"] is not None else "-",
                    o["error"] or ""] for o in ops],
                  ["ID", "KIND", "STATUS", "STARTED", "TOOK", "ERROR"]) if ops else ["no operations"]
    emit(ctx.env, "history", {"operations": ops}, human)


def _duration(start: str, end: str | None) -> float | None:
    if not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@command(backups_group, "prune")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
def backups_prune(ctx: Ctx, dry_run: bool) -> None:
    """Apply retention ([backups] keep_last, keep_daily). Never removes the newest set or
    one referenced by the current or previous release."""
    import shutil
    from datetime import UTC

    from backout.storage.prune import Candidate, prune

    infos = [i for i in sets.list_sets(ctx.config.backup_dir) if i.usable and i.manifest]
    candidates = [Candidate(i.id, datetime.strptime(i.manifest["completed_at"], "%Y-%m-%dT%H:%M:%SZ")
                            .replace(tzinfo=UTC)) for i in infos if i.manifest]
    releases = [r["id"] for r in ctx.store.releases(2)]
    protected: dict[str, str] = {}
    for cp in ctx.store.checkpoints_of_releases(releases):
        which = "current" if cp.release_id == releases[0] else "previous"
        protected[cp.set_id] = f"checkpoint of the {which} release ({cp.release_id})"
    in_use = set_ids_in_use(ctx.store)
    protected.update({i: "used by an unfinished operation (`backout resume`)" for i in in_use})
    decision = prune(candidates, now=datetime.now(UTC), keep_last=ctx.config.backups.keep_last,
                     keep_daily=ctx.config.backups.keep_daily, protected=protected)
    partials = [e.name for e in sorted(ctx.config.backup_dir.glob(f"{sets.PARTIAL}*"))
                if e.name[len(sets.PARTIAL):] not in in_use] \
        if ctx.config.backup_dir.is_dir() else []
    if not dry_run and (decision.remove or partials):
        # Sets an interrupted operation still needs are protected above.
        with ctx.mutating("backups prune", Unfinished.ALLOW):
            for set_id in decision.remove:
                shutil.rmtree(ctx.config.backup_dir / set_id)
            # Half-written sets of runs that died (never usable, often large).
            partials = sets.cleanup_partials(ctx.config.backup_dir,
                                             keep=set_ids_in_use(ctx.store))
            ctx.store.record_event("backups.prune", target=f"{len(decision.remove)} sets",
                                   detail={"removed": decision.remove, "partials": partials})
    verb = "would remove" if dry_run else "removed"
    human = [f"{verb}: {', '.join(decision.remove) or 'nothing'}"]
    if partials:
        human.append(f"{verb} partial sets of interrupted runs: {', '.join(partials)}")
    human += [f"  keep {k}: {why}" for k, why in decision.keep.items()]
    emit(ctx.env, "backups prune", {"dry_run": dry_run, "removed": decision.remove,
                                    "removed_partial_sets": partials, "kept": decision.keep},
         human)
