"""``backout checkpoint``, ``backout backup``, ``backout backups ...``, ``resume``, ``history``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from backout.backup import sets
from backout.backup.operation import plan_backup
from backout.backup.verify import verify_set
from backout.cli.main import Ctx, cli, command, complete
from backout.cli.output import emit, human_size, table
from backout.errors import ExitCode, UsageError
from backout.operations import Executor, Plan, Step
from backout.operations.executor import history, load_plan, mark_abandoned, unfinished
from backout.releases import compose_for


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
             extra: dict[str, Any] | None = None) -> Any:
    services = {"env": ctx.env, "config": ctx.config, "store": ctx.store,
                "compose": compose_for(ctx.env, ctx.config),
                **(extra or {})}

    tty = ctx.env.stderr.isatty()

    def on_step(step: Step, status: str, detail: str | None) -> None:
        line = None if ctx.env.json else step_line(step, status, detail, tty=tty)
        if line is not None:
            ctx.env.stderr.write(line)
            ctx.env.stderr.flush()

    executor = Executor(ctx.store, services, on_step)
    if op_id is None:
        op_id = executor.start(plan)
    return executor.run(plan, op_id)


def _abandon_interrupted_backups(ctx: Ctx) -> None:
    """A new backup supersedes an interrupted one: finish its always-steps (restart
    writers), mark it abandoned; its partial set is cleaned by the new plan."""
    for op in unfinished(ctx.store):
        if op["kind"] not in ("backup", "checkpoint"):
            raise UsageError(f"operation #{op['id']} ({op['kind']}) was interrupted and is "
                             "unfinished", fix="run `backout resume` first")
        plan = load_plan(ctx.store, op["id"])
        if any(s.always for s in plan.steps):
            Executor(ctx.store, {"env": ctx.env, "config": ctx.config, "store": ctx.store,
                                 "compose": compose_for(ctx.env, ctx.config)}
                     ).run(plan, op["id"], only_always=True)
        mark_abandoned(ctx.store, op["id"], "superseded by a new backup after an interruption")
        ctx.env.warn(f"operation #{op['id']} ({op['kind']}) had been interrupted; abandoned it")


def _backup(ctx: Ctx, which: list[str], quiesce: bool, checkpoint: bool, label: str | None,
            dry_run: bool) -> int:
    plan = plan_backup(ctx.config, which=which, quiesce=quiesce, checkpoint=checkpoint,
                       label=label)
    name = "checkpoint" if checkpoint else "backup"
    if dry_run:
        emit(ctx.env, name, {"dry_run": True, "plan": plan.to_json()}, plan.render())
        return ExitCode.OK
    with ctx.mutating(name):
        _abandon_interrupted_backups(ctx)
        outcome = run_plan(ctx, plan)
    data: dict[str, Any] = {"operation_id": outcome.operation_id, "status": outcome.status,
                            "set_id": plan.params["set_id"], "steps": step_reports(outcome)}
    if outcome.error is not None:
        raise outcome.error
    cp = outcome.results.get("record checkpoint")
    if cp:
        data.update(checkpoint_id=cp["checkpoint_id"], release_id=cp["release_id"])
    pub = outcome.results["publish backup set"]
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
    """Backup sets, newest first. Only sets with a valid manifest are usable."""
    infos = sets.list_sets(ctx.config.backup_dir)
    rows = []
    for info in infos:
        if not info.usable and not show_all:
            continue
        m = info.manifest or {}
        size = sum(a["bytes"] for a in (m.get("artifacts") or {}).values())
        rows.append({"id": info.id, "usable": info.usable, "problem": info.problem,
                     "kind": m.get("kind"), "label": m.get("label"),
                     "completed_at": m.get("completed_at"), "databases": sorted(m.get("databases") or {}),
                     "volumes": sorted(m.get("volumes") or {}), "bytes": size, "git_commit": m.get("git_commit")})
    human = table([[r["id"], r["kind"] or "-",
                    ",".join([*r["databases"], *(f"volume:{v}" for v in r["volumes"])]) or "-",
                    human_size(r["bytes"]), r["label"] or "",
                    "usable" if r["usable"] else f"UNUSABLE: {r['problem']}"] for r in rows],
                  ["ID", "KIND", "DATABASES", "SIZE", "LABEL", "STATE"]) if rows else ["no backup sets"]
    emit(ctx.env, "backups list", {"backups": rows}, human)


@command(backups_group, "verify")
@click.argument("set_id", shell_complete=complete("backup"))
@click.option("--restore-test", is_flag=True,
              help="Also restore into throwaway containers of the same images and compare "
                   "counts with the manifest.")
def backups_verify(ctx: Ctx, set_id: str, restore_test: bool) -> int:
    """Re-read every artifact: checksum, decompression, format and counts."""
    info = sets.get_set(ctx.config.backup_dir, set_id)
    report = verify_set(ctx.env, info)
    human = [f"backup {report.set_id}: {'ok' if report.ok else 'FAILED'}"]
    if report.problem:
        human.append(f"  {report.problem}")
    human += [f"  {a.name}: {'ok' if a.ok else a.problem}" for a in report.artifacts]
    data: dict[str, Any] = {"verify": report.to_json()}
    ok = report.ok
    if restore_test and report.ok and info.manifest is not None:
        from backout.backup.restore_test import restore_test as run_restore_test

        results = run_restore_test(ctx.env, ctx.config, compose_for(ctx.env, ctx.config),
                                   info.path, info.manifest)
        data["restore_test"] = results
        for name, res in results.items():
            ok = ok and bool(res["ok"])
            detail = res.get("error") or ("counts match the manifest" if res["ok"] else
                                          f"counts differ: expected {res['expected']}, "
                                          f"restored {res['restored']}")
            human.append(f"  restore test {name}: {'ok' if res['ok'] else 'FAILED'} ({detail})")
    data["verify"]["ok"] = ok
    emit(ctx.env, "backups verify", data, human)
    return ExitCode.OK if ok else ExitCode.VERIFICATION_FAILED


@command(cli, "resume")
def resume_cmd(ctx: Ctx) -> int:
    """Finish an operation that was interrupted (crash, kill -9, power loss)."""
    with ctx.mutating("resume"):
        ops = unfinished(ctx.store)
        if not ops:
            emit(ctx.env, "resume", {"resumed": None}, "nothing to resume")
            return ExitCode.OK
        op = ops[-1]
        plan = load_plan(ctx.store, op["id"])
        outcome = run_plan(ctx, plan, op_id=op["id"])
    if plan.kind == "deploy":
        from backout.cli.commands_deploy import deploy_report

        return deploy_report(ctx, plan, outcome, None)
    if outcome.error is not None:
        raise outcome.error
    emit(ctx.env, "resume", {"resumed": op["id"], "kind": op["kind"], "status": outcome.status,
                             "steps": step_reports(outcome)},
         f"resumed operation #{op['id']} ({op['kind']}): {outcome.status}")
    return ExitCode.OK


@command(cli, "history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def history_cmd(ctx: Ctx, limit: int) -> None:
    """Operations with their outcome and duration."""
    ops = history(ctx.store, limit)
    for op in ops:
        op["duration_s"] = _duration(op["created_at"], op["finished_at"])
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

    from backout.backup.prune import Candidate, prune

    infos = [i for i in sets.list_sets(ctx.config.backup_dir) if i.usable and i.manifest]
    candidates = [Candidate(i.id, datetime.strptime(i.manifest["completed_at"], "%Y-%m-%dT%H:%M:%SZ")
                            .replace(tzinfo=UTC)) for i in infos if i.manifest]
    releases = [r["id"] for r in ctx.store.releases(2)]
    protected: dict[str, str] = {}
    if releases:
        marks = ",".join("?" * len(releases))
        for row in ctx.store.db.execute(
                f"SELECT path, release_id FROM checkpoints WHERE release_id IN ({marks})", releases):
            which = "current" if row["release_id"] == releases[0] else "previous"
            protected[row["path"]] = f"checkpoint of the {which} release ({row['release_id']})"
    decision = prune(candidates, now=datetime.now(UTC), keep_last=ctx.config.backups.keep_last,
                     keep_daily=ctx.config.backups.keep_daily, protected=protected)
    if not dry_run and decision.remove:
        with ctx.mutating("backups prune"):
            for set_id in decision.remove:
                shutil.rmtree(ctx.config.backup_dir / set_id)
            ctx.store.record_event("backups.prune", target=f"{len(decision.remove)} sets",
                                   detail={"removed": decision.remove})
    human = [f"{'would remove' if dry_run else 'removed'}: {', '.join(decision.remove) or 'nothing'}"]
    human += [f"  keep {k}: {why}" for k, why in decision.keep.items()]
    emit(ctx.env, "backups prune", {"dry_run": dry_run, "removed": decision.remove,
                                    "kept": decision.keep}, human)
