"""``backout rollback db (mysql|mongodb|redis) BACKUP``.

Order, and why: the backup is proven first (checksum, or a parse of an
operator's own file) so nothing changes for a bad one; a safety backup of the
current data is taken so the restore itself can be undone; the services that
write are stopped; the restore replaces the data and its counts are checked;
if the restore failed midway, the safety backup is put back; the writers are
started again in every case.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from backout.adapters.dbaccess import DbAccess
from backout.backup import restore, sets
from backout.backup.checkers import MySQLDumpChecker, RDBChecker, TarBsonChecker
from backout.backup.engines import (
    DumpContext,
    artifact_name,
    checker_for,
    dump,
    manifest_counts,
)
from backout.backup.operation import writers
from backout.backup.pipeline import IntegrityError, scan
from backout.config import Config, DatabaseConfig
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError, UsageError, did_you_mean
from backout.operations import Plan, Step, register_action
from backout.operations.executor import RunContext
from backout.rollback import common
from backout.state import Store

SNIFF = {b"REDIS": "redis", b"-- MySQL dump": "mysql", b"-- MariaDB dump": "mysql",
         b"/*M!999999": "mysql"}


def database(config: Config, name: str) -> DatabaseConfig:
    if name in config.databases:
        return config.databases[name]
    by_type = [d for d in config.databases.values() if d.type == name]
    if len(by_type) == 1:
        return by_type[0]
    raise NotFoundError(f'no database "{name}" in backout.toml' + did_you_mean(name, config.databases),
                        fix=f"configured: {', '.join(config.databases) or 'none'}")


def _sniff(env: Environment, path: Path) -> str | None:
    """The database type a file's first bytes say it belongs to."""
    import subprocess

    from backout import proc

    if path.is_dir():
        return "mongodb" if any(path.rglob("*.bson")) else None
    head = subprocess.run(["zstd", "-d", "-q", "-c", "-f", str(path)], capture_output=True,
                          env=proc.child_env(env), check=False).stdout[:4096] \
        if path.stat().st_size < (64 << 20) else _head(env, path)
    for magic, kind in SNIFF.items():
        if head.startswith(magic) or magic in head[:200]:
            return kind
    if head[257:262] == b"ustar":
        return "mongodb"
    if head.startswith(b"--") or b"CREATE TABLE" in head or b"INSERT INTO" in head:
        return "mysql"
    return None


def _head(env: Environment, path: Path) -> bytes:
    import subprocess

    from backout import proc

    with subprocess.Popen(["zstd", "-d", "-q", "-c", "-f", str(path)], stdout=subprocess.PIPE,
                          env=proc.child_env(env)) as p:
        assert p.stdout is not None
        data = p.stdout.read(4096)
        p.kill()
    return data


def resolve_backup(env: Environment, config: Config, store: Store, db: DatabaseConfig,
                   ref: str) -> dict[str, Any]:
    """{"artifact": path, "section": manifest section or None, "source": words, ...}."""
    m = common.CHECKPOINT_REF.match(ref)
    if m:
        row = store.db.execute("SELECT path FROM checkpoints WHERE id = ?", (int(m.group(1)),)).fetchone()
        if row is None:
            raise NotFoundError(f"no checkpoint {m.group(1)}", fix="list them with `backout backups list`")
        ref = row["path"]
    path = Path(ref)
    if (config.backup_dir / ref).is_dir() and "/" not in ref:
        info = sets.get_set(config.backup_dir, ref)
        if not info.usable or info.manifest is None:
            raise IntegrityError(f"backup {ref} is not usable: {info.problem}")
        section = info.manifest["databases"].get(db.name)
        if section is None:
            raise NotFoundError(f"backup {ref} holds no {db.name} dump "
                                f"(it has {', '.join(info.manifest['databases'])})")
        name = section["artifacts"][0]
        return {"artifact": str(info.path / name), "section": section, "source": f"backup {ref}",
                "sha256": info.manifest["artifacts"][name]["sha256"], "set_id": ref}
    if not path.exists():
        raise NotFoundError(f'no backup "{ref}": neither a backup id, a checkpoint (cpN) nor a file',
                            fix="list them with `backout backups list`")
    kind = _sniff(env, path)
    if kind != db.type:
        what = {"mysql": "a MySQL dump", "redis": "a Redis RDB", "mongodb": "a MongoDB dump"}
        raise UsageError(f"{ref} is {what.get(kind or '', 'not a dump backout recognises')}, "
                         f"not {what[db.type]} for {db.name}",
                         fix=f"name a {db.type} dump, or the right database")
    return {"artifact": str(path.resolve()), "section": None, "source": f"file {ref}",
            "sha256": None, "set_id": None}


def plan(env: Environment, config: Config, store: Store, db_name: str, ref: str) -> Plan:
    db = database(config, db_name)
    target = resolve_backup(env, config, store, db, ref)
    safety_id = sets.new_set_id()
    stopped = writers(config, [db.name])
    overwritten = {"mysql": f"databases {', '.join(db.databases) or '(all in the dump)'} are "
                            "dropped and reloaded",
                   "redis": "the keyspace is replaced (Redis restarts; any AOF is set aside)",
                   "mongodb": "every collection of the dumped databases is replaced"}[db.type]
    steps = [
        Step(f"verify {target['source']}", "rollback.db.verify",
             "prove the backup whole before anything changes (checksum and format)",
             {"database": db.name, **target}),
        Step(f"safety backup of {db.name}", "rollback.db.safety",
             f"so this restore can itself be rolled back (set {safety_id})",
             {"database": db.name, "set_id": safety_id}),
    ]
    if stopped:
        steps.append(Step(f"stop writers: {', '.join(stopped)}", "compose.stop",
                          f"nothing may write to {db.name} during the restore", {"services": stopped}))
    steps += [
        Step(f"restore {db.name}", "rollback.db.restore",
             f"{overwritten}; counts are checked against the backup afterwards",
             {"database": db.name, **target}),
        Step("put the safety backup back if the restore failed", "rollback.db.undo",
             "a restore that failed midway must not leave half the data",
             {"database": db.name, "set_id": safety_id}, always=True),
    ]
    if stopped:
        steps.append(Step(f"start writers: {', '.join(stopped)}", "compose.start",
                          "writers run again in every case", {"services": stopped}, always=True))
    return Plan("rollback.db", {"database": db.name, "backup": ref, "safety_set": safety_id},
                tuple(steps), summary=f"restore {db.name} from {target['source']}",
                downtime=(f"{', '.join(stopped)} stopped during the restore" if stopped else
                          "none for app services") + (f"; {db.service} restarts"
                                                      if db.type == "redis" else ""))


def _access(ctx: RunContext, name: str) -> tuple[Environment, Config, DbAccess]:
    env, config, _store, compose = common.ctx_parts(ctx)
    return env, config, DbAccess(env, config, config.databases[name], compose)


def _section_for_file(env: Environment, db: DatabaseConfig, artifact: Path) -> dict[str, Any]:
    what = f"{artifact.name}"
    if db.type == "mysql":
        checks = scan(env, artifact, MySQLDumpChecker([], what), what=what, passthrough=True).checks
        return {"type": "mysql", "databases": checks["databases"]}
    if db.type == "redis":
        checks = scan(env, artifact, RDBChecker(what), what=what, passthrough=True).checks
        return {"type": "redis", "keys": checks["keys"], "rdb_path": None}
    checks = scan(env, artifact, TarBsonChecker([], what), what=what, passthrough=True).checks
    return {"type": "mongodb", "databases": checks["databases"]}


def _mongo_dir_to_tar(directory: Path, dest: Path) -> None:
    """A mongodump directory (``dump/<db>/<coll>.bson``) as the tar our restore reads."""
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        for bson in sorted(directory.rglob("*.bson")):
            db = bson.parent.name
            tar.add(bson, arcname=f"dump/{db}/{bson.name}")
            meta = bson.with_name(bson.name[:-5] + ".metadata.json")
            if meta.exists():
                tar.add(meta, arcname=f"dump/{db}/{meta.name}")
            else:
                import io
                import json

                data = json.dumps({"indexes": [], "collectionName": bson.name[:-5]}).encode()
                info = tarfile.TarInfo(f"dump/{db}/{meta.name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _prepared_artifact(params: dict[str, Any], state_dir: Path) -> Path:
    artifact = Path(params["artifact"])
    if artifact.is_dir():
        staged = state_dir / "staging"
        staged.mkdir(parents=True, exist_ok=True, mode=0o700)
        tar = staged / f"{artifact.name}.tar"
        _mongo_dir_to_tar(artifact, tar)
        return tar
    return artifact


@register_action("rollback.db.verify")
def _verify(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    env, config, access = _access(ctx, params["database"])
    artifact = _prepared_artifact(params, config.state_dir)
    if params["section"] is not None:
        scanned = scan(env, artifact, checker_for(params["section"], params["source"]),
                       what=params["source"])
        if scanned.sha256 != params["sha256"]:
            raise IntegrityError(f"{params['source']}: sha256 mismatch: the artifact changed "
                                 "since it was written", fix="use another backup")
        return {"section": params["section"], "artifact": str(artifact)}
    return {"section": _section_for_file(env, access.db, artifact), "artifact": str(artifact)}


@register_action("rollback.db.safety")
def _safety(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    env, config, _store, compose = common.ctx_parts(ctx)
    writer = sets.SetWriter(config.backup_dir, params["set_id"])
    if writer.final.is_dir():
        sets.read_manifest(writer.final)
        return {"set_id": params["set_id"]}
    writer.open()
    db = config.databases[params["database"]]
    section = dump(DumpContext(env, config, compose), db, writer.dir)
    art = dict(section["artifact"])
    name = art.pop("name")
    from backout import __version__

    writer.publish({"format": sets.FORMAT, "format_version": sets.FORMAT_VERSION,
                    "id": params["set_id"], "kind": "safety",
                    "label": f"safety backup before rollback db (operation {ctx.operation_id})",
                    "tool": {"name": "backout", "version": __version__},
                    "created_at": _iso(), "completed_at": _iso(),
                    "databases": {db.name: section["database"]}, "artifacts": {name: art},
                    "operation_id": ctx.operation_id})
    return {"set_id": params["set_id"]}


def _iso() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _restore(env: Environment, access: DbAccess, artifact: Path, section: dict[str, Any]) -> Any:
    kind = access.db.type
    if kind == "mysql":
        result = restore.restore_mysql(env, access, artifact, section)
        ok = restore.mysql_counts_match(section, result["counts"])
    elif kind == "redis":
        result = restore.restore_redis(env, access, artifact, section)
        ok = restore.redis_counts_match(section, result["counts"])
    else:
        result = restore.restore_mongodb(env, access, artifact, section)
        ok = restore.mongo_counts_match(section, result["counts"])
    expected = manifest_counts(section)
    if not ok:
        raise IntegrityError(f"{access.db.name}: restored counts differ from the backup's: "
                             f"expected {restore.describe_counts(expected)}, found "
                             f"{restore.describe_counts(result['counts'])}")
    return result


@register_action("rollback.db.restore")
def _restore_action(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    env, _config, access = _access(ctx, params["database"])
    verified = results.get(f"verify {params['database']} backup") or next(
        v for k, v in results.items() if k.startswith("verify "))
    store: Store = ctx["store"]
    store.set_fact(f"op{ctx.operation_id}.restore_started.{params['database']}", True)
    return _restore(env, access, Path(verified["artifact"]), verified["section"])


@register_action("rollback.db.undo")
def _undo(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    store: Store = ctx["store"]
    restored = f"restore {params['database']}" in results
    if restored or not store.fact(f"op{ctx.operation_id}.restore_started.{params['database']}"):
        return {"undone": False}
    env, config, access = _access(ctx, params["database"])
    info = sets.get_set(config.backup_dir, params["set_id"])
    if info.manifest is None:
        raise ExternalError(f"{access.db.name}: the restore failed and the safety backup "
                            f"{params['set_id']} is not usable: {info.problem}",
                            fix="restore by hand; see `backout backups list --all`")
    section = info.manifest["databases"][access.db.name]
    _restore(env, access, info.path / artifact_name(access.db), section)
    env.warn(f"the restore of {access.db.name} failed; the safety backup {params['set_id']} "
             "was put back")
    return {"undone": True, "set_id": params["set_id"]}


