"""``backout rollback db (mysql|mongodb|redis) BACKUP``.

Order, and why (``data_steps``, shared with ``rollback emergency --with-data`` and
the deploy's data rollback): the backup is proven first (checksum, format, counts,
or a parse of an operator's own file) so nothing changes for a bad one; the
services that write are stopped, so that the safety backup taken next holds every
write they acknowledged; the restore replaces the data and its counts are checked;
if a restore failed or was interrupted, the safety backup is put back; the writers
are started again in every case. The data-loss window is shown in the plan and
measured again right before the restore.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from backout import __version__, engines
from backout.adapters.docker import ENGINE_FIX
from backout.backup import data_loss, offsite, restore
from backout.backup.engines import (
    DumpContext,
    artifact_name,
    dump,
    manifest_counts,
)
from backout.backup.operation import START_WRITERS, STOP_WRITERS, writers
from backout.backup.verify import check_artifact
from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import (
    BackoutError,
    DockerUnavailableError,
    ExternalError,
    InterruptedOperation,
    NotFoundError,
    UsageError,
    did_you_mean,
)
from backout.operations.executor import Action, RunContext
from backout.operations.plan import Plan, Step
from backout.platforms.base import Platform
from backout.rollback import common
from backout.state import Store
from backout.storage import sets
from backout.storage.pipeline import IntegrityError, StalledError, head_of


def database(config: Config, name: str) -> DatabaseConfig:
    if name in config.databases:
        return config.databases[name]
    by_type = [d for d in config.databases.values() if d.type == name]
    if len(by_type) == 1:
        return by_type[0]
    raise NotFoundError(f'no database "{name}" in backout.toml' + did_you_mean(name, config.databases),
                        fix=f"configured: {', '.join(config.databases) or 'none'}")


def _sniff(env: Environment, path: Path) -> str | None:
    """The database type a file's first bytes say it belongs to: the engine most
    sure of it (a magic string over a structure over a heuristic); table order
    breaks ties."""
    head = b"" if path.is_dir() else head_of(env, path)
    best, kind = 0, None
    for engine in engines.all_engines():
        score = engine.sniff(head, path)
        if score > best:
            best, kind = score, engine.type
    return kind


def resolve_backup(env: Environment, config: Config, store: Store, db: DatabaseConfig,
                   ref: str) -> dict[str, Any]:
    """{"artifact": path, "section": manifest section or None, "source": words, ...}."""
    m = common.CHECKPOINT_REF.match(ref)
    if m:
        checkpoint = store.checkpoint(int(m.group(1)))
        if checkpoint is None:
            raise NotFoundError(f"no checkpoint {m.group(1)}", fix="list them with `backout backups list`")
        ref = checkpoint.set_id
    path = Path(ref)
    if offsite.is_known_set(env, config, store, ref) or (
            not path.exists() and "/" not in ref and config.repositories):
        # Local, or only in a repository (the local set pruned or its disk lost): then
        # a fetch step brings it back before the verify step proves it.
        manifest, copy = offsite.set_manifest(env, config, store, ref)
        section = manifest["databases"].get(db.name)
        if section is None:
            raise NotFoundError(f"backup {ref} holds no {db.name} dump "
                                f"(it has {', '.join(manifest['databases'])})")
        name = section["artifacts"][0]
        return {"artifact": str(config.backup_dir / ref / name), "section": section,
                "source": f"backup {ref}" + (f" (copy in {copy.repository})" if copy else ""),
                "sha256": manifest["artifacts"][name]["sha256"], "set_id": ref,
                "taken_at": manifest.get("created_at"),
                **({"fetch": {"repository": copy.repository, "snapshot": copy.snapshot}}
                   if copy else {})}
    if not path.exists():
        raise NotFoundError(f'no backup "{ref}": neither a backup id, a checkpoint (cpN) nor a file',
                            fix="list them with `backout backups list`")
    kind = _sniff(env, path)
    if kind != db.type:
        found = engines.get(kind).description if kind else "not a dump backout recognises"
        raise UsageError(f"{ref} is {found}, not {engines.get(db.type).description} for {db.name}",
                         fix=f"name a {db.type} dump, or the right database")
    return {"artifact": str(path.resolve()), "section": None, "source": f"file {ref}",
            "sha256": None, "set_id": None,
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))}


def verify_key(db: str) -> str:
    return f"verify:{db}"


def safety_key(db: str) -> str:
    return f"safety:{db}"


def restore_key(db: str) -> str:
    return f"restore:{db}"


def data_steps(config: Config, targets: dict[str, dict[str, Any]], safety_ids: dict[str, str],
               *, when: str = "", safety_hint: str | None = None) -> tuple[list[Step], list[Step]]:
    """The data part of every plan that restores (rollback db, emergency --with-data,
    the deploy's data rollback), in the order integrity needs:

        verify every backup            nothing has changed yet, no downtime
        stop the writers               from here on nothing acknowledges a write
        safety backup of each database so it holds every acknowledged write
        restore each database          each needs all of the above done
        (always) put the safety backups back if any restore failed, so the data is
                 either fully restored or fully as before

    Returns (steps up to the restores, the undo steps); the caller places the writers'
    start (always) after whatever else it does. ``targets``: database -> verify and
    restore parameters; ``safety_ids``: database -> safety set id (none: the operator
    accepted a restore without one).
    """
    dbs = list(targets)
    stopped = writers(config, dbs)
    fetches = {t["set_id"]: offsite.fetch_step(t["set_id"], offsite.RemoteCopy(**t["fetch"]))
               for t in targets.values() if t.get("fetch")}
    head: list[Step] = [*fetches.values()]
    head += [
        Step(f"verify {name} backup", "rollback.db.verify",
             f"prove {targets[name].get('source') or 'the backup'} whole before anything "
             "changes (checksum, format, counts)" + when,
             {"database": name, **targets[name]}, key=verify_key(name)) for name in dbs]
    requires = [verify_key(name) for name in dbs]
    if stopped:
        head.append(Step(f"stop writers: {', '.join(stopped)}", "compose.stop",
                         "nothing may write from here on: the safety backup then holds every "
                         "acknowledged write, and nothing writes into a half-restored database"
                         + when, {"services": stopped}, key=STOP_WRITERS))
        requires.append(STOP_WRITERS)
    for name in dbs:
        if name in safety_ids:
            head.append(Step(f"safety backup of {name}", "rollback.db.safety",
                             f"so the restore can itself be undone (set {safety_ids[name]}); "
                             "dumps what exists even if the data is damaged" + when,
                             {"database": name, "set_id": safety_ids[name],
                              "hint": safety_hint}, key=safety_key(name)))
            requires.append(safety_key(name))
    for name in dbs:
        db = config.databases[name]
        head.append(Step(f"restore {name}", "rollback.db.restore",
                         f"{name}: {engines.get(db.type).overwritten(db)}; the restored counts are compared "
                         "with the backup's" + when,
                         {"database": name, **targets[name], "verify_step": verify_key(name),
                          "requires": list(requires), "no_safety": name not in safety_ids},
                         key=restore_key(name)))
        requires.append(restore_key(name))
    undo = [Step(f"put {name}'s safety backup back if a restore failed", "rollback.db.undo",
                 "never leave half-restored data: if any restore of this plan failed, every "
                 "database it touched goes back to its safety backup" + when,
                 {"database": name, "set_id": safety_ids[name]}, always=True,
                 key=f"undo:{name}")
            for name in dbs if name in safety_ids]
    return head, undo


def start_step(stopped: list[str], *, when: str = "") -> Step:
    return Step(f"start writers: {', '.join(stopped)}", "compose.start",
                "writers run again in every case (also when a step failed or was interrupted)"
                + when, {"services": stopped, "stop_step": STOP_WRITERS}, always=True,
                key=START_WRITERS)


def downtime(config: Config, dbs: list[str], targets: dict[str, dict[str, Any]]) -> str:
    """What the writers' stop costs, in words: the safety dumps plus the restores."""
    stopped = writers(config, dbs)
    if not stopped:
        return "none for app services (no service writes to " + ", ".join(dbs) + ")"
    took = [f"{name} {targets[name]['section']['duration_s']:.0f} s" for name in dbs
            if (targets[name].get("section") or {}).get("duration_s") is not None]
    text = (f"{', '.join(stopped)} stopped from before the safety backup until the restore is "
            "checked: the safety dump plus the restore"
            + (f" (the backup's own dump took {', '.join(took)}; a restore takes about as long "
               "or longer)" if took else "")
            + ". Stopping first is what makes the safety backup hold every acknowledged write")
    restarts = [config.databases[n].service for n in dbs
                if engines.get(config.databases[n].type).restarts_on_restore]
    if restarts:
        text += f"; {', '.join(restarts)} restarts"
    return text


def plan(env: Environment, config: Config, store: Store, db_name: str, ref: str, *,
         platform: Platform | None = None, no_safety_backup: bool = False) -> Plan:
    db = database(config, db_name)
    target = resolve_backup(env, config, store, db, ref)
    safety_id = sets.new_set_id()
    safety = {} if no_safety_backup else {db.name: safety_id}
    hint = (f"or, accepting that this restore cannot be undone: `backout rollback db {db.name} "
            f"{ref} --no-safety-backup`")
    head, undo = data_steps(config, {db.name: target}, safety, safety_hint=hint)
    steps = [*head, *undo]
    stopped = writers(config, [db.name])
    if stopped:
        steps.append(start_step(stopped))
    loss = [data_loss.window(EngineAccess(env, config, db, platform), target["section"],
                             target.get("taken_at"))] if platform is not None else []
    return Plan("rollback.db", {"database": db.name, "backup": ref,
                                "safety_set": None if no_safety_backup else safety_id,
                                "data_loss": loss},
                tuple(steps), summary=f"restore {db.name} from {target['source']}"
                + (" WITHOUT a safety backup (cannot be undone)" if no_safety_backup else ""),
                downtime=downtime(config, [db.name], {db.name: target}))


def _access(ctx: RunContext, name: str) -> tuple[Environment, Config, EngineAccess]:
    return ctx.env, ctx.config, EngineAccess(ctx.env, ctx.config, ctx.config.databases[name],
                                             ctx.platform)


def _section_for_file(env: Environment, db: DatabaseConfig, artifact: Path) -> dict[str, Any]:
    return engines.get(db.type).section_for_file(env, db, artifact)




def _prepared_artifact(params: dict[str, Any], config: Config) -> Path:
    """A mongodump directory named by the operator becomes the tar a restore reads."""
    db = config.databases[params["database"]]
    return engines.get(db.type).prepare_artifact(Path(params["artifact"]),
                                                 config.state_dir / "staging")


def _verify(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    env, config, access = _access(ctx, params["database"])
    artifact = _prepared_artifact(params, config)
    if params["section"] is not None:
        check_artifact(env, artifact, params["section"], params["sha256"], params["source"])
        if params.get("set_id"):
            ctx.store.record_verification(params["set_id"], ok=True, kind="checksum",
                                             detail=f"before a restore (operation "
                                                    f"{ctx.operation_id})")
        return {"section": params["section"], "artifact": str(artifact)}
    return {"section": _section_for_file(env, access.db, artifact), "artifact": str(artifact)}


def _safety(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    env, config, store = ctx.env, ctx.config, ctx.store
    writer = sets.SetWriter(config.backup_dir, params["set_id"])
    if writer.final.is_dir():  # resumed after it was published
        manifest = sets.read_manifest(writer.final)
        return _safety_result(params["set_id"], manifest["databases"][params["database"]])
    writer.open()
    db = config.databases[params["database"]]
    try:
        section = dump(DumpContext(env, config, ctx.platform, safety=True), db, writer.dir)
        art = dict(section["artifact"])
        name = art.pop("name")
        stamp = _iso()
        writer.publish({"format": sets.FORMAT, "format_version": sets.FORMAT_VERSION,
                        "id": params["set_id"], "kind": "safety",
                        "label": f"safety backup before a restore (operation {ctx.operation_id})",
                        "tool": {"name": "backout", "version": __version__},
                        "created_at": stamp, "completed_at": stamp,
                        "databases": {db.name: section["database"]}, "artifacts": {name: art},
                        "operation_id": ctx.operation_id})
    except BackoutError as exc:
        # A half-written safety set must not stay behind (nor keep a full disk full).
        writer.discard()
        if isinstance(exc, InterruptedOperation):
            raise
        # The same kind of error (its exit code), saying what it means for the restore.
        exc.message = f"safety backup of {db.name} failed, so nothing was restored: {exc.message}"
        exc.fix = "; ".join(f for f in (exc.fix, params.get("hint")) if f) or None
        raise
    except BaseException:
        writer.discard()
        raise
    store.record_verification(params["set_id"], ok=True, kind="checksum",
                              detail="verified as it was written")
    return _safety_result(params["set_id"], section["database"])


def _safety_result(set_id: str, section: dict[str, Any]) -> dict[str, Any]:
    return {"set_id": set_id, "not_dumped": section.get("not_dumped", []),
            "absent": section.get("absent", [])}


def _safety_section(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]
                    ) -> dict[str, Any] | None:
    """The manifest section of the safety backup this restore's plan took after it
    stopped the writers (None without both). The engine takes its counts for the
    final data-loss window only where its server shows no write since that dump
    began (a writer backout was not told of, writers back before a resumed restore):
    otherwise it counts every table again."""
    database = params["database"]
    taken = results.get(safety_key(database))
    if STOP_WRITERS not in params.get("requires", []) or not isinstance(taken, dict) \
            or not taken.get("set_id"):
        return None
    try:
        manifest = sets.read_manifest(ctx.config.backup_dir / taken["set_id"])
        section: dict[str, Any] = manifest["databases"][database]
    except (BackoutError, OSError, KeyError, TypeError):
        return None  # asked of the server instead
    return section


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _restore(env: Environment, access: EngineAccess, artifact: Path, section: dict[str, Any]) -> Any:
    """Restore, then compare the restored counts with the backup's: a restore that
    does not reproduce them failed, whatever the tools said."""
    engine = engines.get(access.db.type)
    result = engine.restore(env, access, artifact, section)
    ok = engine.counts_match(section, result["counts"])
    expected = manifest_counts(section)
    if not ok:
        raise IntegrityError(f"{access.db.name}: restored counts differ from the backup's: "
                             f"expected {restore.describe_counts(expected)}, found "
                             f"{restore.describe_counts(result['counts'])}")
    return result


def _started_fact(op_id: int, database: str) -> str:
    return f"op{op_id}.restore_started.{database}"


def _failed_fact(op_id: int) -> str:
    return f"op{op_id}.restore_failed"


def _restore_action(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    store = ctx.store
    missing = [key for key in params.get("requires", [])
               if key not in results or "skipped" in (results[key] or {})]
    if missing:
        # Never restore without a verified backup, stopped writers and a safety
        # backup (in a deploy's rollback every step runs after a failure: this guards).
        names = {s["key"]: s["name"] for s in store.operation_steps(ctx.operation_id)}
        return {"skipped": f"not restored: {names.get(missing[0], missing[0])!r} did not "
                           "succeed"}
    env, _config, access = _access(ctx, params["database"])
    verified = results[params.get("verify_step") or verify_key(params["database"])]
    loss = data_loss.window(access, verified["section"], params.get("taken_at"),
                            current=_safety_section(ctx, params, results))
    if params.get("no_safety"):
        store.record_event("restore.without_safety_backup", target=access.db.name,
                           reason="operator override: --no-safety-backup",
                           detail={"operation": ctx.operation_id, "backup": params["source"]})
    store.set_fact(_started_fact(ctx.operation_id, params["database"]), True)
    try:
        result = _restore(env, access, Path(verified["artifact"]), verified["section"])
    except BackoutError as exc:
        store.set_fact(_failed_fact(ctx.operation_id), params["database"])
        if isinstance(exc, StalledError):
            _raise_if_engine_gone(ctx.platform, exc)
        raise
    return {**result, "data_loss": loss}


def _raise_if_engine_gone(platform: Platform, exc: StalledError) -> None:
    """A stalled stream through the platform's exec: say whether the engine is gone."""
    try:
        platform.ping()
    except DockerUnavailableError as gone:
        raise DockerUnavailableError(f"{exc.message.split(':')[0]}: the Docker Engine stopped "
                                     f"answering ({gone.message})", fix=ENGINE_FIX) from exc


def _undo(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Put the safety backup back when this database's restore started and it, or any
    restore of the operation, failed: the data ends fully restored or fully as before."""
    store = ctx.store
    name = params["database"]
    done = "skipped" not in (results.get(restore_key(name)) or {"skipped": True})
    failed = store.fact(_failed_fact(ctx.operation_id))
    if not store.fact(_started_fact(ctx.operation_id, name)) or (done and not failed):
        return {"undone": False}
    env, config, access = _access(ctx, name)
    ctx.platform.ping()  # an engine that does not answer: left for `backout resume`
    info = sets.get_set(config.backup_dir, params["set_id"])
    if info.manifest is None:
        raise ExternalError(f"{access.db.name}: the restore failed and the safety backup "
                            f"{params['set_id']} is not usable: {info.problem}",
                            fix="restore by hand; see `backout backups list --all`")
    section = info.manifest["databases"][access.db.name]
    _restore(env, access, info.path / artifact_name(access.db), section)
    why = "its restore failed" if not done else f"the restore of {failed} failed"
    env.warn(f"{access.db.name}: {why}; the safety backup {params['set_id']} was put back")
    return {"undone": True, "set_id": params["set_id"], "why": why}


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "rollback.db.verify": _verify,
    "rollback.db.safety": _safety,
    "rollback.db.restore": _restore_action,
    "rollback.db.undo": _undo,
}
