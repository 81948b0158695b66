"""Restoring an artifact into a database, and proving the result by its counts.

The same routines serve ``rollback db`` (into the project's service) and
``backups verify --restore-test`` (into a throwaway container of the same image).
Every restore replaces rather than merges: MySQL databases are dropped and
reloaded, MongoDB collections are dropped and re-inserted (stopping at the first
error), Redis gets its RDB replaced with any AOF set aside.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from backout import proc
from backout.adapters.dbaccess import DbAccess
from backout.adapters.mongodb import MongoDB
from backout.adapters.mysql import MySQL, _ident
from backout.adapters.redis import Redis
from backout.backup.pipeline import IntegrityError, metered
from backout.environment import Environment
from backout.errors import ExternalError


def decompress_into(env: Environment, artifact: Path, consumer: list[str], *, what: str,
                    secret_env: dict[str, str] | None = None, cwd: str | None = None,
                    timeout: float = 6 * 3600) -> None:
    """``zstd -dc artifact | consumer``; both stages must exit 0. Progress: the bytes of
    the artifact zstd has read, of its size (exact, so the ETA is too)."""
    env.log_external(f"$ zstd -dc {artifact.name} | {proc.describe(consumer)}")
    with tempfile.TemporaryFile() as c_err, tempfile.TemporaryFile() as z_err:
        zstd = subprocess.Popen(["zstd", "-d", "-q", "-c", "-f", str(artifact)],
                                stdout=subprocess.PIPE, stderr=z_err, env=proc.child_env(env))
        cons = subprocess.Popen(consumer, stdin=zstd.stdout, stdout=subprocess.DEVNULL,
                                stderr=c_err, env=proc.child_env(env, secret_env), cwd=cwd)
        assert zstd.stdout is not None
        zstd.stdout.close()
        try:
            with metered(env, what, zstd.pid, artifact.stat().st_size, estimated=False):
                c_rc = cons.wait(timeout=timeout)
            z_rc = zstd.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            cons.kill()
            zstd.kill()
            raise ExternalError(f"{what}: timed out") from exc
        c_err.seek(0)
        z_err.seek(0)
        if z_rc != 0:
            raise IntegrityError(f"{what}: {artifact.name} does not decompress: "
                                 f"{proc.last_line(z_err.read().decode(errors='replace'))}")
        if c_rc != 0:
            raise ExternalError(f"{what} failed (exit {c_rc}): "
                                f"{proc.last_line(env.redact(c_err.read().decode(errors='replace')))}")


def restore_mysql(env: Environment, access: DbAccess, artifact: Path,
                  section: dict[str, Any]) -> dict[str, Any]:
    my = MySQL(access)
    databases = list(section["databases"])
    for db in databases:
        my.query(f"DROP DATABASE IF EXISTS `{_ident(db)}`")
    decompress_into(env, artifact, my.restore_argv(), what=f"{access.db.name} restore",
                    secret_env=my.secret_env(), cwd=str(access.config.project_dir))
    counts = my.table_counts(databases)
    return {"counts": counts}


def mysql_counts_match(section: dict[str, Any], counts: dict[str, dict[str, int]]) -> bool:
    expected = {db: v["tables"] for db, v in section["databases"].items()}
    return expected == counts


def restore_mongodb(env: Environment, access: DbAccess, artifact: Path,
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
        with subprocess.Popen(["zstd", "-d", "-q", "-c", "-f", str(artifact)], stdout=subprocess.PIPE,
                              env=proc.child_env(env)) as zstd, \
                metered(env, f"{access.db.name} restore", zstd.pid, artifact.stat().st_size,
                        estimated=False):
            assert zstd.stdout is not None
            for member, data in _tar_members(zstd.stdout):
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
                    if batch:
                        client[dbname][coll].insert_many(batch, ordered=True)
            if zstd.wait() != 0:
                raise IntegrityError(f"{access.db.name}: {artifact.name} does not decompress")
        counts = {db: {c: client[db][c].count_documents({}) for c in mongo.collections(db)}
                  for db in wanted}
    except IntegrityError:
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


def put_rdb_into_volume(env: Environment, access: DbAccess, artifact: Path, rdb_path: str,
                        stamp: str, aof: dict[str, str] | None) -> None:
    """With the Redis service stopped: the RDB replaced, any AOF set aside.

    A server with AOF on loads only its AOF, never the RDB; so when AOF is on the
    snapshot also becomes the new AOF: on Redis 7 the base of a fresh multi-part
    AOF (a base may be an RDB), before 7 the AOF file itself (an AOF may start
    with an RDB preamble). A one-off container of the service (same volumes) does
    the file work, so it works whatever the volume driver is.
    """
    directory, _, name = rdb_path.rpartition("/")
    aof = aof or {}
    script = (
        'set -e; d="$1"; n="$2"; s="$3"; mode="$4"; adir="$5"; afile="$6"; cd "$d"; '
        'cat > ".$n.backout-incoming"; '
        'for a in "$adir" "$afile"; do '
        '  if [ -n "$a" ] && [ -e "$a" ]; then mv "$a" "$a.backout-aside-$s"; fi; done; '
        'if [ "$mode" = multipart ]; then mkdir "$adir"; '
        '  cp ".$n.backout-incoming" "$adir/$afile.1.base.rdb"; '
        '  printf "file %s seq 1 type b\\n" "$afile.1.base.rdb" > "$adir/$afile.manifest"; '
        'elif [ "$mode" = single ]; then cp ".$n.backout-incoming" "$afile"; fi; '
        'mv ".$n.backout-incoming" "$n"; '
        'if id redis >/dev/null 2>&1; then chown -R redis:redis "$n" ${adir:+"$adir"} '
        '${afile:+$( [ -e "$afile" ] && echo "$afile")}; fi'
    )
    argv = access.compose.argv("run", "--rm", "--no-deps", "-T", "--entrypoint", "sh",
                               access.db.service, "-c", script, "sh", directory or "/data", name,
                               stamp, aof.get("mode", "none"), aof.get("dir", ""),
                               aof.get("file", ""))
    decompress_into(env, artifact, argv, what=f"{access.db.name} restore",
                    cwd=str(access.config.project_dir))


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


def restore_redis(env: Environment, access: DbAccess, artifact: Path,
                  section: dict[str, Any]) -> dict[str, Any]:
    """Stop Redis, replace its RDB (and AOF), start it, compare DBSIZE."""
    redis = Redis(access)
    rdb_path = section.get("rdb_path") or "/data/dump.rdb"
    aof = aof_layout(redis)
    compose = access.compose
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    compose.run("stop", access.db.service, timeout=120)
    put_rdb_into_volume(env, access, artifact, rdb_path, stamp, aof)
    compose.run("up", "-d", "--no-deps", "--wait", access.db.service, timeout=300)
    keys = {"db0": redis.dbsize()}
    return {"counts": keys, "aof": aof["mode"]}


def redis_counts_match(section: dict[str, Any], counts: dict[str, int]) -> bool:
    expected = section.get("keys") or {}
    return all(counts.get(db, 0) == n for db, n in expected.items()) and \
        (bool(expected) or counts.get("db0", 0) == 0)


def describe_counts(counts: Any) -> str:
    return json.dumps(counts, sort_keys=True)
