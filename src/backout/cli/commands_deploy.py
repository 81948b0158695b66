"""``backout deploy`` (and ``backout demo``, which narrates one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from backout.adapters.docker import Docker
from backout.backup.operation import RECORD_CHECKPOINT
from backout.cli.commands_backup import check_outcome, run_plan, step_reports
from backout.cli.main import Ctx, cli, command, complete
from backout.cli.output import emit
from backout.deploy.operation import OUTCOME, PREVIOUS
from backout.errors import BackoutError, ExitCode, NeedsHumanError
from backout.operations.plan import Plan
from backout.rollback.db import safety_key

# The outcome of a deploy is what CI branches on.
DEPLOY_EXIT = {"deployed": ExitCode.OK, "rolled_back": ExitCode.ROLLED_BACK,
               "needs_human": ExitCode.NEEDS_HUMAN}


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


def deploy_report(ctx: Ctx, plan: Plan, outcome: Any, preflight: dict[str, Any] | None) -> int:
    """Render a finished (or resumed) deploy and pick its exit code."""
    results = outcome.results
    final = results.get(OUTCOME) or {}
    kind = final.get("outcome")
    previous = (results.get(PREVIOUS) or {}).get("release_id")
    checkpoint = (results.get(RECORD_CHECKPOINT) or {}).get("checkpoint_id")
    data: dict[str, Any] = {
        "operation_id": outcome.operation_id, "outcome": kind, "ref": plan.params["ref"],
        "commit": plan.params["commit"], "release_id": final.get("release_id"),
        "previous_release_id": previous, "checkpoint_id": checkpoint,
        "incident": final.get("incident"), "reason": final.get("reason"),
        "ok": kind == "deployed", "steps": step_reports(outcome),
        "set_id": plan.params.get("set_id"),
        # A rollback with data: what left the live data (kept in the safety sets).
        "data_loss": [r["data_loss"] for r in results.values()
                      if isinstance(r, dict) and "data_loss" in r],
        "safety_sets": {name: r["set_id"] for name in ctx.config.databases
                        if isinstance(r := results.get(safety_key(name)), dict)
                        and "set_id" in r}}
    if preflight is not None:
        data["preflight"] = preflight
    if outcome.status in ("interrupted", "unfinished"):
        from backout.deploy import OUTCOMES

        check_outcome(ctx, plan, outcome,
                      also=f"the deploy {OUTCOMES[kind]}" if kind in OUTCOMES else None)
    if kind is None or kind == "failed":
        # Nothing changed (or the journal could not say): the step's own error and code.
        error = outcome.error or BackoutError("deploy did not finish")
        raise error
    from backout.deploy import OUTCOMES

    human = [f"deploy of {plan.params['ref']}: {OUTCOMES[kind]} (operation "
             f"#{outcome.operation_id})"]
    if kind != "deployed":
        human.append(f"  why: {final.get('reason')}")
        human += [f"  data loss: {w['summary']}" for w in data["data_loss"]]
        if final.get("incident"):
            human.append(f"  incident #{final['incident']}: `backout incidents`")
    if kind == "needs_human":
        err = NeedsHumanError(f"deploy of {plan.params['ref']} failed and its rollback did not "
                              f"verify: {final.get('reason')}",
                              fix="look now: `backout verify`, `backout history`, "
                                  "`docker compose logs`; then `backout rollback emergency`")
        data["error"] = {"code": err.code, "exit_code": int(err.exit_code),
                         "message": err.message, "fix": err.fix}
        ctx.env.stderr.write(f"backout: error: {err.one_line()}\n")
    emit(ctx.env, "deploy", data, human)
    return int(DEPLOY_EXIT[kind])


@command(cli, "deploy")
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
    checkpoint, switch, up --wait, verify, then watch; on RED or a failed step, roll
    back to the previous release by itself and verify.

    Exit codes for CI: 0 deployed and healthy, 8 rolled back (verified), 9 failed and
    left for a human; 2/7 a preflight refusal (nothing changed).
    """
    from backout.deploy import plan_deploy, preflight

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
        plan = plan_deploy(cfg, pf, watch_seconds=seconds, with_data=with_data, label=label)
        emit(ctx.env, "deploy", {"dry_run": True, "preflight": pf.to_json(),
                                 "plan": plan.to_json()}, plan.render())
        return ExitCode.OK
    with ctx.mutating("deploy"):
        pf = checked()
        plan = plan_deploy(cfg, pf, watch_seconds=seconds, with_data=with_data, label=label)
        if not ctx.env.json:
            for line in plan.render()[:1]:
                ctx.env.stderr.write(line + "\n")
        outcome = run_plan(ctx, plan, on_decision=_watch_progress(ctx, seconds))
    return deploy_report(ctx, plan, outcome, pf.to_json())


@command(cli, "demo")
@click.option("--keep", is_flag=True, help="Leave the demo stack running afterwards.")
@click.option("--watch", "watch_seconds", type=click.IntRange(min=10), default=90,
              show_default=True, help="Longest watch of the broken release.")
@click.option("--dir", "workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Where the demo's project directory is created (default: a temp dir).")
def demo_cmd(ctx: Ctx, keep: bool, watch_seconds: int, workdir: Path | None) -> int:
    """Show a guarded deploy end to end on a small demo stack: deploy a healthy
    release, then a broken one that backout detects and rolls back by itself.

    Needs only Docker with Compose v2 (the images build FROM debian:bookworm-slim);
    about 2 minutes once the images exist. Everything is removed afterwards.
    """
    from backout.demo import run_demo

    Docker(ctx.env).ping()
    return run_demo(ctx.env.stdout, keep=keep, workdir=workdir, watch_seconds=watch_seconds,
                    color=ctx.env.color(ctx.env.stdout))
