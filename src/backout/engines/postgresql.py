"""PostgreSQL through its own client tools (pg_dump, pg_dumpall, pg_restore, psql,
pg_isready), run where the server is (the container, exec mode) or locally (tcp).

A backup is one bundle (``engines.pgarchive``): the roles and other globals
(``pg_dumpall --globals-only``) and one custom-format archive per database
(``pg_dump --format=custom``, each its own repeatable-read snapshot), copied through
Python into zstd as they come. pg_dump's own compression is off (``-Z0``): zstd
compresses better and faster, and the checker can count the rows of every table.

A restore writes each archive to a file next to the server (``pg_restore -j``
needs to seek), drops the database (``WITH (FORCE)``: sessions are ended),
recreates it from the archive (``pg_restore --create -j N``) and compares the
counts. The password reaches every tool as ``PGPASSWORD`` in the environment.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import secrets
import select
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from backout import proc
from backout.config import DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.base import (
    EngineBase,
    EngineContext,
    TrialTarget,
    artifact_entry,
    count_deltas,
    dumpable_databases,
    run_throwaway,
    running_image_id,
    wait_ready,
)
from backout.engines.pgarchive import (
    ARCHIVE_MAGIC,
    BUNDLE_MAGIC,
    END,
    END_PART,
    BundleChecker,
    BundleReader,
    PlainArchiveChecker,
    chunk,
    part_header,
)
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError
from backout.operations import interrupt
from backout.storage.pipeline import (
    CHUNK,
    Checker,
    IntegrityError,
    StalledError,
    decompressed,
    scan,
    stream_from_python,
)

FORMAT = "postgresql-bundle+zstd"
SEP = "\x1f"  # psql's field separator: a byte no name holds
# Fragments of the questions of ``facts``:
_USER_DATABASE = "NOT datistemplate AND datallowconn"  # of pg_database
_LSN = ("CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
        "ELSE pg_current_wal_lsn() END")
# a database's counters: datname, transactions, row writes, stats reset (text columns)
_COUNTERS = ("datname, xact_commit::text, (tup_inserted + tup_updated + tup_deleted)::text, "
             "COALESCE(stats_reset::text, '') FROM pg_stat_database")


def _counters(row: Sequence[str]) -> dict[str, Any]:
    """transactions, row writes, stats reset (the columns after datname of _COUNTERS)."""
    return {"transactions": int(row[0]), "row_writes": int(row[1]), "stats_reset": row[2]}
DUMP_FLAGS = ("--format=custom", "-Z0", "--no-password")
MAX_JOBS = 4
# What an exec'd shell runs to receive an archive into a file (pg_restore -j seeks).
_RECEIVE = 'umask 077 && cat > "$1"'


def restore_jobs() -> int:
    return max(1, min(MAX_JOBS, os.cpu_count() or 1))


def _maintenance_db(database: str) -> str:
    """Where to connect to drop/create ``database`` (not itself)."""
    return "template1" if database == "postgres" else "postgres"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@dataclasses.dataclass
class ServerFacts:
    """What ``Postgres.facts`` read (empty where not asked)."""
    databases: set[str] = dataclasses.field(default_factory=set)
    version: str = ""
    lsn: str = ""
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


class Postgres:
    def __init__(self, access: EngineAccess) -> None:
        self.access = access

    @property
    def user(self) -> str:
        return self.access.user("postgres") or "postgres"

    def secret_env(self) -> dict[str, str]:
        password = self.access.password()
        return {"PGPASSWORD": password} if password else {}

    def _conn(self) -> list[str]:
        args = ["-U", self.user]
        if self.access.db.mode == "tcp":
            args += ["-h", self.access.db.host, "-p", str(self.access.db.port or 5432)]
        return args

    def tool(self, name: str, *args: str) -> list[str]:
        """The inner argv of client tool ``name`` with the connection options."""
        return [name, *self._conn(), *args]

    def argv(self, inner: Sequence[str]) -> list[str]:
        return self.access.argv(inner, ["PGPASSWORD"] if self.secret_env() else [])

    def run(self, inner: Sequence[str], *, what: str, timeout: float = 120,
            input_text: str | None = None) -> proc.Result:
        return self.access.run(inner, self.secret_env(), what=what, timeout=timeout,
                               input_text=input_text)

    def query(self, sql: str, *, database: str = "postgres", timeout: float = 120) -> list[list[str]]:
        result = self.run(self.tool("psql", "-X", "-q", "-A", "-t", "-w", "-F", SEP,
                                    "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql),
                          what="psql query", timeout=timeout)
        return [line.split(SEP) for line in result.stdout.splitlines() if line]

    def version(self, *, connect_timeout: int | None = None, timeout: float = 120) -> str:
        """``connect_timeout``: libpq's, in seconds (it waits for ever by default)."""
        database = ("postgres" if connect_timeout is None
                    else f"dbname=postgres connect_timeout={connect_timeout}")
        return self.query("SHOW server_version", database=database, timeout=timeout)[0][0]

    def ready(self) -> None:
        """pg_isready: accepting connections, or an error saying what it is doing."""
        result = proc.run(self.access.env, self.argv(self.tool("pg_isready", "-d", "postgres")),
                          timeout=30, check=False, what="pg_isready",
                          secret_env=self.secret_env(), cwd=str(self.access.config.project_dir))
        if result.returncode == 0:
            return
        states = {1: "rejecting connections (starting up or shutting down)",
                  2: "not answering", 3: "not reachable (bad connection parameters)"}
        if result.returncode in states:
            raise ExternalError(f"{self.access.db.name}: PostgreSQL is "
                                f"{states[result.returncode]}",
                                fix=f"check that {self.access.db.service} is up and healthy")
        raise self.access.explain(result, "pg_isready")

    def dump_facts(self) -> tuple[str, list[str], dict[str, Any]]:
        """What a dump asks before it starts, in one psql (four cost 0.3 s of every
        backup): the server version (reachability and credentials), the databases a
        dump can take and the position of every database (the
        WAL position and the counters)."""
        facts = self.facts(version=True, position=True)
        if not facts.version:
            raise ExternalError(f"{self.access.db.name}: the server did not say its version",
                                fix="check that the service runs PostgreSQL")
        return facts.version, sorted(facts.databases), {"lsn": facts.lsn, "stats": facts.stats}

    def facts(self, *, version: bool = False, position: bool = False) -> ServerFacts:
        """The user databases, and as asked the server version and the position (the
        WAL position and every database's counters), in one psql."""
        parts = (["SELECT 'version', current_setting('server_version'), '', '', ''"]
                 if version else [])
        parts.append(f"SELECT 'database', datname, '', '', '' FROM pg_database "
                     f"WHERE {_USER_DATABASE}")
        if position:
            parts += [f"SELECT 'lsn', ({_LSN})::text, '', '', ''",
                      f"SELECT 'stats', {_COUNTERS} WHERE datname IS NOT NULL"]
        out = ServerFacts()
        for kind, name, *rest in self.query(" UNION ALL ".join(parts)):
            if kind == "database":
                out.databases.add(name)
            elif kind == "version":
                out.version = name
            elif kind == "lsn":
                out.lsn = name
            elif kind == "stats":
                out.stats[name] = _counters(rest)
        return out

    def data_bytes(self, databases: Sequence[str]) -> int | None:
        try:
            names = ", ".join(_lit(d) for d in databases)
            rows = self.query(f"SELECT COALESCE(SUM(pg_database_size(datname)), 0) "
                              f"FROM pg_database WHERE datname IN ({names})", timeout=30)
            return int(rows[0][0]) or None
        except (BackoutError, IndexError, ValueError):
            return None

    def table_counts(self, databases: Sequence[str]) -> dict[str, dict[str, int]]:
        """Exact row counts of every table (the schemas of the server excluded); one
        query per database, the counting statements built with the server's quoting."""
        out: dict[str, dict[str, int]] = {}
        for database in databases:
            rows = self.query(
                "SELECT n.nspname || '.' || c.relname, (xpath('/row/c/text()', query_to_xml("
                "format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, "
                "'')))[1]::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                "ORDER BY 1", database=database, timeout=3600)
            out[database] = {name: int(count) for name, count in rows}
        return out

    def drop_database(self, database: str) -> None:
        self.query(f"DROP DATABASE IF EXISTS {_ident(database)} WITH (FORCE)",
                   database=_maintenance_db(database), timeout=600)


# --- dump

class _Producer:
    """One client tool whose stdout is copied into the bundle, chunk by chunk, with the
    step's interrupt and the stall limit watched while it is silent."""

    def __init__(self, pg: Postgres, inner: list[str], what: str, stall: float | None) -> None:
        self.pg = pg
        self.inner = inner
        self.what = what
        self.stall = stall

    def copy_into(self, pipe: IO[bytes], header: bytes) -> None:
        env = self.pg.access.env
        argv = self.pg.argv(self.inner)
        env.log_external(f"$ {proc.describe(argv)}  (into the bundle)")
        with tempfile.TemporaryFile() as err:
            child = proc.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env=proc.child_env(env, self.pg.secret_env()),
                                cwd=str(self.pg.access.config.project_dir), **proc.CHILD)
            assert child.stdout is not None
            try:
                pipe.write(header)
                self._pump(child, pipe)
                rc = child.wait(timeout=60)
            except BaseException:
                child.kill()
                child.wait()
                raise
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        if rc != 0:
            raise self.pg.access.explain(proc.Result(tuple(argv), rc, "", stderr, 0.0), self.what)
        pipe.write(END_PART)

    def framed(self, header: bytes) -> bytes:
        """The part ``copy_into`` writes, whole, in memory (for a small output)."""
        part = io.BytesIO()
        self.copy_into(part, header)
        return part.getvalue()

    def _pump(self, child: subprocess.Popen[bytes], pipe: IO[bytes]) -> None:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        intr = interrupt.current()
        quiet_since = time.monotonic()
        # Passed on a CHUNK at a time, from one buffer: an os.read(fd, CHUNK) per piece
        # of the pipe (8-64 KB) made a CHUNK-sized object each time, and the bundle,
        # the checker and zstd a pass each per piece.
        buffer, filled = memoryview(bytearray(CHUNK)), 0
        watch = select.poll()  # not select(): a descriptor past 1023 is refused there
        watch.register(fd, select.POLLIN)
        while True:
            ready = watch.poll(interrupt.POLL * 1000)
            if intr.stop_now:
                intr.check(self.what)
            if not ready:
                if self.stall is not None and time.monotonic() - quiet_since > self.stall:
                    raise StalledError(f"{self.what}: no data moved for {self.stall:.0f}s "
                                       "(the database or the Docker Engine stopped answering)",
                                       fix="check `docker info` and the database's logs; "
                                           "[backups] stall_seconds sets the limit")
                continue
            size = os.readv(fd, [buffer[filled:]])
            if not size:
                if filled:
                    pipe.write(chunk(buffer[:filled]))
                return
            quiet_since = time.monotonic()
            filled += size
            if filled == CHUNK:
                pipe.write(chunk(buffer))
                filled = 0


def _dump(ctx: EngineContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
    pg = Postgres(access)
    db = access.db
    what = f"{db.name} dump"
    stall = ctx.config.backups.stall_seconds
    # The roles (a few KB) are dumped beside the facts below (a `docker exec` each,
    # 0.1 s), into memory, and go into the bundle first as before. (A role made
    # between this snapshot and a database's dump is not in it, as it was not when
    # pg_dumpall ran right before pg_dump: the window is the facts' query longer.)
    roles = _Producer(pg, pg.tool("pg_dumpall", "--globals-only", "--no-password",
                                  # -l: the database it connects to (-d: a connection string)
                                  "-l", "postgres"), f"{what} (roles)", stall)
    roles_part = proc.Background(lambda: roles.framed(part_header("globals", "")))
    with proc.settled() as started:  # the roles' dump ends here, whatever happens
        started.append(roles_part)
        # reachability and credentials, before anything is written; the position is
        # taken before the dumps start: writes between it and a dump's snapshot count as
        # "since the backup", so the data-loss window errs on the side of too large.
        version, present, position = pg.dump_facts()
        dumpable, absent = dumpable_databases(ctx, db, present)
        position["stats"] = {d: v for d, v in position["stats"].items() if d in dumpable}
        name = ENGINE.artifact_name(db)

        def write(pipe: IO[bytes]) -> None:
            pipe.write(BUNDLE_MAGIC)
            pipe.write(roles_part.result())
            for database in dumpable:
                _Producer(pg, pg.tool("pg_dump", *DUMP_FLAGS, "-d", database),
                          f"{what} ({database})", stall
                          ).copy_into(pipe, part_header("database", database))
            pipe.write(END)

        scanned = stream_from_python(
            ctx.env, write, set_dir / name, what=what, level=ctx.config.backups.zstd_level,
            total=pg.data_bytes(dumpable) if ctx.env.progress and dumpable else None,
            checker=BundleChecker(dumpable, what)).scanned
    assert scanned is not None  # proven as it was written
    for gone in absent:
        ctx.env.warn(f"{db.name}: database {gone} does not exist (dropped?): the backup "
                     "records it as absent")
    return {
        "database": {
            "type": ENGINE.type, "service": db.service, "server_version": version,
            "image_id": running_image_id(ctx, db.service), "mode": db.mode,
            "dump_flags": list(DUMP_FLAGS),
            "consistency": "one repeatable-read snapshot per database (pg_dump)",
            "databases": scanned.checks["databases"], "globals": scanned.checks["globals"],
            "roles": scanned.checks["roles"], "position": position,
            "absent": absent, "artifacts": [name],
        },
        "artifact": artifact_entry(name, FORMAT, scanned, db.name),
    }


# --- restore

def _globals_sql(text: str, user: str) -> str:
    """The roles dump without the statements on the role backout is connected as: its
    password and attributes stay what they are now (the restore must keep reaching
    the server)."""
    mine = {f"CREATE ROLE {user};", f"CREATE ROLE {_ident(user)};"}
    prefixes = (f"ALTER ROLE {user} ", f"ALTER ROLE {_ident(user)} ")
    return "".join(line for line in text.splitlines(keepends=True)
                   if line.strip() not in mine and not line.startswith(prefixes))


def _apply_globals(env: Environment, pg: Postgres, text: str) -> list[str]:
    """Roles that are missing are created; statements on existing ones that fail are
    reported, not fatal (a role that exists keeps working)."""
    result = pg.run(pg.tool("psql", "-X", "-q", "-w", "-d", "postgres", "-f", "-"),
                    what="roles restore", input_text=_globals_sql(text, pg.user), timeout=600)
    problems = [line for line in result.stderr.splitlines()
                if "ERROR" in line and "already exists" not in line]
    for line in problems:
        env.warn(f"{pg.access.db.name}: roles restore: {env.redact(line)}")
    return problems


class _Receiver:
    """A file next to the server receiving one archive (through the exec'd shell)."""

    def __init__(self, pg: Postgres, database: str) -> None:
        self.pg = pg
        self.path = f"/tmp/backout-restore-{secrets.token_hex(6)}.dump"
        argv = pg.access.argv(["sh", "-c", _RECEIVE, "sh", self.path])
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/kill)
        self.child = proc.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=self.err, env=proc.child_env(pg.access.env),
                                 cwd=str(pg.access.config.project_dir), **proc.CHILD)
        self.database = database

    def write(self, data: bytes) -> None:
        assert self.child.stdin is not None
        interrupt.current().check(f"restore of {self.database}")
        self.child.stdin.write(data)

    def close(self) -> None:
        assert self.child.stdin is not None
        self.child.stdin.close()
        rc = self.child.wait(timeout=600)
        self.err.seek(0)
        stderr = self.err.read().decode(errors="replace")
        self.err.close()
        if rc != 0:
            raise ExternalError(f"{self.pg.access.db.name}: could not write the archive of "
                                f"{self.database} next to the server (exit {rc}): "
                                f"{proc.last_line(stderr)}",
                                fix="check the free space of the container's /tmp")

    def kill(self) -> None:
        self.child.kill()
        self.child.wait()
        self.err.close()

    def remove(self) -> None:
        proc.run(self.pg.access.env, self.pg.access.argv(["rm", "-f", self.path]), timeout=60,
                 check=False, what="remove the restore file")

    def remove_or_warn(self) -> None:
        """``remove`` in a thread of its own: what stops it is said, not lost (the file
        holds the restored data, in the container's /tmp)."""
        try:
            self.remove()
        except Exception as exc:
            message = exc.message if isinstance(exc, BackoutError) else str(exc)
            self.pg.access.env.warn(f"{self.pg.access.db.name}: {self.path} in the container "
                                    f"could not be removed ({message}): remove it by hand")


def _restore_database(pg: Postgres, receiver: _Receiver, jobs: int) -> None:
    """Drop, then pg_restore --create; cut short by an interrupt of the step. A
    pg_restore left running in the container by the kill of its ``docker exec`` ends
    at the next restore's DROP ... WITH (FORCE) (--exit-on-error)."""
    database = receiver.database
    pg.drop_database(database)
    what = f"pg_restore of {database}"
    argv = pg.argv(pg.tool("pg_restore", "--no-password", "--create", "--exit-on-error",
                           "-j", str(jobs), "-d", _maintenance_db(database), receiver.path))
    env = pg.access.env
    env.log_external(f"$ {proc.describe(argv)}")
    with tempfile.TemporaryFile() as err:
        child = proc.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, env=proc.child_env(env, pg.secret_env()),
                            cwd=str(pg.access.config.project_dir), **proc.CHILD)
        try:
            rc = interrupt.current().wait(child, 6 * 3600, what)
        except subprocess.TimeoutExpired as exc:
            child.kill()
            child.wait()
            raise ExternalError(f"{what}: timed out") from exc
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if rc != 0:
        raise pg.access.explain(proc.Result(tuple(argv), rc, "", stderr, 0.0), what)


def restore_postgresql(env: Environment, access: EngineAccess, artifact: Path,
                       section: dict[str, Any]) -> dict[str, Any]:
    """Roles first (owners must exist), then each database dropped and recreated from
    its archive. Databases the backup records as absent are dropped, so putting a
    safety backup back reproduces exactly what was there."""
    pg = Postgres(access)
    jobs = restore_jobs()
    databases: list[str] = []
    what = f"{access.db.name} restore"
    # Each received file is removed beside what follows (a `docker exec`, 0.1 s); all
    # removals have ended when this returns or raises.
    with proc.settled() as removals:
        with decompressed(env, artifact, stderr=subprocess.DEVNULL) as zstd:
            assert zstd.stdout is not None
            first = zstd.stdout.read(len(BUNDLE_MAGIC))
            if first.startswith(ARCHIVE_MAGIC):  # an operator's own pg_dump -Fc file
                events = _plain_events(first, zstd.stdout, list(section["databases"]))
            else:
                events = _bundle_events(first, zstd.stdout, what)
            globals_text: list[bytes] = []
            receiver: _Receiver | None = None
            try:
                for event, kind, value in events:
                    if kind == "globals":
                        if event == "data":
                            globals_text.append(value)
                        elif event == "end":
                            _apply_globals(env, pg, b"".join(globals_text).decode())
                    elif event == "start":
                        receiver = _Receiver(pg, value)
                    elif event == "data":
                        assert receiver is not None
                        receiver.write(value)
                    else:
                        assert receiver is not None
                        receiver.close()
                        _restore_database(pg, receiver, jobs)  # failed: removed below
                        removals.append(proc.Background(receiver.remove_or_warn))
                        databases.append(receiver.database)
                        receiver = None
            except BaseException:
                if receiver is not None:
                    receiver.kill()
                    receiver.remove()
                raise
        if zstd.returncode not in (0, None):
            raise IntegrityError(f"{what}: {artifact.name} does not decompress")
        for gone in section.get("absent", []):
            pg.drop_database(gone)
        counts = pg.table_counts(databases)
    return {"counts": counts, "jobs": jobs}


def _bundle_events(first: bytes, stream: IO[bytes], what: str) -> Any:
    reader = BundleReader(what)
    data = first
    while data:
        yield from reader.feed(data)
        data = stream.read(CHUNK)
    reader.finish()


def _plain_events(first: bytes, stream: IO[bytes], databases: list[str]) -> Any:
    name = databases[0]
    yield "start", "database", name
    data = first
    while data:
        yield "data", "database", data
        data = stream.read(CHUNK)
    yield "end", "database", name


def expected_counts(section: Mapping[str, Any]) -> dict[str, Any]:
    return {d: v["tables"] for d, v in section["databases"].items()}


def counts_match(section: Mapping[str, Any], counts: Mapping[str, Any]) -> bool:
    return expected_counts(section) == dict(counts)


def _trial(target: TrialTarget, artifact: Path, section: dict[str, Any]) -> dict[str, Any]:
    container = run_throwaway(target.env, target.image, ["-e", "POSTGRES_PASSWORD"],
                              {"POSTGRES_PASSWORD": target.password})
    target.holder.append(container)
    access = EngineAccess(target.env, target.config,
                          dataclasses.replace(target.db, user="postgres"), target.platform,
                          container=container)
    pg = Postgres(access)

    def ready() -> bool:
        pg.ready()
        return bool(pg.version())

    wait_ready(ready, "postgresql")
    result = restore_postgresql(target.env, access, artifact, section)
    return {"ok": counts_match(section, result["counts"]),
            "expected": expected_counts(section), "restored": result["counts"]}


def _data_loss(access: EngineAccess, section: dict[str, Any],
               current: dict[str, Any] | None = None) -> dict[str, Any]:
    """``current``: a section of the same server taken since (the restore's safety
    backup). The server's WAL position is asked in any case (one psql with the
    databases and the counters); when it has not moved since ``current``'s, nothing
    was written anywhere on the server since that dump began, so its row counts are
    the live ones and the tables are not counted again (a scan of each). Any write
    since (a writer backout does not know, a resumed operation whose writers came
    back) moves it: the tables are counted."""
    pg = Postgres(access)
    position = section.get("position")
    facts = pg.facts(position=True)
    now = _unmoved_counts(section, current, facts)
    present = facts.databases
    if now is None:
        now = pg.table_counts([d for d in section["databases"] if d in present])
    then = expected_counts(section)
    deltas = count_deltas(then, {**{d: {} for d in then}, **now})
    out: dict[str, Any] = {"row_deltas": deltas, "changes": sum(abs(v) for v in deltas.values()),
                           "databases_missing_now": sorted(set(section["databases"]) - present)}
    if position:
        out["wal"] = {"from": position["lsn"], "bytes": lsn_distance(position["lsn"], facts.lsn)}
        transactions = 0
        for database, before in position.get("stats", {}).items():
            after = facts.stats.get(database)
            # A stats reset (or a server restored from a file copy) restarts the
            # counters: the difference then says nothing.
            if after is None or after["stats_reset"] != before["stats_reset"]:
                transactions = -1
                break
            transactions += after["transactions"] - before["transactions"]
        out["transactions"] = None if transactions < 0 else transactions
    return out


def _unmoved_counts(section: dict[str, Any], current: dict[str, Any] | None,
                    facts: ServerFacts) -> dict[str, dict[str, int]] | None:
    """``current``'s row counts of ``section``'s databases when they are the live ones:
    the WAL position where ``current``'s dump began is the server's now, and ``current``
    took (or found absent) every database ``section`` holds, as the server lists them
    now. None otherwise (the tables are then counted)."""
    if current is None:
        return None
    at = (current.get("position") or {}).get("lsn")
    if not at or lsn_distance(at, facts.lsn) != 0:
        return None
    dumped, absent = set(current["databases"]), set(current.get("absent", []))
    wanted = set(section["databases"])
    if not wanted <= dumped | absent or (wanted & facts.databases) != (wanted & dumped):
        return None
    return {d: v for d, v in expected_counts(current).items() if d in wanted}


_LSN_TEXT = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")


def lsn_distance(start: str, end: str) -> int | None:
    """``pg_wal_lsn_diff(end, start)`` of two LSNs as PostgreSQL prints them ("16/B374D848":
    the high and low 32 bits in hex); None for a text that is not one."""
    def value(lsn: str) -> int | None:
        if not _LSN_TEXT.fullmatch(lsn):
            return None
        high, _, low = lsn.partition("/")
        return (int(high, 16) << 32) + int(low, 16)
    a, b = value(start), value(end)
    return None if a is None or b is None else b - a


class PostgreSQLEngine(EngineBase):
    suffix = ".pgbundle.zst"
    type = "postgresql"
    description = "a PostgreSQL backup (pg_dump archives)"
    count_unit = "rows"
    image_patterns = ("postgres", "postgis", "timescaledb")
    image_repositories = ("postgres", "postgis/postgis", "timescale/timescaledb",
                          "timescale/timescaledb-ha", "bitnami/postgresql")
    server_programs = ("postgres",)
    # The official image's superuser, bitnami's superuser, then bitnami's application
    # user (owner of one database only: no roles, no DROP DATABASE of another owner).
    credentials = ((None, ("POSTGRES_PASSWORD",), ("POSTGRES_USER",)),
                   ("postgres", ("POSTGRESQL_POSTGRES_PASSWORD",), None),
                   (None, ("POSTGRESQL_PASSWORD",), ("POSTGRESQL_USERNAME",)))
    limited_user_note = ("a restore recreates roles and databases, which needs the superuser: "
                         "set POSTGRESQL_POSTGRES_PASSWORD on the service for full restores")
    database_name_vars = ("POSTGRES_DB", "POSTGRESQL_DATABASE")

    def dump(self, ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        return _dump(ctx, EngineAccess(ctx.env, ctx.config, db, ctx.platform), set_dir)

    def checker(self, section: Mapping[str, Any], what: str) -> Checker:
        if section.get("plain_archive"):
            return PlainArchiveChecker(what)
        return BundleChecker(list(section.get("databases", {})), what)

    def sniff(self, head: bytes, path: Path) -> int:
        if head.startswith(BUNDLE_MAGIC) or head.startswith(ARCHIVE_MAGIC):
            return 3
        return 0

    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]:
        from backout.storage.pipeline import head_of

        what = artifact.name
        plain = head_of(env, artifact, len(ARCHIVE_MAGIC)) == ARCHIVE_MAGIC
        checker: Checker = PlainArchiveChecker(what) if plain else BundleChecker([], what)
        checks = scan(env, artifact, checker, what=what, passthrough=True).checks
        return {"type": self.type, "databases": checks["databases"], "plain_archive": plain}

    def expected_counts(self, section: Mapping[str, Any]) -> Any:
        return expected_counts(section)

    def counts_match(self, section: Mapping[str, Any], counts: Any) -> bool:
        return counts_match(section, counts)

    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]:
        return restore_postgresql(env, access, artifact, section)

    def trial_restore(self, target: TrialTarget, artifact: Path,
                      section: dict[str, Any]) -> dict[str, Any]:
        return _trial(target, artifact, section)

    def probe(self, access: EngineAccess) -> str:
        pg = Postgres(access)
        try:
            # A server that takes the connection and never answers must not hold a
            # verify 120 s: libpq waits for ever by default (pg_isready, 3 s).
            return pg.version(connect_timeout=5, timeout=15)
        except ExternalError:
            # pg_isready says what a server that does not answer is doing (starting,
            # shutting down); asked only then: one process less for every verify
            # (two `docker exec` in a row were its longest check, 0.35 s).
            pg.ready()
            raise

    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        return _data_loss(access, section, current)

    def overwritten(self, db: DatabaseConfig) -> str:
        return "its databases are dropped and recreated from the archives (roles kept or added)"


ENGINE = PostgreSQLEngine()
