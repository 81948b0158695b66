"""``backout deploy``."""

from __future__ import annotations

from typing import Any

import click

from backout.cli.common import Ctx, ExitCode, command, complete, deploy_report, emit, run_plan
from backout.deploy import plan_deploy, preflight


def _watch_progress(ctx: Ctx, total: float) -> Any:
    last: dict[str, Any] = {"level": None, "n": 0}

    def show(decision: Any, elapsed: float) -> None:
        last["n"] += 1
        level = decision.level.value
        if ctx.env.json or (level == last["level"] and last["n"] % 6):
            return
        last["level"] = level
        firing = next((f for f in decision.active if f.level.value in ("RED", "YELLOW")), None)
        why = f": {firing.rule}: {firing.reason}" if firing else ""
        ctx.env.stderr.write(f"    watch {elapsed:4.0f}s/{total:.0f}s  {level}{why}\n")
        ctx.env.stderr.flush()

    return show


@command("deploy")
@click.argument("ref", required=False, shell_complete=complete("ref"))
@click.option("--watch", "watch_seconds", type=click.IntRange(min=0), default=None,
              help="Seconds to watch the new release under the policy (default: [deploy] "
                   "watch_seconds, 600). 0 skips the watch.")
@click.option("--migration", is_flag=True,
              help="The release carries a migration: a rollback restores the checkpoint's "
                   "data too (default: [deploy] rollback_with_data).")
@click.option("--allow-dirty", is_flag=True,
              help="Deploy although the repository has uncommitted changes (they are saved "
                   "as a patch and a git stash before the switch).")
@click.option("--label", help="A note for the pre-deploy checkpoint.")
@click.option("--dry-run", is_flag=True, help="Run the preflight, print the plan, change nothing.")
def deploy_cmd(ctx: Ctx, ref: str | None, watch_seconds: int | None, migration: bool,
               allow_dirty: bool, label: str | None, dry_run: bool) -> int:
    """Deploy REF (a commit, tag or branch; default: HEAD) guarded: preflight,
    checkpoint, switch, up (waited healthy), verify, then watch; on RED or a failed
    step, roll back to the previous release by itself and verify.

    Exit codes for CI: 0 deployed and healthy, 8 rolled back (verified), 9 failed and
    left for a human; 2/7 a preflight refusal (nothing changed).
    """
    cfg = ctx.config
    platform = ctx.platform
    platform.ping()
    seconds = cfg.deploy.watch_seconds if watch_seconds is None else watch_seconds
    with_data = migration or cfg.deploy.rollback_with_data

    def checked() -> Any:
        pf = preflight(ctx.env, cfg, ctx.store, platform, ref, allow_dirty=allow_dirty)
        if not ctx.env.json:
            for c in pf.checks:
                ctx.env.stderr.write(f"  preflight {'ok  ' if c.ok else 'FAIL'} {c.name}: "
                                     f"{c.detail}\n")
        if pf.error is not None:
            raise pf.error
        return pf

    if dry_run:
        pf = checked()
        plan = plan_deploy(cfg, pf, watch_seconds=seconds, with_data=with_data, label=label,
                           definition=None if platform.switches_itself else platform.definition())
        emit(ctx.env, "deploy", {"dry_run": True, "preflight": pf.to_json(),
                                 "plan": plan.to_json()}, plan.render())
        return ExitCode.OK
    with ctx.mutating("deploy"):
        pf = checked()
        plan = plan_deploy(cfg, pf, watch_seconds=seconds, with_data=with_data, label=label,
                           definition=None if platform.switches_itself else platform.definition())
        if not ctx.env.json:
            for line in plan.render()[:1]:
                ctx.env.stderr.write(line + "\n")
        outcome = run_plan(ctx, plan, on_decision=_watch_progress(ctx, seconds))
    return deploy_report(ctx, plan, outcome, pf.to_json())
