"""``backout checkpoint``, ``backout backup``, ``backout backups list|verify|prune``.

What only ``backups verify|prune`` and ``schedule`` use is imported in them: a
``backup`` does not load the notifier (urllib, ssl, email), the calendar, prune or
the restore test (17 ms of its start-up: 118 -> 101 ms of imports, bytecode compiled)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from backout.backup import offsite
from backout.backup.operation import PUBLISH, RECORD_CHECKPOINT, plan_backup
from backout.cli.common import (
    Ctx,
    ExitCode,
    Unfinished,
    check_outcome,
    command,
    complete,
    emit,
    group,
    human_size,
    run_plan,
    step_reports,
    stop_on_signals,
    table,
)
from backout.errors import BackoutError, InterruptedOperation, UsageError
from backout.operations.executor import Executor
from backout.storage import sets


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


@command("checkpoint")
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


@command("backup")
@click.argument("which", default="all", shell_complete=complete("backup-name"))
@click.option("--label", help="A note kept in the manifest.")
@click.option("--quiesce", is_flag=True, help="Stop writers while dumping (see checkpoint).")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
def backup_cmd(ctx: Ctx, which: str, label: str | None, quiesce: bool, dry_run: bool) -> int:
    """Back up one database or volume (by its name in backout.toml), or `all`."""
    names = [*ctx.config.databases, *ctx.config.volumes] if which == "all" else [which]
    return _backup(ctx, names, quiesce, False, label, dry_run)


@group("backups")
def backups_group() -> None:
    """List, verify and prune backup sets."""


@command("list", backups_group)
@click.option("--all", "show_all", is_flag=True, help="Also list unusable (incomplete) sets.")
def backups_list(ctx: Ctx, show_all: bool) -> None:
    """Backup sets, newest first. Usable: a valid manifest, every artifact of the
    recorded size, and no failed verification. VERIFIED: the last full check (every
    byte read: sha256, format, counts) and when."""
    infos = sets.list_sets(ctx.config.backup_dir)
    checks = ctx.store.last_verifications()
    copies = ctx.store.set_copies()
    rows: list[dict[str, Any]] = []
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
                     "git_commit": m.get("git_commit"), "verified": last, "local": True,
                     "copies": copies.get(info.id, {})})
    local = {i.id for i in infos}
    rows += [{"id": set_id, "usable": True, "problem": None, "kind": None, "label": None,
              "completed_at": next(iter(held.values()))["completed_at"], "databases": [],
              "volumes": [], "bytes": None, "git_commit": None, "verified": checks.get(set_id),
              "local": False, "copies": held}
             for set_id, held in copies.items() if set_id not in local
             and any(c["status"] == "copied" for c in held.values())]
    rows.sort(key=lambda r: str(r["id"]), reverse=True)
    human = table([[r["id"], r["kind"] or "-",
                    ",".join([*r["databases"], *(f"volume:{v}" for v in r["volumes"])]) or "-",
                    human_size(r["bytes"]) if r["bytes"] is not None else "-", r["label"] or "",
                    _verified(r["verified"]), _where(r),
                    "usable" if r["usable"] else f"UNUSABLE: {r['problem']}"] for r in rows],
                  ["ID", "KIND", "DATABASES", "SIZE", "LABEL", "VERIFIED", "WHERE", "STATE"]) \
        if rows else ["no backup sets"]
    emit(ctx.env, "backups list", {"backups": rows}, human)


def _where(row: dict[str, Any]) -> str:
    """local, and each repository's copy: checked when, or PENDING."""
    where = ["local"] if row["local"] else []
    for name, copy in sorted(row["copies"].items()):
        if copy["status"] == "copied":
            where.append(f"{name} (checked {str(copy['verified_at'])[:16]})")
        elif row["local"]:
            where.append(f"{name} PENDING" + (f" ({copy['error']})" if copy["error"] else ""))
    return ", ".join(where) or "-"


def _verified(last: dict[str, Any] | None) -> str:
    if last is None:
        return "never (sizes only)"
    return f"{'ok' if last['ok'] else 'FAILED'} {last['verified_at'][:16]}"


@command("verify", backups_group)
@click.argument("set_id", shell_complete=complete("backup"))
@click.option("--restore-test", is_flag=True,
              help="Also restore into throwaway containers of the same images and compare "
                   "counts with the manifest.")
def backups_verify(ctx: Ctx, set_id: str, restore_test: bool) -> int:
    """Re-read every artifact: checksum, decompression, format and counts."""
    with offsite.readable_set(ctx.env, ctx.config, ctx.store, set_id) as info:
        return _verify(ctx, info, restore_test)


def _verify(ctx: Ctx, info: sets.SetInfo, restore_test: bool) -> int:
    from backout.backup.restore_test import restore_test as run_restore_test
    from backout.backup.verify import verify_set

    set_id = info.id
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


@command("prune", backups_group)
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
def backups_prune(ctx: Ctx, dry_run: bool) -> int:
    """Apply retention ([backups] keep_last, keep_daily, keep_hourly, keep_weekly,
    keep_monthly, keep_yearly) to the local sets and to each repository's copies. Never
    removes the newest set or one referenced by the current or previous release."""
    from backout.backup.prune import prune_backups

    result = prune_backups(ctx.env, ctx.config, ctx.store, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    human = [f"{verb}: {', '.join(result.removed) or 'nothing'}"]
    human += [f"{verb} from repository {name}: {', '.join(ids) or 'nothing'}"
              for name, ids in result.repositories.items()]
    human += [f"repository {name} left alone: {exc.one_line()}"
              for name, exc in result.repository_errors.items()]
    if result.partial_sets:
        human.append(f"{verb} partial sets of interrupted runs: {', '.join(result.partial_sets)}")
    human += [f"  keep {k}: {why}" for k, why in result.kept.items()]
    emit(ctx.env, "backups prune", {"dry_run": dry_run, "removed": result.removed,
                                    "removed_partial_sets": result.partial_sets,
                                    "kept": result.kept, "repositories": result.repositories,
                                    "repository_errors": {
                                        k: v.to_json()
                                        for k, v in result.repository_errors.items()}}, human)
    # A repository that could not be pruned is a warning: the local prune was done.
    return ExitCode.WARNINGS if result.repository_errors else ExitCode.OK


@command("copy", backups_group)
@click.argument("set_ids", nargs=-1, shell_complete=complete("backup"))
@click.option("--to", "repositories", multiple=True,
              help="Only this repository ([repositories.<name>]); repeatable.")
def backups_copy(ctx: Ctx, set_ids: tuple[str, ...], repositories: tuple[str, ...]) -> int:
    """Copy sets to the configured repositories now: the named ones, or (none named) every
    local set never copied there; and every copy still pending (a checkpoint or backup
    copies its own set by itself after publishing). Each copy is checked (restic check,
    the manifest read back, every artifact's size)."""
    report = offsite.copy_now(ctx.env, ctx.config, ctx.store, list(set_ids),
                              list(repositories) or None)
    if report.errors:  # one document on stdout: the error's
        raise next(iter(report.errors.values()))
    human = [f"{name}: copied {', '.join(done) or 'nothing'}"
             for name, done in report.copied.items()]
    emit(ctx.env, "backups copy", report.to_json(), human or ["nothing to copy"])
    return ExitCode.OK


@command("schedule")
@click.option("--on", "spec", metavar="CALENDAR",
              help="When (UTC): hourly, daily, weekly, monthly, HH:MM, 'Mon..Fri 02:30', "
                   "'*:0/15', or 'every 6h'.")
@click.option("--once", is_flag=True,
              help="One checkpoint now, then exit (a systemd timer's service): failures are "
                   "notified as the schedule's are.")
@click.option("--quiesce", is_flag=True, help="Stop writers while dumping (see checkpoint).")
@click.option("--prune", "then_prune", is_flag=True,
              help="Apply retention (locally and in each repository) after each checkpoint.")
@click.option("--now", "run_now", is_flag=True, help="Also take one checkpoint at start.")
@click.option("--runs", type=click.IntRange(min=1), hidden=True,
              help="Stop after this many checkpoints (tests).")
def schedule_cmd(ctx: Ctx, spec: str | None, once: bool, quiesce: bool, then_prune: bool,
                 run_now: bool, runs: int | None) -> int:
    """Take checkpoints on a calendar, in the foreground (for a systemd or compose
    service; see contrib/systemd). Each is copied to the repositories; a failed
    checkpoint or copy is notified ([monitor.notify]) and the next run goes on. SIGTERM
    or SIGINT between runs stop it (exit 0); during a checkpoint, as for `checkpoint`."""
    from backout.backup.prune import prune_backups
    from backout.backup.schedule import report_failure, run_schedule
    from backout.policy import calendar

    if once:
        spec, run_now, runs = spec or "daily", True, 1
    if spec is None:
        raise UsageError("schedule needs --on CALENDAR (or --once)",
                         fix="e.g. backout schedule --on daily")
    try:
        cal = calendar.parse(spec)
    except calendar.CalendarError as exc:
        raise UsageError(f"--on: {exc}", fix="e.g. --on daily, --on '*:0/15', "
                                             "--on 'Mon..Fri 02:30', --on 'every 6h'") from None
    names = [*ctx.config.databases, *ctx.config.volumes]
    failures = 0
    errors: list[BackoutError] = []

    def job() -> None:
        nonlocal failures
        try:
            _backup(ctx, names, quiesce, True, "scheduled", False)
            if then_prune:
                pruned = prune_backups(ctx.env, ctx.config, ctx.store, dry_run=False)
                for name, exc in pruned.repository_errors.items():
                    failures += 1
                    report_failure(ctx.env, ctx.config, ctx.store, f"prune of {name}", exc)
        except InterruptedOperation:
            raise
        except BackoutError as exc:
            failures += 1
            errors.append(exc)
            report_failure(ctx.env, ctx.config, ctx.store, "checkpoint", exc)

    def announce(at: datetime) -> None:
        ctx.env.warn(f"next checkpoint at {at.strftime('%Y-%m-%d %H:%M:%S')} UTC ({spec})")

    with stop_on_signals() as (stop, received):
        done = run_schedule(cal, job, stop=stop, announce=announce, runs=runs,
                            run_now=run_now)
    if received:
        ctx.env.warn(f"schedule stopped by {received[0]} after {done} checkpoint(s)")
    if once and errors:
        raise errors[0]  # its exit code: the timer's service fails with it
    return ExitCode.WARNINGS if failures else ExitCode.OK
