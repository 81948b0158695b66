"""``backout deploy``: the runbook's pre-migration checklist and the watch, as one
journaled operation.

    record the running release -> checkpoint -> switch code -> build -> up
    (waited healthy) -> record the new release -> verify -> watch under the policy
    [only if a step failed]  decide -> code back -> previous images -> (data back)
                             -> up -> verify
    [always]                 record the outcome (release status, incident timeline)

The rollback steps are part of the same plan (``on_failure``), so a ``kill -9``
anywhere, then ``backout resume``, finishes the deploy or its rollback exactly as
an uninterrupted run would. Each rollback step re-checks reality: when the failure
came before anything changed (say the checkpoint failed), there is nothing to undo.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backout import engines, switch
from backout.adapters.git import Git, GitWrite
from backout.backup.operation import plan_backup, writers
from backout.config import Config
from backout.deploy.preflight import Preflight
from backout.deploy.watch import INCIDENT_FACT, RED_ACTIONS_FACT, watch
from backout.errors import UnhealthyError, VerificationFailedError
from backout.operations.executor import Action, RunContext, call_action
from backout.operations.plan import Plan, Step
from backout.releases import current_or_new_release, record_release
from backout.rollback.db import data_steps, resolve_backup, restore_key, start_step
from backout.verify import EXPECTED_IMAGES, run_verify

# Step keys (results are found under them; the names are for the operator).
PREVIOUS = "deploy:previous"
RECORD = "record-release"
WATCH = "deploy:watch"
DECIDE = "deploy:decide"
RB_VERIFY = "rollback:verify"
OUTCOME = "deploy:outcome"

# outcome -> what it means, for the operator and CI (exit codes in the CLI)
OUTCOMES = {
    "deployed": "deployed and healthy",
    "rolled_back": "rolled back to the previous release, verified",
    "needs_human": "the rollback did not verify: left for a human",
    "failed": "failed before anything changed",
}


def plan_deploy(config: Config, pf: Preflight, *, watch_seconds: int, with_data: bool,
                label: str | None = None, definition: dict[str, Any] | None = None) -> Plan:
    """``definition``: the stack as it runs now; its stateless services get a
    start-first switch before ``compose up`` (None: none, everything via compose up)."""
    short = pf.commit[:12]
    head = pf.head or ""
    steps: list[Step] = [Step("record the release running now", "deploy.previous",
                              "the release to come back to: its images get backout's tags so "
                              "nothing can prune them", {}, key=PREVIOUS)]
    set_id = None
    if config.databases:
        checkpoint = plan_backup(config, which=list(config.databases), quiesce=False,
                                 checkpoint=True, label=label or f"before deploy of {pf.ref}",
                                 copy_soft=True)
        set_id = checkpoint.params["set_id"]
        steps += checkpoint.steps
    if pf.dirty:
        steps.append(Step("save uncommitted changes", "emergency.save_changes",
                          "the operator's changes are kept as a patch under .backout/saved and a "
                          "git stash (nothing is discarded)", {"target": pf.ref},
                          key="save-changes"))
    steps += [
        Step(f"switch code to {short}", "emergency.checkout",
             f"HEAD {head[:12]} -> {short} ({pf.ref}; detached: no branch is moved)",
             {"commit": pf.commit}, key="checkout"),
        Step("build images", "deploy.build", "build the services whose build context changed "
                                             "between the two commits, or whose image is missing",
             {"from": head, "to": pf.commit}, key="deploy:build"),
        *switch.stack_steps(config, definition or {}),
        Step("start the new release", "deploy.up",
             "the new commit's stack brought up and waited for; changed services are "
             "replaced (Compose: docker compose up -d in dependency order, then waited for as "
             "its --wait would; Swarm: "
             "docker stack deploy, then its tasks)"
             + (" (those switched start-first above are up to date)" if definition else ""),
             {}, key="deploy:up"),
        Step("record the new release", "deploy.record", "commit, resolved config and image IDs "
                                                        "of the new release; its images retained",
             {"ref": pf.ref}, key=RECORD),
        Step("verify the new release", "deploy.verify", "the post-deploy checks: containers, "
                                                        "health URLs, logs, databases, images",
             {}, key="deploy:verify"),
        Step("watch the new release", "deploy.watch",
             f"{watch_seconds}s under the decision matrix; RED means roll back"
             if watch_seconds else "no watch period (--watch 0)",
             {"seconds": watch_seconds}, key=WATCH),
        Step("decide the rollback", "deploy.decide", "whether anything changed that must be "
                                                     "undone, and the data too; opens the incident",
             {"head": head, "with_data": with_data}, on_failure=True, key=DECIDE),
    ]
    rb = _rollback_steps(config, head, set_id, with_data)
    steps += rb
    steps.append(Step("record the outcome", "deploy.outcome", "release status and the incident "
                                                             "timeline",
                      {"ref": pf.ref}, always=True, key=OUTCOME))
    return Plan("deploy", {"ref": pf.ref, "commit": pf.commit, "previous_commit": head,
                           "set_id": set_id, "with_data": with_data,
                           "watch_seconds": watch_seconds},
                tuple(steps),
                summary=f"deploy {pf.ref} ({short}), watched for {watch_seconds}s"
                        + (", checkpoint first" if set_id else ""),
                downtime=switch.whole_stack_downtime(steps)
                         + "; if it is rolled back, the services whose image changes are "
                           "replaced one by one, stop-first"
                         + (", with app services stopped while the databases are restored"
                            if with_data else ""))


def _wrap(step: Step, fill: str | None = None, data: bool = False,
          after_data: bool = False) -> Step:
    """A rollback step of the deploy: runs only after a failure, and only acts if
    the decision says so (``data``: only for a rollback with data; ``after_data``:
    not when the data could not be restored)."""
    return Step(step.name, "deploy.rollback_step", step.reason,
                {"action": step.action, "params": step.params, "fill": fill, "data": data,
                 "after_data": after_data}, on_failure=True, key=step.key)


def _rollback_steps(config: Config, head: str, set_id: str | None,
                    with_data: bool) -> list[Step]:
    """Data first (verify, stop writers, safety backups, restores, undo), then the code
    and images of the previous release, up, writers started, verify. When the data
    cannot be restored, the previous release is not started on the new release's data:
    the writers are started again and a human decides."""
    steps: list[Step] = []
    stopped: list[str] = []
    if set_id is not None:
        # Always planned when there is a checkpoint; they act only with --migration
        # or when the RED rule asks for the data back (rollback-with-data).
        when = "" if with_data else " (only if the RED rule's action is rollback-with-data)"
        dbs = list(config.databases)
        stopped = writers(config, dbs)
        targets = {name: {"set_id": set_id} for name in dbs}
        head_steps, undo = data_steps(config, targets,
                                      {name: f"{set_id}-safety-{name}" for name in dbs}, when=when)
        steps += [_wrap(s, fill="backup" if s.action in ("rollback.db.verify", "rollback.db.restore")
                        else None, data=True) for s in head_steps]
        steps += [_wrap(s, data=True) for s in undo]
    steps += [
        _wrap(Step(f"roll back: code to {head[:12]}", "emergency.checkout",
                   "the deployment repository back at the previous release's commit",
                   {"commit": head}, key="rollback:checkout"), after_data=True),
        _wrap(Step("roll back: previous images", "emergency.images",
                   "the previous release's retained images under the names the compose files "
                   "use; nothing rebuilt or pulled", {"rebuild": []}, key="rollback:images"),
              fill="images",
              after_data=True),
        _wrap(Step("roll back: start the previous release", "emergency.up",
                   "the stack brought up and waited for at the previous commit (no build, "
                   "no pull)", {},
                   key="rollback:up"), after_data=True),
    ]
    if stopped:
        steps.append(_wrap(start_step(stopped), data=True))
    steps.append(_wrap(Step("roll back: verify", "emergency.verify",
                            "the runbook's post-rollback checks; if they fail, a human decides",
                            {}, key=RB_VERIFY), after_data=True))
    return steps


def _previous(ctx: RunContext, _params: dict[str, Any], _r: dict[str, Any]) -> Any:
    store = ctx.store
    release_id = current_or_new_release(ctx.env, ctx.config, store, ctx.platform)
    release = store.release(release_id) or {}
    images = {svc: info["image_id"] for svc, info in release.get("services", {}).items()}
    return {"release_id": release_id, "images": images}


def _build(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    """Build what changed: a service with a build section whose image is missing, or
    whose build context has files that differ between the two commits."""
    env, config, platform = ctx.env, ctx.config, ctx.platform
    data = platform.definition()
    project = platform.project_name(data)
    changed = Git(env, config.project_dir).changed_files(params["from"], params["to"]) \
        if params["from"] else None
    if changed is not None:
        # The compose files, .env and backout's own files are deployment settings, not
        # build input (a context of "." holds them too): a change there alone builds
        # nothing.
        settings = {*config.project.compose_files, config.project.env_file or "",
                    *config.own_paths}
        changed = [f for f in changed if f not in settings
                   and not any(f.startswith(f"{p}/") for p in config.own_paths)]
    build: list[str] = []
    for svc, spec in sorted((data.get("services") or {}).items()):
        if not spec.get("build"):
            continue
        ref = str(spec.get("image") or f"{project}-{svc}")
        context = Path(str(spec["build"].get("context", "."))).resolve()
        try:
            rel = context.relative_to(config.project_dir.resolve())
        except ValueError:
            rel = None  # a context outside the repository: git cannot tell, build it
        touched = changed is None or rel is None or any(
            rel == Path(".") or Path(f).is_relative_to(rel) for f in changed)
        if touched or platform.image(ref) is None:
            build.append(svc)
    if build and not platform.builds_images:
        return {"skipped": f"{platform.kind} builds no image: {', '.join(build)} must be "
                           "in the registry already (pushed with the commit)"}
    if build:
        platform.build(build)
    return {"built": build}


def _up(ctx: RunContext, _params: dict[str, Any], _r: dict[str, Any]) -> Any:
    started = datetime.now(UTC).isoformat()
    engines.load_drivers_meanwhile(db.type for db in ctx.config.databases.values())
    try:
        ctx.platform.converge(pull=True)
    except UnhealthyError as exc:
        raise UnhealthyError(f"the new release did not come up healthy: {exc.message}") from exc
    return {"started_at": started}


def _record(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    rec = record_release(ctx.env, ctx.config, ctx.store, ctx.platform,
                         note=f"deploy of {params['ref']}")
    ctx.store.set_fact(EXPECTED_IMAGES, {s: i["image_id"] for s, i in rec.services.items()})
    return {"release_id": rec.id}


def _verify(ctx: RunContext, _params: dict[str, Any], results: dict[str, Any]) -> Any:
    config = ctx.config
    # Errors logged while containers were recreated (a proxy losing its upstream for a
    # moment) are the deploy's expected blip; what counts is the release once it is up.
    result = run_verify(ctx.env, config, ctx.store, ctx.platform,
                        settle=min(config.verify.settle_seconds, 10), since=datetime.now(UTC))
    if not result.ok:
        raise VerificationFailedError("the new release failed verification: "
                                      + "; ".join(f"{c.name}: {c.detail}" for c in result.failed))
    return result.to_json()


def _watch(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    return watch(ctx.env, ctx.config, ctx.store, ctx.platform, float(params["seconds"]),
                 ctx.operation_id, on_decision=ctx.on_decision)


def _decide(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    env, config, store = ctx.env, ctx.config, ctx.store
    failed = store.first_failed_step(ctx.operation_id)
    detail = failed["detail"] if failed and isinstance(failed["detail"], dict) else {}
    reason = (f"{failed['name']}: " + str(detail.get("error", "failed"))
              if failed else "an earlier step failed")
    head = GitWrite(Git(env, config.project_dir)).head()
    previous = results.get(PREVIOUS, {}).get("images", {})
    running = ctx.platform.running_images()
    changed = (bool(params["head"]) and head != params["head"]) or any(
        running.get(svc) != image for svc, image in previous.items())
    if not changed:
        return {"needed": False, "reason": reason}
    if PREVIOUS not in results:
        # Cannot happen in a sane run (nothing changes before it), but never guess.
        return {"needed": False, "reason": reason, "problem": "no previous release recorded"}
    iid = store.fact(INCIDENT_FACT.format(op=ctx.operation_id))
    if iid is None:
        iid = store.open_incident(rule="deploy", level="RED", severity="SEV-1", reason=reason,
                                  values={"operation": ctx.operation_id})
        store.set_fact(INCIDENT_FACT.format(op=ctx.operation_id), iid)
    store.incident_event(int(iid), "action", {"rollback": "previous release "
                                              f"{results[PREVIOUS]['release_id']}",
                                              "automatic": True, "reason": reason})
    red_actions = store.fact(RED_ACTIONS_FACT.format(op=ctx.operation_id)) or []
    with_data = bool(params.get("with_data")) or "rollback-with-data" in red_actions
    return {"needed": True, "reason": reason, "incident": iid, "with_data": with_data,
            "to_release": results[PREVIOUS]["release_id"]}


def _rollback_step(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    decision = results.get(DECIDE) or {}
    if not decision.get("needed"):
        return {"skipped": "nothing to roll back"}
    if params.get("data") and not decision.get("with_data"):
        return {"skipped": "code-only rollback: the data stays"}
    env, config, store = ctx.env, ctx.config, ctx.store
    if params.get("after_data") and decision.get("with_data"):
        unrestored = [name for name in config.databases
                      if "skipped" in (results.get(restore_key(name)) or {"skipped": True})]
        if unrestored:
            return {"skipped": f"the data of {', '.join(unrestored)} could not be restored: "
                               "the previous release is not started on the new release's "
                               "data; a human decides"}
    inner = dict(params["params"])
    if params.get("fill") == "images":
        inner["images"] = results[PREVIOUS]["images"]
    elif params.get("fill") == "backup":
        db = config.databases[inner["database"]]
        inner.update(resolve_backup(env, config, store, db, inner["set_id"]))
    return call_action(params["action"], ctx, inner, results)


def _outcome(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    store = ctx.store
    new_release = (results.get(RECORD) or {}).get("release_id")
    decision = results.get(DECIDE)
    iid = store.fact(INCIDENT_FACT.format(op=ctx.operation_id))
    if WATCH in results:
        outcome = "deployed"
    elif decision is None and store.step_status(ctx.operation_id, DECIDE) == "failed":
        outcome = "needs_human"  # could not even tell what changed: a human looks
    elif decision is None or not decision.get("needed"):
        outcome = "failed"
    elif RB_VERIFY in results and "skipped" not in results[RB_VERIFY]:
        outcome = "rolled_back"
    else:
        outcome = "needs_human"
    if new_release is not None:
        store.update_release(int(new_release), status={"deployed": "deployed",
                                                       "rolled_back": "rolled_back"}
                             .get(outcome, "failed"))
    if iid is not None:
        iid = int(iid)
        if outcome == "rolled_back":
            store.incident_event(iid, "verified", {"checks": len(results[RB_VERIFY]["checks"])})
            store.incident_event(iid, "resolved", {"reason": "rolled back to release "
                                                   f"{decision and decision.get('to_release')}"})
        elif outcome == "needs_human":
            store.incident_event(iid, "escalated", {"error": "the rollback did not verify"})
    store.record_event(f"deploy.{outcome}", target=f"deploy of {params['ref']}",
                       reason=(decision or {}).get("reason"),
                       detail={"release_id": new_release, "incident": iid})
    return {"outcome": outcome, "release_id": new_release, "incident": iid,
            "reason": (decision or {}).get("reason"), "finished_at": time.time()}


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "deploy.previous": _previous,
    "deploy.build": _build,
    "deploy.up": _up,
    "deploy.record": _record,
    "deploy.verify": _verify,
    "deploy.watch": _watch,
    "deploy.decide": _decide,
    "deploy.rollback_step": _rollback_step,
    "deploy.outcome": _outcome,
}
