"""``backout checkpoint`` and ``backout backup``: the plan and its actions.

A checkpoint is the current release plus a backup set of every configured
database, as one record. The plan, when ``--quiesce`` is asked for, stops the
app services that write, dumps everything, and starts them again in a step that
runs even when a dump failed (and again on ``backout resume`` after a crash).
"""

from __future__ import annotations

import time
from typing import Any

from backout import __version__
from backout.adapters.git import Git
from backout.backup import offsite
from backout.backup.engines import DumpContext, dump
from backout.backup.volumes import back_up_volume
from backout.config import Config
from backout.errors import NotFoundError, UsageError, did_you_mean
from backout.operations.executor import Action, RunContext
from backout.operations.plan import Plan, Step
from backout.storage import sets

# Keys of the steps other steps (and callers) find by key.
STOP_WRITERS = "stop-writers"
START_WRITERS = "start-writers"
PUBLISH = "publish"
RECORD_CHECKPOINT = "record-checkpoint"


def dump_key(database: str) -> str:
    return f"dump:{database}"


def volume_key(volume: str) -> str:
    return f"volume:{volume}"


def writers(config: Config, databases: list[str]) -> list[str]:
    """App services that write to any of ``databases`` (configured by writes_to)."""
    return sorted(s.name for s in config.services.values()
                  if s.kind == "app" and set(s.writes_to) & set(databases))


def plan_backup(config: Config, *, which: list[str], quiesce: bool, checkpoint: bool,
                label: str | None, copy_soft: bool = False) -> Plan:
    """``which`` names databases and volumes (by their backout.toml section names).
    With [repositories.*], the published set is copied to each (``copy_soft``: a failed
    copy is a warning, not the plan's failure; it stays pending either way)."""
    unknown = [w for w in which if w not in config.databases and w not in config.volumes]
    if unknown:
        configured = [*config.databases, *config.volumes]
        raise NotFoundError(f'no database or volume "{unknown[0]}" in backout.toml'
                            + did_you_mean(unknown[0], configured),
                            fix=f"configured: {', '.join(configured) or 'none'} (or `all`)")
    if not which:
        raise UsageError("nothing configured to back up",
                         fix="add [databases.*] (or [volumes.*]) sections to backout.toml "
                             "(see `backout init`)")
    dbs = [w for w in which if w in config.databases]
    vols = [w for w in which if w in config.volumes]
    set_id = sets.new_set_id()
    steps: list[Step] = [Step("clean up interrupted backups", "backup.cleanup",
                              "remove partial sets left by interrupted runs (never a published set)",
                              {"keep": set_id}, key="cleanup")]
    stopped = writers(config, dbs) if quiesce else []
    if quiesce:
        if not stopped:
            raise UsageError("--quiesce: no app service is configured to write to "
                             f"{', '.join(dbs) or 'a database'}",
                             fix="set services.<name>.writes_to in backout.toml")
        steps.append(Step(f"stop writers: {', '.join(stopped)}", "compose.stop",
                          f"pause writes so {', '.join(dbs)} share one point in time "
                          "(downtime for these services until the dumps finish)",
                          {"services": stopped}, key=STOP_WRITERS))
    for name in dbs:
        db = config.databases[name]
        steps.append(Step(f"dump {name}", "backup.dump",
                          f"{db.type} on service {db.service}: consistent dump into the "
                          f"partial set (read-only for the database)",
                          {"database": name, "set_id": set_id}, key=dump_key(name)))
    steps += _volume_steps(config, vols, set_id)
    if quiesce:
        steps.append(Step(f"start writers: {', '.join(stopped)}", "compose.start",
                          "writers run again, also when a dump failed",
                          {"services": stopped, "stop_step": STOP_WRITERS}, always=True,
                          key=START_WRITERS))
    steps.append(Step("publish backup set", "backup.publish",
                      "verify every artifact is listed, write manifest.json last, rename the set "
                      "into place atomically", {"set_id": set_id, "databases": dbs,
                                                "volumes": vols, "quiesce": quiesce,
                                                "label": label,
                                                "kind": "checkpoint" if checkpoint else "backup"},
                      key=PUBLISH))
    steps.append(Step("remove the partial set if it was not published", "backup.discard",
                      "a failed backup must not leave a half-written set (or fill the disk)",
                      {"set_id": set_id}, always=True, key="discard"))
    if checkpoint:
        steps.append(Step("record checkpoint", "backup.record_checkpoint",
                          "link the backup set to the current release", {"set_id": set_id,
                                                                         "label": label},
                          key=RECORD_CHECKPOINT))
    if config.repositories:
        steps.append(offsite.copy_step(config, set_id, soft=copy_soft))
    summary = (f"{'checkpoint' if checkpoint else 'backup'} of {', '.join(which)}"
               f"{' (quiesced)' if quiesce else ''} into set {set_id}")
    downtime = [f"{', '.join(stopped)} stopped while the dumps run"] if quiesce else []
    downtime += [f"{config.volumes[v].service} stopped while volume {v} is copied"
                 for v in vols if config.volumes[v].stop_service]
    return Plan("checkpoint" if checkpoint else "backup",
                {"set_id": set_id, "databases": dbs, "volumes": vols, "quiesce": quiesce,
                 "label": label},
                tuple(steps), summary=summary,
                downtime="; ".join(downtime) or "none (online dumps)")


def _volume_steps(config: Config, names: list[str], set_id: str) -> list[Step]:
    steps: list[Step] = []
    for name in names:
        vol = config.volumes[name]
        stop = f"stop-for-volume:{name}"
        if vol.stop_service:
            steps.append(Step(f"stop {vol.service} for volume {name}", "compose.stop",
                              f"a consistent copy of volume {vol.volume}: {vol.service} is down "
                              "until the tar is done", {"services": [vol.service]}, key=stop))
        steps.append(Step(f"back up volume {name}", "backup.volume",
                          f"tar of docker volume {vol.volume} by a throwaway container (mounted "
                          "read-only) into the partial set",
                          {"volume": name, "set_id": set_id}, key=volume_key(name)))
        if vol.stop_service:
            steps.append(Step(f"start {vol.service} after volume {name}", "compose.start",
                              f"{vol.service} runs again, also when the tar failed",
                              {"services": [vol.service], "stop_step": stop}, always=True,
                              key=f"start-after-volume:{name}"))
    return steps


def _cleanup(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    return {"removed": sets.cleanup_partials(ctx.config.backup_dir, keep=params["keep"])}


def _discard(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    writer = sets.SetWriter(ctx.config.backup_dir, params["set_id"])
    if writer.final.is_dir():
        return {"discarded": False}
    writer.discard()
    return {"discarded": True}


def _stop(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    """Stop those of the services that run; remember which, so only they are started."""
    start = time.time()
    running = ctx.platform.stop(params["services"])
    return {"stopped_at": start, "stopped": running}


def _start(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    if "stop_step" in params:
        stop = results.get(params["stop_step"])
        if stop is None and not _started(ctx, params["stop_step"]):
            # an earlier step failed before the stop: we stopped nothing, so start nothing
            return {"started_at": time.time(), "started": []}
    else:  # plans journaled before stop_step existed: their only stop stopped the writers
        stop = results.get(STOP_WRITERS)
    # Without a record of the stop (a crash inside it), start them all: uptime wins
    # over the rare service an operator had stopped on purpose.
    services = stop["stopped"] if stop is not None else params["services"]
    if services:
        ctx.platform.start(services)
    return {"started_at": time.time(), "started": services}


def _started(ctx: RunContext, step_key: str) -> bool:
    """Did this operation ever start the step (journaled, even if it crashed inside)?"""
    return ctx.store.step_started(ctx.operation_id, step_key)


def _dump(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    config = ctx.config
    writer = sets.SetWriter(config.backup_dir, params["set_id"]).open()
    dctx = DumpContext(ctx.env, config, ctx.platform)
    return dump(dctx, config.databases[params["database"]], writer.dir)


def _volume(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    config = ctx.config
    writer = sets.SetWriter(config.backup_dir, params["set_id"]).open()
    return back_up_volume(ctx.env, config, ctx.platform, config.volumes[params["volume"]],
                          writer.dir)


def _publish(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    config, env = ctx.config, ctx.env
    writer = sets.SetWriter(config.backup_dir, params["set_id"])
    if writer.final.is_dir() and not writer.dir.exists():
        sets.read_manifest(writer.final)  # resumed after the rename: already published
        return {"set_id": params["set_id"], "path": str(writer.final)}
    databases: dict[str, Any] = {}
    artifacts: dict[str, Any] = {}
    for name in params["databases"]:
        section = results[dump_key(name)]
        databases[name] = section["database"]
        art = dict(section["artifact"])
        artifacts[art.pop("name")] = art
    volumes: dict[str, Any] = {}
    for name in params.get("volumes", []):
        section = results[volume_key(name)]
        volumes[name] = section["volume"]
        art = dict(section["artifact"])
        artifacts[art.pop("name")] = art
    paused = None
    stop, start = results.get(STOP_WRITERS), results.get(START_WRITERS)
    if stop and start:
        paused = round(start["started_at"] - stop["stopped_at"], 3)
    tree = Git(env, config.project_dir).state(config.own_paths)
    images = ctx.platform.running_images()
    manifest = {
        "format": sets.FORMAT, "format_version": sets.FORMAT_VERSION,
        "id": params["set_id"], "kind": params["kind"], "label": params["label"],
        "tool": {"name": "backout", "version": __version__},
        "created_at": _iso(min((_dump_start(results, n) for n in params["databases"]),
                               default=time.time())),
        "completed_at": _iso(time.time()),
        "git_commit": tree.commit, "git_dirty": tree.dirty,
        "images": images,
        "quiesce": {"enabled": params["quiesce"], "writers_paused_seconds": paused},
        "databases": databases, "volumes": volumes, "artifacts": artifacts,
        "operation_id": ctx.operation_id,
    }
    path = writer.publish(manifest)
    ctx.store.record_verification(params["set_id"], ok=True, kind="checksum",
                              detail="verified as it was written")
    env.log_external(f"published backup set {path}")
    return {"set_id": params["set_id"], "path": str(path)}


def _dump_start(results: dict[str, Any], name: str) -> float:
    section = results.get(dump_key(name)) or {}
    return float(time.time() - section.get("database", {}).get("duration_s", 0))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _record_checkpoint(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    from backout.releases import current_or_new_release

    store = ctx.store
    existing = store.checkpoint_of_set(params["set_id"])
    if existing is not None:  # resumed after a crash between insert and journal
        return {"checkpoint_id": existing.id, "release_id": existing.release_id}
    release_id = current_or_new_release(ctx.env, ctx.config, store, ctx.platform)
    cp_id = store.add_checkpoint(release_id=release_id, label=params["label"],
                                 set_id=params["set_id"])
    store.record_event("checkpoint", target=f"checkpoint {cp_id}", reason=params["label"],
                       detail={"set_id": params["set_id"], "release_id": release_id})
    return {"checkpoint_id": cp_id, "release_id": release_id}


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "backup.cleanup": _cleanup,
    "backup.discard": _discard,
    "compose.stop": _stop,
    "compose.start": _start,
    "backup.dump": _dump,
    "backup.volume": _volume,
    "backup.publish": _publish,
    "backup.record_checkpoint": _record_checkpoint,
}
