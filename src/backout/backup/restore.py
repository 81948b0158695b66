"""Restoring an artifact into a database, and proving the result by its counts.

The same routines serve ``rollback db`` (into the project's service) and
``backups verify --restore-test`` (into a throwaway container of the same image).
Every restore replaces rather than merges: MySQL databases are dropped and
reloaded, MongoDB collections are dropped and re-inserted (stopping at the first
error), Redis gets its RDB replaced with any AOF set aside.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

from backout import proc
from backout.engines.access import EngineAccess
from backout.engines.mongodb import MongoDB
from backout.engines.mysql import MySQL, _ident
from backout.engines.redis import Redis
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.operations import interrupt
from backout.storage.pipeline import (
    IntegrityError,
    decompress_into,
    decompressed,
    decompressed_size,
    metered,
)


def restore_mysql(env: Environment, access: EngineAccess, artifact: Path,
                  section: dict[str, Any]) -> dict[str, Any]:
    """Drop and reload every database of the dump. Databases the dump records as
    absent when it was taken (a safety backup after a DROP DATABASE) are dropped, so
    putting a safety backup back reproduces exactly what was there."""
    my = MySQL(access)
    databases = list(section["databases"])
    for db in [*databases, *section.get("absent", [])]:
        my.query(f"DROP DATABASE IF EXISTS `{_ident(db)}`")
    decompress_into(env, artifact, my.restore_argv(), what=f"{access.db.name} restore",
                    secret_env=my.secret_env(), cwd=str(access.config.project_dir),
                    stall=access.config.backups.stall_seconds)
    counts = my.table_counts(databases)
    return {"counts": counts}


def mysql_counts_match(section: dict[str, Any], counts: dict[str, dict[str, int]]) -> bool:
    expected = {db: v["tables"] for db, v in section["databases"].items()}
    return expected == counts


def restore_mongodb(env: Environment, access: EngineAccess, artifact: Path,
                    section: dict[str, Any]) -> dict[str, Any]:
    """Replace each dumped database's collections with the dump's, in order; the
    first failed insert stops the restore (ordered inserts)."""
    from bson import json_util
    from bson.raw_bson import RawBSONDocument

    mongo = MongoDB(access)
    try:
        mongo.ping()
        client = mongo.client()
        wanted = set(section["databases"])
        for dbname in wanted:  # exact state: collections not in the dump go too
            for coll in mongo.collections(dbname):
                if coll not in section["databases"][dbname]["collections"]:
                    client[dbname].drop_collection(coll)
        intr = interrupt.current()
        with decompressed(env, artifact) as zstd, \
                metered(env, f"{access.db.name} restore", zstd.pid, artifact.stat().st_size,
                        estimated=False):
            assert zstd.stdout is not None
            for member, data in _tar_members(zstd.stdout):
                intr.check(f"{access.db.name} restore")
                parts = member.split("/")
                if len(parts) < 3:
                    continue
                dbname, fname = parts[-2], parts[-1]
                if fname.endswith(".metadata.json"):
                    coll = fname[: -len(".metadata.json")]
                    meta = json_util.loads(data.decode())
                    for index in meta.get("indexes", []):
                        if index.get("name") == "_id_":
                            continue
                        keys = list(index["key"].items())
                        opts = {k: v for k, v in index.items() if k not in ("key", "v", "ns")}
                        client[dbname][coll].create_index(keys, **opts)
                elif fname.endswith(".bson"):
                    coll = fname[: -len(".bson")]
                    client[dbname].drop_collection(coll)
                    client[dbname].create_collection(coll)
                    batch: list[RawBSONDocument] = []
                    pos = 0
                    while pos < len(data):
                        n = int.from_bytes(data[pos:pos + 4], "little")
                        batch.append(RawBSONDocument(data[pos:pos + n]))
                        pos += n
                        if len(batch) >= 1000:
                            client[dbname][coll].insert_many(batch, ordered=True)
                            batch = []
                            intr.check(f"{access.db.name} restore")
                    if batch:
                        client[dbname][coll].insert_many(batch, ordered=True)
            if zstd.wait() != 0:
                raise IntegrityError(f"{access.db.name}: {artifact.name} does not decompress")
        counts = {db: {c: client[db][c].count_documents({}) for c in mongo.collections(db)}
                  for db in wanted}
    except (IntegrityError, InterruptedOperation):
        raise
    except Exception as exc:  # pymongo errors: the first failure stops the restore
        if isinstance(exc, ExternalError):
            raise
        raise ExternalError(f"{access.db.name}: restore stopped at the first error: "
                            f"{env.redact(str(exc))[:300]}") from exc
    finally:
        mongo.close()
    return {"counts": counts}


def mongo_counts_match(section: dict[str, Any], counts: dict[str, dict[str, int]]) -> bool:
    expected = {db: v["collections"] for db, v in section["databases"].items()}
    return expected == counts


def _tar_members(stream: IO[bytes]) -> Any:
    """(name, bytes) of each regular file in a tar stream. One collection at a time
    is held in memory (as mongorestore does with its batches)."""
    import tarfile

    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if info.isfile():
                fh = tar.extractfile(info)
                assert fh is not None
                yield info.name, fh.read()


# Run in a one-off container of the Redis service, the RDB on stdin; arguments: data dir,
# RDB file name, a stamp, AOF mode (multipart|single|none), AOF dir, AOF file, RDB size.
# Everything is prepared under hidden names, owned by redis, before the switch; the
# switch is renames only, so a kill at any moment leaves files Redis can start from.
PUT_RDB_SCRIPT = (
    'set -e; d="$1"; n="$2"; s="$3"; mode="$4"; adir="$5"; afile="$6"; size="$7"; cd "$d"; '
    'in=".$n.backout-incoming"; new=""; '
    'cat > "$in"; '
    'got=$(wc -c < "$in"); '
    'if [ "$got" -ne "$size" ]; then rm -f "$in"; '
    '  echo "incomplete RDB: $got of $size bytes arrived" >&2; exit 3; fi; '
    'if [ "$mode" = multipart ]; then new=".$adir.backout-new"; rm -rf "$new"; mkdir "$new"; '
    '  cp "$in" "$new/$afile.1.base.rdb"; '
    '  printf "file %s seq 1 type b\\n" "$afile.1.base.rdb" > "$new/$afile.manifest"; '
    'elif [ "$mode" = single ]; then new=".$afile.backout-new"; cp "$in" "$new"; fi; '
    'if id redis >/dev/null 2>&1; then chown -R redis:redis "$in" ${new:+"$new"}; fi; '
    'for a in "$adir" "$afile"; do '
    '  if [ -n "$a" ] && [ -e "$a" ]; then mv "$a" "$a.backout-aside-$s"; fi; done; '
    'if [ "$mode" = multipart ]; then mv "$new" "$adir"; '
    'elif [ "$mode" = single ]; then mv "$new" "$afile"; fi; '
    'mv "$in" "$n"'
)


def put_rdb_into_volume(env: Environment, access: EngineAccess, artifact: Path, rdb_path: str,
                        stamp: str, aof: dict[str, str] | None) -> None:
    """With the Redis service stopped: the RDB replaced, any AOF set aside.

    A server with AOF on loads only its AOF, never the RDB; so when AOF is on the
    snapshot also becomes the new AOF: on Redis 7 the base of a fresh multi-part
    AOF (a base may be an RDB), before 7 the AOF file itself (an AOF may start
    with an RDB preamble). A one-off container of the service (same volumes) does
    the file work, so it works whatever the volume driver is.

    Nothing is moved before the whole RDB has arrived (its size is checked): a
    stream cut short (an interrupt, a stalled engine) leaves the volume as it was.
    The one-off container is labelled, and removed in every case: one left behind
    ("created", or exited without its --rm) would fail the stack's verification.
    """
    directory, _, name = rdb_path.rpartition("/")
    aof = aof or {}
    size = decompressed_size(env, artifact)
    script = PUT_RDB_SCRIPT
    label = f"{HELPER_LABEL}={access.config.project_dir}:{access.db.service}"
    argv = access.platform.one_off_argv(
        access.db.service, entrypoint="sh", label=label,
        args=["-c", script, "sh", directory or "/data", name, stamp, aof.get("mode", "none"),
              aof.get("dir", ""), aof.get("file", ""), str(size)])
    remove_helpers(env, label)  # left by an attempt that was cut short
    try:
        decompress_into(env, artifact, argv, what=f"{access.db.name} restore",
                        cwd=str(access.config.project_dir),
                        stall=access.config.backups.stall_seconds)
    finally:
        remove_helpers(env, label)


HELPER_LABEL = "io.backout.restore-helper"


def remove_helpers(env: Environment, label: str) -> None:
    """Remove the one-off containers of a restore (best effort, bounded: with an engine
    that does not answer, the next attempt removes them). One still running (its client
    was stopped) gets a moment to end by itself first: its input has ended, so it is
    either refusing an incomplete RDB or finishing its renames."""
    try:
        running = proc.run(env, ["docker", "ps", "-q", "--filter", f"label={label}"],
                           timeout=20, check=False, what="docker ps").stdout.split()
        if running:
            proc.run(env, ["docker", "wait", *running], timeout=30, check=False,
                     what="docker wait")
        found = proc.run(env, ["docker", "ps", "-aq", "--filter", f"label={label}"], timeout=20,
                         check=False, what="docker ps")
        ids = found.stdout.split()
        if ids:
            proc.run(env, ["docker", "rm", "-f", *ids], timeout=30, check=False,
                     what="docker rm")
    except ExternalError:
        pass


def aof_layout(redis: Redis) -> dict[str, str]:
    """How the running server persists its AOF, asked before it is stopped."""
    if redis.config_get("appendonly", "no") != "yes":
        return {"mode": "none"}
    major = int(redis.version().split(".")[0] or 0)
    afile = redis.config_get("appendfilename", "appendonly.aof")
    if major >= 7:
        return {"mode": "multipart", "dir": redis.config_get("appenddirname", "appendonlydir"),
                "file": afile}
    return {"mode": "single", "file": afile}


def restore_redis(env: Environment, access: EngineAccess, artifact: Path,
                  section: dict[str, Any]) -> dict[str, Any]:
    """Stop Redis, replace its RDB (and AOF), start it, compare DBSIZE.

    Redis is started first if it is down (an earlier attempt stopped it, then was
    interrupted): its persistence settings are read from the running server."""
    redis = Redis(access)
    rdb_path = section.get("rdb_path") or "/data/dump.rdb"
    platform = access.platform
    platform.bring_up(access.db.service)
    aof = aof_layout(redis)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    platform.stop([access.db.service], timeout=120)
    put_rdb_into_volume(env, access, artifact, rdb_path, stamp, aof)
    platform.bring_up(access.db.service)
    keys = {"db0": redis.dbsize()}
    return {"counts": keys, "aof": aof["mode"]}


def redis_counts_match(section: dict[str, Any], counts: dict[str, int]) -> bool:
    expected = section.get("keys") or {}
    return all(counts.get(db, 0) == n for db, n in expected.items()) and \
        (bool(expected) or counts.get("db0", 0) == 0)


def describe_counts(counts: Any) -> str:
    return json.dumps(counts, sort_keys=True)
