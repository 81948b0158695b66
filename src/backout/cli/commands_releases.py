"""``backout release ...``, ``backout releases``, ``backout events``, ``backout status``."""

from __future__ import annotations

from typing import Any

import click

from backout.adapters.git import Git
from backout.cli.main import Ctx, cli, command, complete
from backout.cli.output import emit, table
from backout.errors import ExitCode, UsageError
from backout.operations.guard import Unfinished
from backout.releases import get_release, record_release
from backout.state import OperationLock


@cli.group("release")
def release_group() -> None:
    """Record and inspect releases (what exactly runs)."""


@command(release_group, "record")
@click.option("--note", help="Why this release is recorded (kept in the audit log).")
def release_record(ctx: Ctx, note: str | None) -> None:
    """Record what runs now as a release and retain its images."""
    with ctx.mutating("release record", Unfinished.ALLOW):
        rel = record_release(ctx.env, ctx.config, ctx.store, ctx.platform, note=note)
    human = [f"recorded release {rel.id} at commit {(rel.commit or 'none')[:12]}"
             + (" (dirty tree, diff saved to " + str(rel.diff_path) + ")" if rel.dirty else "")]
    human += [f"  {name:<16} {svc['image']}  {svc['image_id'][7:19]}  retained as {svc['retained_as']}"
              for name, svc in rel.services.items()]
    emit(ctx.env, "release record", {"release": {
        "id": rel.id, "commit": rel.commit, "dirty": rel.dirty, "diff_path": rel.diff_path,
        "services": rel.services}}, human)


@command(cli, "releases")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many to show, newest first.")
def releases_cmd(ctx: Ctx, limit: int) -> None:
    """List recorded releases: id, commit, tag, when, status."""
    rows = ctx.store.releases(limit)
    tags = Git(ctx.env, ctx.config.project_dir).tags_by_commit() if rows else {}
    out = []
    for r in rows:
        out.append({"id": r["id"], "commit": r["git_commit"], "dirty": bool(r["git_dirty"]),
                    "tags": tags.get(r["git_commit"] or "", []), "created_at": r["created_at"],
                    "created_by": r["created_by"], "status": r["status"]})
    human = table([[str(o["id"]), (o["commit"] or "-")[:12] + ("+dirty" if o["dirty"] else ""),
                    ",".join(o["tags"]) or "-", o["created_at"], o["status"]] for o in out],
                  ["ID", "COMMIT", "TAGS", "WHEN", "STATUS"]) if out else ["no releases recorded yet"]
    emit(ctx.env, "releases", {"releases": out}, human)


@command(release_group, "show")
@click.argument("release_id", shell_complete=complete("release"))
def release_show(ctx: Ctx, release_id: str) -> None:
    """Show one release: commit, services and the exact images."""
    if not release_id.isdigit():
        raise UsageError(f"release id must be a number, not {release_id!r}",
                         fix="list them with `backout releases`")
    r = get_release(ctx.store, int(release_id))
    human = [f"release {r['id']}  commit {r['git_commit'] or '-'}{' (dirty)' if r['git_dirty'] else ''}",
             f"  recorded {r['created_at']} by {r['created_by']}, status {r['status']}"]
    if r["diff_path"]:
        human.append(f"  uncommitted diff: {r['diff_path']}")
    human += [f"  {name:<16} {svc['image']}  {svc['image_id']}"
              for name, svc in sorted(r["services"].items())]
    data = {k: r[k] for k in ("id", "created_at", "created_by", "diff_path", "status", "note",
                              "services")}
    data.update(commit=r["git_commit"], dirty=bool(r["git_dirty"]))
    emit(ctx.env, "release show", {"release": data}, human)


@command(cli, "events")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def events_cmd(ctx: Ctx, limit: int) -> None:
    """The audit log: who did what, when, and why."""
    events = ctx.store.events(limit)
    human = table([[e["ts"], e["actor"], e["action"], e["target"] or "", e["reason"] or ""]
                   for e in events], ["WHEN", "WHO", "WHAT", "TARGET", "WHY"]) if events else ["no events"]
    emit(ctx.env, "events", {"events": events}, human)


@command(cli, "status")
def status_cmd(ctx: Ctx) -> int:
    """Current release, lock holder and state store, without a running monitor.

    Exit 1 (warnings) when part of the status could not be read: the Docker Engine
    does not answer (a script polling `status` sees that Docker is down)."""
    from backout.cli.commands_monitor import baseline_line
    from backout.errors import BackoutError
    from backout.monitor.run import baseline_in_use
    from backout.operations import summary
    from backout.rollback.service import drift
    from backout.state.lock import MONITOR_LOCK_NAME

    holder = OperationLock(ctx.config.state_dir).holder()
    latest = ctx.store.releases(1)
    rel = latest[0] if latest else None
    cp = ctx.store.latest_checkpoint()
    pending = ctx.store.unfinished_operations() if holder is None else []
    monitor = OperationLock(ctx.config.state_dir, MONITOR_LOCK_NAME).holder()
    platform = ctx.platform
    warnings: list[str] = []
    try:
        drifted: dict[str, Any] | None = drift(platform)
        baseline = baseline_in_use(ctx.store, platform)
    except BackoutError as exc:  # status must work with the engine down
        drifted = baseline = None
        warnings.append(f"cannot compare running images: {exc.one_line()}")
        ctx.env.warn(warnings[-1])
    human = [f"project:    {ctx.config.project_dir}",
             f"release:    {rel['id']} at {(rel['git_commit'] or '-')[:12]} ({rel['status']})" if rel
             else "release:    none recorded",
             f"checkpoint: {cp.id} ({cp.created_at}, set {cp.set_id})" if cp
             else "checkpoint: none",
             f"lock:       held by {holder.describe()}" if holder else "lock:       free"]
    level = ctx.store.fact("monitor.level")
    incidents = ctx.store.open_incidents()
    human.append(f"level:      {level['level']} (last evaluated {level['t']:.0f})" if level
                 else "level:      unknown (no monitor has run)")
    human.append(f"monitor:    running: {monitor.describe()}" if monitor
                 else "monitor:    not running")
    if baseline is not None:
        human.append(f"{baseline_line(baseline).replace('baseline: ', 'baseline:   ', 1)}")
    for inc in incidents:
        human.append(f"INCIDENT:   #{inc['id']} {inc['level']} {inc['severity']} {inc['rule']} "
                     f"({inc['status']}) since {inc['opened_at']}")
    for op in pending:
        human.append(f"INTERRUPTED: operation #{op['id']} ({op['kind']}) did not finish: "
                     "run `backout resume`")
    last = ctx.store.last_operation()
    # The same words the operation's own exit message used (operations.summary).
    last_state = summary.describe(ctx.store, last["id"]) if last is not None else None
    if last is not None and last_state is not None \
            and last["status"] in ("interrupted", "failed", "running"):
        human.append(f"last op:    #{last['id']} ({last['kind']}) {last['status']}"
                     + (f" at step {last_state['stopped_at']!r}"
                        if last_state["stopped_at"] else ""))
        human += [f"           {line.strip()}" for line in summary.lines(last_state)]
    for svc, d in (drifted or {}).items():
        human.append(f"DRIFT: {svc} runs {d['running'][7:19]}, the compose files name "
                     f"{d['compose_image']} ({d['compose_file'][7:19]})")
    emit(ctx.env, "status", {
        "checkpoint": {"id": cp.id, "set_id": cp.set_id, "created_at": cp.created_at}
        if cp else None,
        "interrupted": [{"id": op["id"], "kind": op["kind"]} for op in pending],
        "last_operation": {"id": last["id"], "kind": last["kind"], "status": last["status"],
                           "error": last["error"], "state": last_state} if last else None,
        "level": level,
        "monitor": {"pid": monitor.pid, "host": monitor.host, "since": monitor.since}
        if monitor else None,
        "baseline": baseline,
        "open_incidents": [{"id": i["id"], "rule": i["rule"], "level": i["level"],
                            "severity": i["severity"], "status": i["status"]} for i in incidents],
        "drift": drifted,
        "project_dir": str(ctx.config.project_dir),
        "release": {"id": rel["id"], "commit": rel["git_commit"], "status": rel["status"]} if rel else None,
        "lock": {"pid": holder.pid, "host": holder.host, "command": holder.command,
                 "since": holder.since} if holder else None,
        "warnings": warnings,
    }, human)
    return ExitCode.WARNINGS if warnings else ExitCode.OK
