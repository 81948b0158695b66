"""``backout rollback emergency TARGET [--with-data]``: the whole stack back.

TARGET is a checkpoint (cpN, or a backup set id), a release (N, rN, release:N), or
a git commit or tag. The deployment repository is switched to the target commit
(detached; the branch is not moved) after the operator's uncommitted changes are
saved as a patch and a stash, never discarded. Every service gets the target
release's retained image (re-tagged under the name the compose files use, so
nothing is rebuilt or pulled); only an image the target never had is built.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from backout import engines, switch
from backout.adapters.git import Git, GitWrite
from backout.backup import data_loss, offsite
from backout.backup.operation import writers
from backout.config import Config
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import NotFoundError, UnhealthyError, UsageError, VerificationFailedError
from backout.operations.executor import Action, RunContext
from backout.operations.plan import Plan, Step
from backout.platforms.base import Platform
from backout.rollback import common
from backout.rollback.db import data_steps, downtime, resolve_backup, start_step
from backout.state import Store
from backout.storage import sets
from backout.verify import EXPECTED_IMAGES, run_verify


def resolve(env: Environment, config: Config, store: Store, platform: Platform, target: str,
            with_data: bool) -> dict[str, Any]:
    git = Git(env, config.project_dir)
    if not git.is_repo():
        raise git.not_a_repo("an emergency rollback switches the code to the target's commit")
    checkpoint = None
    release = None
    m = common.CHECKPOINT_REF.match(target)
    set_like = offsite.is_known_set(env, config, store, target)
    if m or set_like:
        checkpoint = store.checkpoint(int(m.group(1))) if m else store.checkpoint_of_set(target)
        if checkpoint is None:
            raise NotFoundError(f"no checkpoint {target}", fix="list them with `backout backups list`")
        release = store.release(checkpoint.release_id) \
            if checkpoint.release_id is not None else None
    else:
        try:
            release = common.release_by_ref(store, target)
        except NotFoundError:
            release = None
            if not common.RELEASE_REF.match(target) or not _looks_like_commit(git, target):
                raise
    if release is not None:
        commit = release["git_commit"]
        if not commit:
            raise UsageError(f"release {release['id']} has no git commit recorded")
    else:
        commit = git.resolve(target)
        rows = [r for r in store.releases() if r["git_commit"] == commit]
        release = rows[0] if rows else None
    if with_data and checkpoint is None:
        rid = release["id"] if release else None
        checkpoint = store.latest_checkpoint(release_id=rid) if rid else None
        if checkpoint is None:
            raise NotFoundError(f"--with-data: no checkpoint was taken for {target}",
                                fix="name a checkpoint (cpN) as TARGET, or roll back the code only")
    has_source = GitWrite(git).has_commit(commit)
    images: dict[str, str] = {}
    missing: list[str] = []
    if release is not None:
        for svc, info in release["services"].items():
            if platform.image(info["image_id"]) is not None:
                images[svc] = info["image_id"]
            else:
                missing.append(svc)
    if missing and not has_source:
        raise NotFoundError(f"the images of {', '.join(missing)} for {target} are gone and so is "
                            f"commit {commit[:12]}: nothing to rebuild them from",
                            fix="pick another target (`backout releases`)")
    if not has_source:
        raise NotFoundError(f"commit {commit[:12]} of {target} is not in the repository",
                            fix="fetch it (git fetch) or pick another target")
    return {"commit": commit, "release_id": release["id"] if release else None,
            "checkpoint_id": checkpoint.id if checkpoint else None,
            "set_id": checkpoint.set_id if checkpoint else None, "images": images,
            "rebuild": missing}


def _looks_like_commit(git: Git, ref: str) -> bool:
    try:
        git.resolve(ref)
        return True
    except NotFoundError:
        return False


def plan(env: Environment, config: Config, store: Store, platform: Platform, target: str,
         with_data: bool) -> Plan:
    t = resolve(env, config, store, platform, target, with_data)
    git = Git(env, config.project_dir)
    head_commit = GitWrite(git).head()
    tree = git.state(config.own_paths)
    short = t["commit"][:12]
    steps = [Step("save uncommitted changes", "emergency.save_changes",
                  "the operator's changes are kept as a patch under .backout/saved and a git stash "
                  "(nothing is discarded)" if tree.dirty else
                  "the tree is clean; nothing to save", {"target": target},
                  key="save-changes")]
    data_dbs: list[str] = []
    stopped: list[str] = []
    loss: list[dict[str, Any]] = []
    targets: dict[str, dict[str, Any]] = {}
    if with_data and t["set_id"]:
        # The data first, while the code is untouched: a failed restore then leaves
        # everything as it was (safety backups back, the old containers started).
        manifest, _copy = offsite.set_manifest(env, config, store, t["set_id"])
        data_dbs = [d for d in config.databases if d in manifest["databases"]]
        stopped = writers(config, data_dbs)
        safety = sets.new_set_id()
        targets = {name: resolve_backup(env, config, store, config.databases[name], t["set_id"])
                   for name in data_dbs}
        head, undo = data_steps(config, targets, {name: f"{safety}-{name}" for name in data_dbs})
        steps += [*head, *undo]
        loss = [data_loss.window(EngineAccess(env, config, config.databases[name], platform),
                                 targets[name]["section"], targets[name].get("taken_at"))
                for name in data_dbs]
    steps.append(Step(f"switch code to {short}", "emergency.checkout",
                      f"HEAD {str(head_commit)[:12]} -> {short} (detached: no branch is moved)",
                      {"commit": t["commit"]}, key="checkout"))
    steps.append(Step("put the target's images in place", "emergency.images",
                      ("re-tag the retained images of release "
                       f"{t['release_id']}; no rebuild or pull" if t["release_id"] else
                       "use the images the compose files name at the target")
                      + (f"; build {', '.join(t['rebuild'])} (the target's images are gone)"
                         if t["rebuild"] else ""),
                      {"images": t["images"], "rebuild": t["rebuild"]}, key="images"))
    # Stateless services switch start-first to the target's image (the service is
    # back before the old container stops); the writers stopped for the data, the
    # databases and whatever the compose file pins go through compose up.
    if not platform.switches_itself:
        steps += switch.stack_steps(config, platform.definition(), exclude=stopped)
    steps.append(Step("bring the stack up at the target", "emergency.up",
                      f"{platform.kind}: the whole stack converged to the target's definition and "
                      "waited for (no build, no pull); containers of services that changed are "
                      "replaced", {}, key="up"))
    if stopped:
        steps.append(start_step(stopped))
    steps.append(Step("verify the stack", "emergency.verify",
                      "the runbook's post-rollback checks (health, restarts, logs, databases, images)",
                      {}, key="verify-stack"))
    desc = f"release {t['release_id']}" if t["release_id"] else f"commit {short}"
    return Plan("rollback.emergency", {"target": target, "with_data": with_data, **t,
                                       "data_loss": loss},
                tuple(steps),
                summary=f"emergency rollback of the whole stack to {desc}"
                        + (f" with the data of checkpoint {t['checkpoint_id']}" if data_dbs else ""),
                downtime=switch.whole_stack_downtime(steps)
                         + (f"; {downtime(config, data_dbs, targets)}" if data_dbs else ""))


def _save(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    env, config = ctx.env, ctx.config
    git = Git(env, config.project_dir)
    tree = git.state(config.own_paths)
    if not tree.dirty:
        return {"saved": False}
    saved = config.state_dir / "saved"
    saved.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    patch = saved / f"op{ctx.operation_id}-{stamp}.patch"
    fd = os.open(patch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tree.diff)
    exclude = list(config.own_paths)
    stash = GitWrite(git).stash_all(f"backout: before emergency rollback (operation "
                                    f"{ctx.operation_id})", exclude)
    rel = str(patch.relative_to(config.project_dir))
    env.warn(f"your uncommitted changes are saved in {rel}"
             + (f" and in git stash {stash[:12]} (`git stash list`)" if stash else ""))
    return {"saved": True, "patch": rel, "stash": stash, "untracked": list(tree.untracked)}


def _checkout(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    gw = GitWrite(Git(ctx.env, ctx.config.project_dir))
    if gw.head() != params["commit"]:
        gw.checkout_detached(params["commit"])
    return {"head": params["commit"]}


def _images(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    platform = ctx.platform
    data = platform.definition()  # at the target commit now
    project = platform.project_name(data)
    tagged = {}
    for svc, spec in (data.get("services") or {}).items():
        image_id = params["images"].get(svc)
        ref = str(spec.get("image") or f"{project}-{svc}")
        if image_id:
            platform.tag(image_id, ref)
            tagged[svc] = ref
    to_build = [svc for svc in (data.get("services") or {})
                if svc not in tagged and platform.image(
                    str(data["services"][svc].get("image") or f"{project}-{svc}")) is None]
    unbuildable = [s for s in to_build if not data["services"][s].get("build")]
    if unbuildable:
        raise NotFoundError(f"no image for {', '.join(unbuildable)} at the target and no build "
                            "section to make one", fix="pick another target")
    if to_build:
        platform.build(to_build)
    return {"tagged": tagged, "built": to_build}


def _up(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    engines.load_drivers_meanwhile(db.type for db in ctx.config.databases.values())
    try:
        ctx.platform.converge(pull=False)
    except UnhealthyError as exc:
        raise UnhealthyError(f"the stack did not become healthy at the target: {exc.message}",
                             fix="inspect with `backout verify` and `docker compose logs`"
                             ) from exc
    running = ctx.platform.running_images()
    ctx.store.set_fact(EXPECTED_IMAGES, running)
    return {"images": running}


def _verify(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    settle = min(ctx.config.verify.settle_seconds, 10)
    # Errors logged while services restarted during the rollback are expected; what
    # counts is the stack once it is up, so logs are read from now (plus the settle).
    since = datetime.now(UTC)
    result = run_verify(ctx.env, ctx.config, ctx.store, ctx.platform, settle=settle, since=since)
    if not result.ok:
        raise VerificationFailedError(
            "verification failed after the rollback: "
            + "; ".join(f"{c.name}: {c.detail}" for c in result.failed),
            fix="investigate now (backout verify, docker compose logs); escalate")
    return result.to_json()


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "emergency.save_changes": _save,
    "emergency.checkout": _checkout,
    "emergency.images": _images,
    "emergency.up": _up,
    "emergency.verify": _verify,
}
