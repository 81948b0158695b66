"""MongoDB through the official driver (pymongo), reached on the service's port, or
through ``mongodump`` inside its container when the container has it.

Only a wire-protocol stand-in (nx-27017) runs on our CI machines; results that
depend on server behaviour are labelled as such in the docs and tests.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from backout import proc
from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.base import (
    EngineBase,
    EngineContext,
    TrialTarget,
    artifact_entry,
    count_deltas,
    docker,
    run_throwaway,
    running_image_id,
    wait_ready,
)
from backout.engines.formats import TarBsonChecker
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError, InterruptedOperation
from backout.operations import interrupt
from backout.platforms.base import Platform
from backout.storage.pipeline import (
    Checker,
    IntegrityError,
    decompressed,
    metered,
    scan,
    stream_from_python,
    stream_to_file,
)

SYSTEM_DATABASES = {"admin", "local", "config"}


def _pymongo() -> Any:
    """The driver, imported on first use (0.3 s)."""
    import pymongo
    from pymongo import common

    # pymongo's monitor threads notice close() only between sleeps of
    # MIN_HEARTBEAT_INTERVAL (0.5 s) and its atexit hook joins them, so every command
    # that had touched MongoDB sat idle up to half a second before it exited (import +
    # ping + exit measured 0.86-0.94 s, 0.43-0.52 s at 0.05). The cost: monitors wake
    # 20 times a second to look at a flag, and while a server is unreachable (a mongod
    # starting) the driver tries it up to 20 times a second instead of twice.
    common.MIN_HEARTBEAT_INTERVAL = min(common.MIN_HEARTBEAT_INTERVAL, 0.05)
    return pymongo


class MongoDB:
    def __init__(self, access: EngineAccess) -> None:
        self.access = access
        self._client: Any = None

    def address(self) -> tuple[str, int]:
        db = self.access.db
        if db.port is not None:
            return db.host, db.port
        # exec mode without a configured port: ask the platform where 27017 is published
        text = self.access.platform.published_address(db.service, 27017) or ""
        if ":" not in text:
            raise ExternalError(f"{db.name}: no published port for {db.service}:27017 and no "
                                "mongodump in the container",
                                fix=f"publish 27017 or set databases.{db.name}.port")
        host, _, port = text.rpartition(":")
        return ("127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host), int(port)

    def client(self) -> Any:
        if self._client is None:
            MongoClient = _pymongo().MongoClient
            host, port = self.address()
            user = self.access.user()
            password = self.access.password()
            kwargs: dict[str, Any] = {"serverSelectionTimeoutMS": 10000, "directConnection": True}
            if user and password:
                kwargs.update(username=user, password=password, authSource="admin")
            self._client = MongoClient(host, port, **kwargs)
        return self._client

    def ping(self) -> str:
        from pymongo.errors import OperationFailure, PyMongoError

        try:
            self.client().admin.command("ping")
            info = self.client().server_info()
        except OperationFailure as exc:
            if exc.code in (13, 18):
                var = self.access.db.password_env or "the password"
                raise ExternalError(f"{self.access.db.name}: authentication failed",
                                    fix=f"check {var}") from exc
            raise ExternalError(f"{self.access.db.name}: {exc}") from exc
        except PyMongoError as exc:
            raise ExternalError(f"{self.access.db.name}: database unreachable: "
                                f"{self.access.env.redact(str(exc))[:200]}",
                                fix=f"check that {self.access.db.service} is up") from exc
        return str(info.get("version", "unknown"))

    def user_databases(self) -> list[str]:
        names = self.client().list_database_names()
        return sorted(n for n in names if n not in SYSTEM_DATABASES)

    def collections(self, database: str) -> list[str]:
        db = self.client()[database]
        out = []
        for spec in db.list_collections():
            if spec.get("type", "collection") == "collection" and not spec["name"].startswith("system."):
                out.append(spec["name"])
        return sorted(out)

    def data_bytes(self, databases: list[str]) -> int | None:
        """The BSON size of the documents (dbStats dataSize), or None when the server
        will not say (the stand-in may not)."""
        try:
            return sum(int(self.client()[d].command("dbStats").get("dataSize", 0))
                       for d in databases) or None
        except Exception:  # a progress estimate only: never fail a backup for it
            return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# The dump inside the container: mongodump writes its directory layout into a
# private temporary directory, which is streamed out as a tar (the same artifact
# the driver path makes) and removed on exit. The connection string with the
# password arrives on stdin and goes into a 0600 --config file, never into argv.
MONGODUMP_SCRIPT = r"""set -eu
d=$(mktemp -d /tmp/backout-mongodump.XXXXXX)
trap 'rm -rf "$d"' EXIT
umask 077
cat > "$d/config.yaml"
if [ "$#" -eq 0 ]; then
  mongodump --quiet --config="$d/config.yaml" --out="$d/dump" >&2
  rm -rf "$d/dump/admin" "$d/dump/config" "$d/dump/local"
else
  for db in "$@"; do
    mongodump --quiet --config="$d/config.yaml" --db="$db" --out="$d/dump" >&2
  done
fi
mkdir -p "$d/dump"
tar -C "$d" -cf - dump
"""
MONGODUMP_PROBE = "command -v mongodump >/dev/null 2>&1 || exit 3; mongodump --version 2>&1"
NOT_FOUND = 3


class MongoDump:
    """``mongodump`` inside the MongoDB container (exec mode only)."""

    def __init__(self, access: EngineAccess) -> None:
        self.access = access

    def version(self) -> str | None:
        """mongodump's version line when it exists in the container, else None."""
        if self.access.db.mode != "exec":
            return None
        result = proc.run(self.access.env, self.access.argv(["sh", "-c", MONGODUMP_PROBE]),
                          timeout=60, check=False, what="mongodump probe",
                          cwd=str(self.access.config.project_dir))
        if result.returncode == NOT_FOUND:
            return None
        if not result.ok:
            raise self.access.explain(result, "mongodump probe")
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return lines[0] if lines else "mongodump (version unknown)"

    def uri(self) -> str:
        """The connection string for the --config file (holds the password)."""
        from urllib.parse import quote

        user = self.access.user()
        password = self.access.password()
        if user and password:
            encoded = quote(password, safe="")
            self.access.env.redact.add(encoded)
            return (f"mongodb://{quote(user, safe='')}:{encoded}@127.0.0.1:27017/"
                    "?authSource=admin")
        return "mongodb://127.0.0.1:27017/"

    def config_file(self) -> bytes:
        """YAML for ``mongodump --config``: a JSON string is a YAML double-quoted scalar."""
        return f"uri: {json.dumps(self.uri())}\n".encode()

    def argv(self, databases: list[str]) -> list[str]:
        """Where the database's container runs the script; db names are its arguments."""
        return self.access.argv(["sh", "-c", MONGODUMP_SCRIPT, "backout-mongodump", *databases])

    def server_version(self) -> str:
        result = proc.run(self.access.env, self.access.argv(
            ["sh", "-c", "mongod --version 2>/dev/null | head -n 1"]), timeout=60, check=False,
            what="mongod --version", cwd=str(self.access.config.project_dir))
        text = result.stdout.strip()
        return text.removeprefix("db version ").lstrip("v") if result.ok and text else "unknown"


def _dump_mongodb(ctx: EngineContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
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
            scanned = stream_from_python(
                ctx.env, write, set_dir / name, what=what,
                level=ctx.config.backups.zstd_level,
                total=mongo.data_bytes(wanted) if ctx.env.progress else None,
                checker=TarBsonChecker(wanted, what)).scanned
        finally:
            scratch.unlink(missing_ok=True)
    finally:
        mongo.close()
    return _mongo_section(ctx, db, scanned, {"server_version": version, "mode": "driver"})


def _dump_mongodb_tool(ctx: EngineContext, tool: MongoDump, tool_version: str,
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
        scanned = stream_to_file(ctx.env, tool.argv(wanted), set_dir / name, what=what,
                                 level=ctx.config.backups.zstd_level,
                                 cwd=str(ctx.config.project_dir), stdin=stdin,
                                 stall=ctx.config.backups.stall_seconds,
                                 checker=TarBsonChecker(wanted, what)).scanned
    return _mongo_section(ctx, db, scanned, {"server_version": server, "mode": "mongodump",
                                             "tool_version": tool_version})


def _mongo_section(ctx: EngineContext, db: DatabaseConfig, scanned: Any,
                   how: dict[str, Any]) -> dict[str, Any]:
    name = artifact_name(db)
    return {
        "database": {
            "type": "mongodb", "service": db.service, **how,
            "image_id": running_image_id(ctx, db.service),
            "layout": "mongodump directory layout (dump/<db>/<collection>.bson + "
                      ".metadata.json) in a tar; extract, then `mongorestore --drop dump/`",
            "consistency": "per collection (no cross-collection snapshot); use --quiesce "
                           "for one point in time",
            "databases": scanned.checks["databases"], "artifacts": [name],
        },
        "artifact": artifact_entry(name, FORMAT, scanned, db.name),
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


def _test_mongodb(env: Environment, cfg: Config, db: DatabaseConfig, platform: Platform,
                  image: str,
                  artifact: Path, section: dict[str, Any], password: str,
                  holder: list[str]) -> dict[str, Any]:
    from backout.engines.mongodb import MongoDB

    del password
    container = run_throwaway(env, image, ["-p", "127.0.0.1::27017"], {})
    holder.append(container)
    port = docker(env, "port", container, "27017").stdout.split("\n")[0]
    db = dataclasses.replace(db, password_env=None, host="127.0.0.1",
                             port=int(port.rsplit(":", 1)[1]))
    access = EngineAccess(env, cfg, db, platform, container=container)

    def ready() -> bool:
        m = MongoDB(access)
        try:
            return bool(m.ping())
        finally:
            m.close()

    wait_ready(ready, "mongodb")
    result = restore_mongodb(env, access, artifact, section)
    return {"ok": mongo_counts_match(section, result["counts"]),
            "expected": expected_counts(section),
            "restored": result["counts"]}


def _mongodb(access: EngineAccess, section: dict[str, Any]) -> dict[str, Any]:
    mongo = MongoDB(access)
    try:
        then = expected_counts(section)
        now_counts = {db: {c: mongo.client()[db][c].count_documents({})
                           for c in mongo.collections(db)} for db in then}
    except BackoutError:
        raise
    except Exception as exc:  # pymongo's errors
        raise BackoutError(f"{access.db.name}: cannot count documents: {exc}") from exc
    finally:
        mongo.close()
    deltas = count_deltas(then, now_counts)
    return {"document_deltas": deltas, "changes": sum(abs(v) for v in deltas.values())}


def artifact_name(db: DatabaseConfig) -> str:
    return ENGINE.artifact_name(db)


FORMAT = "mongodump-dir-tar+zstd"


def expected_counts(section: Mapping[str, Any]) -> dict[str, Any]:
    return {db: v["collections"] for db, v in section["databases"].items()}


def dump_dir_to_tar(directory: Path, dest: Path) -> None:
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


class MongoDBEngine(EngineBase):
    suffix = ".tar.zst"
    type = "mongodb"
    description = "a MongoDB dump"
    count_unit = "documents"
    image_patterns = ("mongo",)
    image_repositories = ("mongo", "mongodb/mongodb-community-server",
                          "mongodb/mongodb-enterprise-server", "bitnami/mongodb",
                          "percona/percona-server-mongodb")
    server_programs = ("mongod",)
    credentials: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...] | None], ...] = (
        (None, ("MONGO_INITDB_ROOT_PASSWORD",), ("MONGO_INITDB_ROOT_USERNAME",)),
        ("root", ("MONGODB_ROOT_PASSWORD",), ("MONGODB_ROOT_USER",)))  # bitnami/mongodb
    database_name_vars = ("MONGO_INITDB_DATABASE",)

    def load_driver(self) -> None:
        _pymongo()

    def dump(self, ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        return _dump_mongodb(ctx, EngineAccess(ctx.env, ctx.config, db, ctx.platform), set_dir)

    def prepare_artifact(self, artifact: Path, staging: Path) -> Path:
        if not artifact.is_dir():
            return artifact
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        tar = staging / f"{artifact.name}.tar"
        dump_dir_to_tar(artifact, tar)
        return tar

    def checker(self, section: Mapping[str, Any], what: str) -> Checker:
        return TarBsonChecker(list(section.get("databases", {})), what)

    def sniff(self, head: bytes, path: Path) -> int:
        if path.is_dir():  # a mongodump output directory
            return 3 if any(path.rglob("*.bson")) else 0
        return 2 if head[257:262] == b"ustar" else 0

    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]:
        what = artifact.name
        checks = scan(env, artifact, TarBsonChecker([], what), what=what, passthrough=True).checks
        return {"type": self.type, "databases": checks["databases"]}

    def expected_counts(self, section: Mapping[str, Any]) -> Any:
        return expected_counts(section)

    def counts_match(self, section: Mapping[str, Any], counts: Any) -> bool:
        return mongo_counts_match(dict(section), counts)

    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]:
        return restore_mongodb(env, access, artifact, section)

    def trial_restore(self, target: TrialTarget, artifact: Path,
                      section: dict[str, Any]) -> dict[str, Any]:
        return _test_mongodb(target.env, target.config, target.db, target.platform, target.image,
                             artifact, section, target.password, target.holder)

    def probe(self, access: EngineAccess) -> str:
        mongo = MongoDB(access)
        try:
            return str(mongo.ping())
        finally:
            mongo.close()

    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        # counted in any case: no position tells that nothing was written since
        # ``current`` was taken
        return _mongodb(access, section)

    def overwritten(self, db: DatabaseConfig) -> str:
        return "every collection of the dumped databases is replaced"


ENGINE = MongoDBEngine()
