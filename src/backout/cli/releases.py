"""``backout release record|show``, ``backout releases``."""

from __future__ import annotations

import click

from backout.adapters.git import Git
from backout.cli.common import Ctx, Unfinished, command, complete, emit, group, table
from backout.errors import UsageError
from backout.releases import get_release, record_release


@group("release")
def release_group() -> None:
    """Record and inspect releases (what exactly runs)."""


@command("record", release_group)
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


@command("releases")
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


@command("show", release_group)
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
