"""``backout rollback service|db|emergency``."""

from __future__ import annotations

from typing import Any

import click

from backout.cli.common import (
    Ctx,
    ExitCode,
    check_outcome,
    command,
    complete,
    confirm,
    emit,
    group,
    run_plan,
    step_reports,
)
from backout.errors import UsageError
from backout.operations.plan import Plan
from backout.rollback import service as service_rollback


@group("rollback")
def rollback_group() -> None:
    """Roll back one service, the whole stack, or one database."""


def _loss_lines(plan: Plan) -> list[str]:
    """The data-loss window of the plan's restores, for the operator to accept."""
    windows = plan.params.get("data_loss") or []
    if not windows:
        return []
    return ["  data loss: what the live data has that the backup has not (kept in the "
            "safety backup, gone from the live data):",
            *(f"    {w['summary']}" for w in windows)]


def run_rollback(ctx: Ctx, plan: Plan, *, name: str, yes: bool, dry_run: bool,
                 extra: dict[str, Any] | None = None,
                 stronger: Any = None) -> int:
    """Dry-run printing, confirmation, the lock, the executor, and the report.
    ``stronger``: a stronger confirmation than --yes (it runs even with --yes)."""
    loss = plan.params.get("data_loss") or []
    if dry_run:
        emit(ctx.env, name, {"dry_run": True, "plan": plan.to_json(), "data_loss": loss},
             [*plan.render(), *_loss_lines(plan)])
        return ExitCode.OK
    if not ctx.env.json:
        for line in [*plan.render(), *_loss_lines(plan)]:
            ctx.env.stderr.write(line + "\n")
    if stronger is not None:
        stronger()
    confirm(ctx, yes, f"{plan.summary}" + (": accept this data loss and proceed?" if loss
                                              else ": proceed?"))
    with ctx.mutating(name):
        outcome = run_plan(ctx, plan)
    data: dict[str, Any] = {"operation_id": outcome.operation_id, "status": outcome.status,
                            "plan": plan.to_json(), "steps": step_reports(outcome),
                            **(extra or {})}
    check_outcome(ctx, plan, outcome)
    # The window as it was when the restore began (writers stopped: final).
    final = [r["data_loss"] for r in outcome.results.values()
             if isinstance(r, dict) and "data_loss" in r]
    data["data_loss"] = final or loss
    human = [f"{name}: done (operation #{outcome.operation_id})"]
    human += [f"  data loss: {w['summary']}" for w in final]
    drifted = service_rollback.drift(ctx.platform)
    if drifted:
        data["drift"] = drifted
        for svc, d in drifted.items():
            human.append(f"note: {svc} runs {d['running'][7:19]} but the compose files name "
                         f"{d['compose_image']} ({d['compose_file'][7:19]}): a plain "
                         f"`docker compose up` would undo this rollback. Commit a fix to the "
                         f"compose files, or roll the code back too (`backout rollback emergency`).")
    emit(ctx.env, name, data, human)
    return ExitCode.OK


@command("service", rollback_group)
@click.argument("service", shell_complete=complete("service"))
@click.argument("version", required=False, shell_complete=complete("service-version"))
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--order", type=click.Choice(["start-first", "stop-first"]), default=None,
              help="start-first: the new container serves before the old one stops "
                   "(default when the compose file allows it); stop-first: the old one "
                   "stops first.")
def rollback_service(ctx: Ctx, service: str, version: str | None, dry_run: bool, yes: bool,
                     order: str | None) -> int:
    """Recreate one service from an earlier image; the others keep running untouched.

    VERSION is a release id (12, r12, release:12), an image tag (v1.2.0 or repo:tag), or
    omitted: then the newest recorded release whose image of SERVICE differs from the
    running one (also when the bad version was deployed outside backout).
    """
    platform = ctx.platform
    platform.ping()
    plan = service_rollback.plan(ctx.store, platform, service, version, config=ctx.config,
                                 order=order)
    return run_rollback(ctx, plan, name="rollback service", yes=yes, dry_run=dry_run)


@command("db", rollback_group)
@click.argument("database", shell_complete=complete("database"))
@click.argument("backup", shell_complete=complete("restore-source"))
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-safety-backup", is_flag=True,
              help="Restore without a safety backup of the current data (when one cannot be "
                   "taken): the restore cannot be undone. Needs the database's name typed on a "
                   "terminal, even with --yes; recorded in the audit log.")
def rollback_db(ctx: Ctx, database: str, backup: str, dry_run: bool, yes: bool,
                no_safety_backup: bool) -> int:
    """Restore one database from a backup id, a checkpoint (cpN) or a dump file.

    A dump file may be a plain or compressed .sql from mysqldump/mariadb-dump, a Redis
    .rdb, or a mongodump directory. The writers are stopped first, then a safety backup
    of the current data is taken (it holds every acknowledged write), so the restore
    itself can be rolled back; the plan shows the data-loss window before you accept it.
    """
    from backout.rollback import db as db_rollback  # its backup tree: not a service's start

    db_rollback.database(ctx.config, database)  # a wrong name is "not found" even with the engine down
    platform = ctx.platform
    platform.ping()
    plan = db_rollback.plan(ctx.env, ctx.config, ctx.store, database, backup, platform=platform,
                            no_safety_backup=no_safety_backup)

    def typed() -> None:
        name = plan.params["database"]
        if not (ctx.env.stdin_isatty and ctx.env.stderr.isatty()):
            raise UsageError("--no-safety-backup needs the database's name typed on a terminal",
                             fix="run it from a terminal; or free what blocks the safety backup")
        answer = click.prompt(f"restore {name} WITHOUT a safety backup: this cannot be undone. "
                              f"Type {name!r} to confirm", default="", show_default=False,
                              err=True)
        if answer.strip() != name:
            raise UsageError("not confirmed (the name typed differs); nothing changed")
        ctx.store.record_event("rollback.db.no_safety_backup_confirmed", target=name,
                               reason="operator typed the database name",
                               detail={"backup": backup})

    return run_rollback(ctx, plan, name="rollback db", yes=yes, dry_run=dry_run,
                        extra={"safety_set": plan.params["safety_set"]},
                        stronger=typed if no_safety_backup else None)


@command("emergency", rollback_group)
@click.argument("target", shell_complete=complete("emergency-target"))
@click.option("--with-data", is_flag=True,
              help="Also restore the databases from the target's checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def rollback_emergency(ctx: Ctx, target: str, with_data: bool, dry_run: bool, yes: bool) -> int:
    """Roll the whole stack back to TARGET: a checkpoint (cpN or backup id), a release
    (N, rN, release:N), or a git commit or tag.

    Uncommitted changes are saved (patch under .backout/saved + git stash), the
    repository is switched to the target commit (detached), every service gets the
    target's retained image, the stack comes up in dependency order, and it is verified.
    """
    from backout.rollback import emergency  # its data steps' tree: not a service's start

    platform = ctx.platform
    platform.ping()
    plan = emergency.plan(ctx.env, ctx.config, ctx.store, platform, target, with_data)
    return run_rollback(ctx, plan, name="rollback emergency", yes=yes, dry_run=dry_run)
