"""One dump routine per database type. Each writes its artifact into the partial
set, proves it (``pipeline.scan``) and returns the manifest sections for it."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from backout.backup.checkers import (
    MySQLDumpChecker,
    RDBChecker,
    TarBsonChecker,
    VolumeTarChecker,
)
from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.mongodb import MongoDB, MongoDump
from backout.engines.mysql import DUMP_FLAGS, MySQL, dump_errors
from backout.engines.redis import Redis
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError
from backout.operations import interrupt
from backout.platforms.base import Platform
from backout.storage.pipeline import (
    Checker,
    DiskFullError,
    IntegrityError,
    StalledError,
    scan,
    stream_from_python,
    stream_to_file,
)

ARTIFACT_NAMES = {"mysql": "{name}.sql.zst", "redis": "{name}.rdb.zst",
                  "mongodb": "{name}.tar.zst"}
FORMATS = {"mysql": "mysql-sql+zstd", "redis": "redis-rdb+zstd",
           "mongodb": "mongodump-dir-tar+zstd"}


@dataclass
class DumpContext:
    env: Environment
    config: Config
    platform: Platform
    # A safety backup before a restore: the data may be damaged (a dropped table
    # under a view, a dropped database) and the dump must still take what exists,
    # recording what it could not take, rather than block the restore.
    safety: bool = False


def artifact_name(db: DatabaseConfig) -> str:
    return ARTIFACT_NAMES[db.type].format(name=db.name)


def checker_for(db_section: dict[str, Any], what: str) -> Checker:
    kind = db_section["type"]
    if kind == "mysql":
        return MySQLDumpChecker(list(db_section.get("databases", {})), what)
    if kind == "redis":
        return RDBChecker(what)
    if kind == "mongodb":
        return TarBsonChecker(list(db_section.get("databases", {})), what)
    if kind == "volume":
        return VolumeTarChecker(what)
    raise IntegrityError(f"{what}: unknown database type {kind!r} in manifest")


def _image_id(ctx: DumpContext, service: str) -> str | None:
    containers = [c for c in ctx.platform.containers(service) if c.state == "running"]
    return containers[0].image_id if containers else None


def dump(ctx: DumpContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
    """Dump one database into ``set_dir``; returns ``{"database": ..., "artifact": ...}``."""
    access = EngineAccess(ctx.env, ctx.config, db, ctx.platform)
    fn: Callable[[DumpContext, EngineAccess, Path], dict[str, Any]] = {
        "mysql": _dump_mysql, "redis": _dump_redis, "mongodb": _dump_mongodb}[db.type]
    start = time.monotonic()
    section = fn(ctx, access, set_dir)
    section["duration_s"] = round(time.monotonic() - start, 3)
    return section


def _artifact(name: str, kind: str, scanned: Any, db_name: str) -> dict[str, Any]:
    return {"name": name, "format": FORMATS[kind], "sha256": scanned.sha256,
            "bytes": scanned.bytes, "raw_bytes": scanned.raw_bytes, "database": db_name}


def _dump_mysql(ctx: DumpContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
    my = MySQL(access)
    db = access.db
    version = my.version()  # proves reachability and credentials before anything is written
    present = my.user_databases()
    wanted = list(db.databases) or present
    absent = [d for d in wanted if d not in present]
    if absent and not ctx.safety:
        raise NotFoundError(f"{db.name}: database(s) {', '.join(absent)} do not exist on the server",
                            fix=f"correct databases.{db.name}.databases in backout.toml")
    dumpable = [d for d in wanted if d in present]
    # Broken views stop the dump tools; they cannot be restored either (CREATE VIEW
    # checks what it reads), so they are left out and recorded with their definition.
    not_dumped: list[dict[str, str]] = my.broken_views(dumpable)
    binlog = my.log_bin()
    name = artifact_name(db)
    what = f"{db.name} dump"
    level = ctx.config.backups.zstd_level
    if not dumpable:  # every configured database was dropped: an empty, valid dump
        text = _EMPTY_DUMP.format(names=", ".join(absent), at=time.strftime("%Y-%m-%d %H:%M:%S"))

        def write(pipe: IO[bytes]) -> None:
            pipe.write(text.encode())

        stream_from_python(ctx.env, write, set_dir / name, what=what, level=level)
    else:
        ignore = [item["object"] for item in not_dumped]

        def run_dump(force: bool) -> Any:
            return stream_to_file(
                ctx.env, my.dump_argv(dumpable, binlog=binlog, ignore=ignore, force=force),
                set_dir / name, what=what, level=level, secret_env=my.secret_env(),
                cwd=str(ctx.config.project_dir),
                total=my.data_bytes(dumpable) if ctx.env.progress else None,
                stall=ctx.config.backups.stall_seconds, ok_exit=(0, 2) if force else (0,))

        try:
            run_dump(force=False)
        except ExternalError as exc:
            if not ctx.safety or isinstance(exc, (DiskFullError, StalledError)):
                raise
            # Something else the damage broke: take everything the server still gives,
            # and record what it could not.
            written = run_dump(force=True)
            not_dumped += dump_errors(written.stderr) or [
                {"object": db.name, "kind": "object", "why": exc.message}]
    for item in not_dumped:
        ctx.env.warn(f"{db.name}: {item['kind']} {item['object']} is not in the backup: "
                     f"{item['why']}")
    for gone in absent:
        ctx.env.warn(f"{db.name}: database {gone} does not exist (dropped?): the backup "
                     "records it as absent")
    scanned = scan(ctx.env, set_dir / name, MySQLDumpChecker(dumpable, what), what=what)
    return {
        "database": {
            "type": "mysql", "service": db.service, "server_version": version,
            "image_id": _image_id(ctx, db.service), "mode": db.mode,
            "dump_flags": [*DUMP_FLAGS, *(["--master-data=2"] if binlog else [])],
            "consistency": "single-transaction snapshot (consistent for InnoDB tables)",
            "binlog": scanned.checks.get("binlog"),
            "databases": scanned.checks["databases"],
            "absent": absent, "not_dumped": not_dumped,
            "artifacts": [name],
        },
        "artifact": _artifact(name, "mysql", scanned, db.name),
    }


_EMPTY_DUMP = """-- backout: none of the configured databases exist ({names}): nothing to dump
-- Dump completed on {at}
"""


def _dump_redis(ctx: DumpContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
    redis = Redis(access)
    db = access.db
    version = redis.version()
    path = redis.rdb_path()
    saved = redis.bgsave_and_wait(count_writes=True)  # "writes since" count from here
    name = artifact_name(db)
    what = f"{db.name} snapshot"
    # The file is renamed into place by each save; `cat` holds the inode it opened,
    # so a save finishing meanwhile cannot tear our copy.
    stream_to_file(ctx.env, access.argv(["cat", path]), set_dir / name, what=what,
                   level=ctx.config.backups.zstd_level, cwd=str(ctx.config.project_dir),
                   total=redis.file_bytes(path) if ctx.env.progress else None,
                   stall=ctx.config.backups.stall_seconds)
    scanned = scan(ctx.env, set_dir / name, RDBChecker(what), what=what)
    return {
        "database": {
            "type": "redis", "service": db.service, "server_version": version,
            "image_id": _image_id(ctx, db.service), "mode": db.mode,
            "consistency": "point-in-time RDB snapshot (BGSAVE)",
            "rdb_path": path, "rdb_version": scanned.checks["rdb_version"],
            "rdb_checksum": scanned.checks["checksum"],
            "aof_enabled": bool(saved["aof_enabled"]), "bgsave_seconds": saved["seconds"],
            "keys": scanned.checks["keys"], "write_stats": saved["write_stats"],
            "artifacts": [name],
        },
        "artifact": _artifact(name, "redis", scanned, db.name),
    }


def _dump_mongodb(ctx: DumpContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
    """With mongodump inside the container (exec mode) use it, else the driver."""
    tool = MongoDump(access)
    tool_version = tool.version()
    if tool_version is not None:
        return _dump_mongodb_tool(ctx, tool, tool_version, set_dir)
    mongo = MongoDB(access)
    db = access.db
    try:
        version = mongo.ping()
        wanted = list(db.databases) or mongo.user_databases()
        name = artifact_name(db)
        what = f"{db.name} dump"
        scratch = set_dir / f".{db.name}.scratch.bson"

        def write(pipe: IO[bytes]) -> None:
            _write_mongo_tar(mongo, wanted, pipe, scratch)

        try:
            stream_from_python(ctx.env, write, set_dir / name, what=what,
                               level=ctx.config.backups.zstd_level,
                               total=mongo.data_bytes(wanted) if ctx.env.progress else None)
        finally:
            scratch.unlink(missing_ok=True)
        scanned = scan(ctx.env, set_dir / name, TarBsonChecker(wanted, what), what=what)
    finally:
        mongo.close()
    return _mongo_section(ctx, db, scanned, {"server_version": version, "mode": "driver"})


def _dump_mongodb_tool(ctx: DumpContext, tool: MongoDump, tool_version: str,
                       set_dir: Path) -> dict[str, Any]:
    db = tool.access.db
    wanted = list(db.databases)
    name = artifact_name(db)
    what = f"{db.name} dump"
    server = tool.server_version()
    read_end, write_end = os.pipe()  # the --config file (with the password) goes in on stdin
    os.write(write_end, tool.config_file())  # a few hundred bytes: never blocks
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stdin:
        stream_to_file(ctx.env, tool.argv(wanted), set_dir / name, what=what,
                       level=ctx.config.backups.zstd_level, cwd=str(ctx.config.project_dir),
                       stdin=stdin, stall=ctx.config.backups.stall_seconds)
    scanned = scan(ctx.env, set_dir / name, TarBsonChecker(wanted, what), what=what)
    return _mongo_section(ctx, db, scanned, {"server_version": server, "mode": "mongodump",
                                             "tool_version": tool_version})


def _mongo_section(ctx: DumpContext, db: DatabaseConfig, scanned: Any,
                   how: dict[str, Any]) -> dict[str, Any]:
    name = artifact_name(db)
    return {
        "database": {
            "type": "mongodb", "service": db.service, **how,
            "image_id": _image_id(ctx, db.service),
            "layout": "mongodump directory layout (dump/<db>/<collection>.bson + "
                      ".metadata.json) in a tar; extract, then `mongorestore --drop dump/`",
            "consistency": "per collection (no cross-collection snapshot); use --quiesce "
                           "for one point in time",
            "databases": scanned.checks["databases"], "artifacts": [name],
        },
        "artifact": _artifact(name, "mongodb", scanned, db.name),
    }


def _write_mongo_tar(mongo: MongoDB, databases: list[str], pipe: IO[bytes], scratch: Path) -> None:
    """Each collection's documents go to a scratch file first (tar needs the size
    up front), then into the tar stream; only one collection is on disk at a time."""
    from bson import json_util
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    raw = CodecOptions(document_class=RawBSONDocument)
    with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for dbname in databases:
            database = mongo.client()[dbname]
            for coll_name in mongo.collections(dbname):
                coll = database.get_collection(coll_name, codec_options=raw)
                fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    for n, doc in enumerate(coll.find({}, batch_size=1000)):
                        if n % 1000 == 0:
                            interrupt.current().check(f"dump of {dbname}.{coll_name}")
                        fh.write(doc.raw)
                info = tarfile.TarInfo(f"dump/{dbname}/{coll_name}.bson")
                info.size = scratch.stat().st_size
                info.mode = 0o600
                info.mtime = int(time.time())
                with scratch.open("rb") as fh:
                    tar.addfile(info, fh)
                plain = database.get_collection(coll_name)
                meta = {"options": plain.options(), "indexes": list(plain.list_indexes()),
                        "uuid": "", "collectionName": coll_name, "type": "collection"}
                data = json_util.dumps(meta).encode()
                minfo = tarfile.TarInfo(f"dump/{dbname}/{coll_name}.metadata.json")
                minfo.size = len(data)
                minfo.mode = 0o600
                minfo.mtime = int(time.time())
                tar.addfile(minfo, io.BytesIO(data))


def manifest_counts(section: dict[str, Any]) -> dict[str, Any]:
    """The counts a restore must reproduce, by database type (for comparisons)."""
    if section["type"] == "mysql":
        return {db: v["tables"] for db, v in section["databases"].items()}
    if section["type"] == "redis":
        return dict(section["keys"])
    return {db: v["collections"] for db, v in section["databases"].items()}
