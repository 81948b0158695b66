"""MySQL / MariaDB through their own client tools (mariadb/mysql, mariadb-dump/mysqldump)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
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
    dumpable_databases,
    run_throwaway,
    running_image_id,
    wait_ready,
)
from backout.engines.formats import MySQLDumpChecker
from backout.engines.mysqlload import ClientSession, load_in_parallel
from backout.environment import Environment, switched_off
from backout.errors import BackoutError, ExternalError
from backout.platforms.base import Platform
from backout.storage.pipeline import (
    Checker,
    DiskFullError,
    ProofProcessError,
    StalledError,
    Written,
    decompress_into,
    scan,
    stream_from_python,
    stream_to_file,
)

SYSTEM_DATABASES = {"information_schema", "performance_schema", "mysql", "sys"}
# The flags the runbook's backup used, plus what makes a dump restorable as-is.
DUMP_FLAGS = ("--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
              "--quick", "--default-character-set=utf8mb4")
# Use whichever client the image ships (MariaDB renamed them; MySQL never did).
_PICK = 'b=$(command -v {a} || command -v {b}) || {{ echo "{a}/{b} not found" >&2; exit 127; }}; exec "$b" "$@"'


def _tool(a: str, b: str, args: Sequence[str], *, into: str | None = None) -> list[str]:
    """``a args`` or else ``b args``; ``into``: its output into that file (a path of
    backout's own, needing no quotes) instead of its stdout."""
    return ["sh", "-c", _PICK.format(a=a, b=b) + ("" if into is None else f" > {into}"),
            "sh", *args]


# The databases (as SHOW DATABASES lists them: those the account may see) and their
# base tables, tagged, in hex (``server_facts``).
FACTS_NAMES = ("SELECT 'd', HEX(schema_name) FROM information_schema.schemata "
               "ORDER BY schema_name; SELECT 't', HEX(table_schema), HEX(table_name) FROM "
               "information_schema.tables WHERE table_type = 'BASE TABLE' AND {within}")


def _schemas_sql(names: Sequence[str]) -> str:
    """``table_schema`` among ``names``, else among the user databases."""
    if names:
        return "table_schema IN ({})".format(", ".join(f"'{_sql_str(n)}'" for n in names))
    return "table_schema NOT IN ({})".format(", ".join(f"'{d}'" for d in sorted(SYSTEM_DATABASES)))


def _unhex(text: str) -> str:
    return bytes.fromhex(text).decode("utf-8", errors="replace")


def _dump_flags(binlog: bool, ignore: Sequence[str], force: bool) -> list[str]:
    flags = list(DUMP_FLAGS)
    if binlog:
        flags.append("--master-data=2")  # binlog position as a comment in the head
    flags += [f"--ignore-table={name}" for name in ignore]
    if force:
        flags.append("--force")
    return flags


# A dump from beside the server (``MySQL.beside_dump_argv``): the FIFO it writes into,
# in a directory of backout's bound into the client's container there; its label.
BESIDE_MOUNT = "/backout-stream"
BESIDE_FIFO = "dump"
BESIDE_CNF = "client.cnf"
DUMP_HELPER_LABEL = "io.backout.dump-helper"
BESIDE_SWITCH = "BACKOUT_DUMP_BESIDE"


def _option_value(text: str) -> str:
    """``text`` as a value of a MySQL option file: double-quoted, with the escapes the
    file's reader undoes (a backslash, a quote, line breaks, a tab)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def dump_helper_label(access: EngineAccess) -> str:
    return f"{DUMP_HELPER_LABEL}={access.config.project_dir}:{access.db.service}"


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    version: str
    binlog: bool
    databases: list[str]
    tcp_port: int | None  # None: the server takes no TCP connection (skip-networking)
    # the base tables each database has, as the account backout checked sees them
    tables: dict[str, set[str]] = dataclasses.field(default_factory=dict)


class MySQL:
    def __init__(self, access: EngineAccess) -> None:
        self.access = access

    def _auth_args(self) -> list[str]:
        args = [f"--user={self.access.user('root')}"]
        if self.access.db.mode == "tcp":
            args += [f"--host={self.access.db.host}", f"--port={self.access.db.port}",
                     "--protocol=TCP"]
        return args

    def secret_env(self) -> dict[str, str]:
        password = self.access.password()
        return {"MYSQL_PWD": password} if password else {}

    def client_argv(self, *args: str) -> list[str]:
        return _tool("mariadb", "mysql", [*self._auth_args(), *args])

    def query(self, sql: str, *, database: str | None = None, timeout: float = 120) -> list[list[str]]:
        args = ["--batch", "--skip-column-names", "--raw"]
        if database:
            args.append(f"--database={database}")
        result = self.access.run(self.client_argv(*args, "-e", sql), self.secret_env(),
                                 what="mysql query", timeout=timeout)
        return [line.split("\t") for line in result.stdout.splitlines()]

    def version(self) -> str:
        return self.query("SELECT VERSION()")[0][0]

    def data_bytes(self, databases: Sequence[str]) -> int | None:
        """The server's idea of the data's size (information_schema), a dump's likely
        size for a progress bar's ETA; None when it will not say."""
        names = ", ".join(f"'{_sql_str(d)}'" for d in databases)
        try:
            rows = self.query("SELECT COALESCE(SUM(data_length), 0) FROM information_schema.tables"
                              f" WHERE table_schema IN ({names})", timeout=30)
            return int(rows[0][0]) or None
        except (BackoutError, IndexError, ValueError):
            return None

    def user_databases(self) -> list[str]:
        return [r[0] for r in self.query("SHOW DATABASES") if r[0] not in SYSTEM_DATABASES]

    def server_facts(self, tables_of: Sequence[str] = ()) -> ServerFacts:
        """The version, whether binary logging is on, the user databases, the TCP port,
        the base tables (of ``tables_of``, else of every user database): what a dump
        asks first, in one session (a `docker exec` each cost a backup 0.07 s). Names
        come as hex: a tab or a line break in one cannot cut it into another row."""
        rows = self.query("SELECT VERSION(), @@log_bin, @@port, @@skip_networking; "
                          + FACTS_NAMES.format(within=_schemas_sql(tables_of)))
        if not rows or len(rows[0]) != 4:
            raise ExternalError(f"{self.access.db.name}: unexpected answer to SELECT VERSION()")
        (version, log_bin, port, no_tcp), rest = rows[0], rows[1:]
        databases: list[str] = []
        tables: dict[str, set[str]] = {}
        for row in rest:
            if row[0] == "d" and len(row) == 2:
                databases.append(_unhex(row[1]))
            elif row[0] == "t" and len(row) == 3:
                tables.setdefault(_unhex(row[1]), set()).add(_unhex(row[2]))
        return ServerFacts(version, log_bin == "1",
                           [d for d in databases if d not in SYSTEM_DATABASES],
                           int(port) if port.isdigit() and no_tcp != "1" else None, tables)

    def grants(self) -> list[str]:
        return [row[0] for row in self.query("SHOW GRANTS")]

    def foreign_definers(self, databases: Sequence[str]) -> list[str]:
        """Views, routines, triggers and events of ``databases`` defined by another
        user than the one connected: a restore as this user needs SET USER (or SUPER)
        to recreate them with their DEFINER."""
        names = ", ".join(f"'{_sql_str(d)}'" for d in databases)
        union = " UNION ALL ".join(
            f"SELECT '{kind}' AS k, {prefix}_schema AS s, {prefix}_name AS n, definer AS d "
            f"FROM information_schema.{table} WHERE {prefix}_schema IN ({names})"
            for kind, table, prefix in DEFINED_OBJECTS)
        return [r[0] for r in self.query(
            f"SELECT CONCAT(k, ' ', s, '.', n, ' (definer ', d, ')') FROM ({union}) o "
            "WHERE d <> CURRENT_USER() ORDER BY 1") if r and r[0]] if databases else []

    def log_bin(self) -> bool:
        return self.query("SELECT @@log_bin")[0][0] == "1"

    def dump_argv(self, databases: Sequence[str], *, binlog: bool, ignore: Sequence[str] = (),
                  force: bool = False) -> list[str]:
        """``ignore``: ``db.table`` names left out; ``force``: go on past errors
        (each is printed on stderr; see ``dump_errors``)."""
        return self.access.argv(_tool("mariadb-dump", "mysqldump", [
            *self._auth_args(), *_dump_flags(binlog, ignore, force), "--databases", *databases]),
            ["MYSQL_PWD"] if self.secret_env() else [])

    def beside_dump_argv(self, databases: Sequence[str], *, binlog: bool, port: int,
                         directory: Path, ignore: Sequence[str] = (),
                         force: bool = False) -> list[str] | None:
        """The same dump from a client in a container of its own beside the server's
        (its image, its network namespace: TCP to 127.0.0.1:``port``), writing into
        the FIFO ``directory/BESIDE_FIFO``; None where the platform cannot start one,
        or for a server reached otherwise (over TCP from here, a throwaway's)."""
        if self.access.db.mode == "tcp" or self.access.container is not None:
            return None
        # The password in an option file of the private directory (0600), not the
        # container's environment: `docker run -e` keeps that in the container's
        # configuration, on disk and in `docker inspect`, while it exists.
        password = self.access.password()
        defaults = []
        if password:
            self.access.env.redact.add(password)  # as a child's secret_env would be
            cnf = directory / BESIDE_CNF
            fd = os.open(cnf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f"[client]\npassword={_option_value(password)}\n")
            defaults = [f"--defaults-extra-file={BESIDE_MOUNT}/{BESIDE_CNF}"]  # first
        inner = _tool("mariadb-dump", "mysqldump", [
            *defaults, *self._auth_args(), "--host=127.0.0.1", f"--port={port}",
            "--protocol=TCP", *_dump_flags(binlog, ignore, force), "--databases", *databases],
            into=f"{BESIDE_MOUNT}/{BESIDE_FIFO}")
        return self.access.platform.beside_argv(
            self.access.db.service, inner, mount=(directory, BESIDE_MOUNT),
            label=dump_helper_label(self.access))

    def broken_views(self, databases: Sequence[str]) -> list[dict[str, str]]:
        """Views that cannot be opened (a table they read was dropped, their definer
        does not exist...): the dump tools stop at them. Each with the server's reason
        and its definition (SHOW CREATE VIEW works on a broken view)."""
        if not databases:
            return []
        names = ", ".join(f"'{_sql_str(d)}'" for d in databases)
        # A view that opens has at least one column; the server explains each one that
        # does not in a warning of the same statement.
        rows = self.query(
            "SELECT 'view', v.table_schema, v.table_name, v.definer FROM information_schema.views v"
            f" WHERE v.table_schema IN ({names}) AND NOT EXISTS (SELECT 1 FROM"
            " information_schema.columns c WHERE c.table_schema = v.table_schema"
            " AND c.table_name = v.table_name); SHOW WARNINGS")
        warnings = [r for r in rows if len(r) == 3]
        out = []
        for row in rows:
            if len(row) != 4 or row[0] != "view":
                continue
            _kind, db, name, definer = row
            why = "; ".join(dict.fromkeys(
                f"{msg} ({code})" for _level, code, msg in warnings
                if f"'{db}.{name}'" in msg or (code == "1449" and definer.split("@")[0] in msg)))
            created = self.query(f"SHOW CREATE VIEW `{_ident(db)}`.`{_ident(name)}`")
            out.append({"object": f"{db}.{name}", "kind": "view",
                        "why": why or "the view cannot be opened",
                        "definition": created[0][1] if created and len(created[0]) > 1 else ""})
        return out

    def binlog_position(self) -> dict[str, Any] | None:
        """The current binary log file and offset (None when logging is off)."""
        rows = self.query("SHOW MASTER STATUS")
        if not rows or len(rows[0]) < 2:
            return None
        return {"file": rows[0][0], "position": int(rows[0][1])}

    def binlog_sizes(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.query("SHOW BINARY LOGS") if len(r) >= 2}

    def gtid_at(self, file: str, position: int) -> str | None:
        """MariaDB's GTID state at a binlog offset (MySQL has no such function)."""
        try:
            rows = self.query(f"SELECT BINLOG_GTID_POS('{_sql_str(file)}', {int(position)})")
        except ExternalError:
            return None
        value = rows[0][0] if rows and rows[0] else ""
        return value if value and value != "NULL" else None

    def gtid_now(self) -> str | None:
        try:
            rows = self.query("SELECT @@gtid_binlog_pos")
        except ExternalError:
            return None
        return rows[0][0] if rows and rows[0] and rows[0][0] else None

    def restore_argv(self) -> list[str]:
        return self.access.argv(self.client_argv(), ["MYSQL_PWD"] if self.secret_env() else [])

    def session(self, name: str) -> ClientSession:
        """A client reading SQL from a pipe, for a parallel load (mysqlload)."""
        # --unbuffered: the client's answer to a sync leaves it at once (a pipe is
        # otherwise block-buffered: the token would wait for 4 KiB more output)
        argv = self.access.argv(self.client_argv("--unbuffered"),
                                ["MYSQL_PWD"] if self.secret_env() else [])
        return ClientSession(self.access.env, argv, self.secret_env(),
                             str(self.access.config.project_dir), name)

    def table_counts(self, databases: Sequence[str]) -> dict[str, dict[str, int]]:
        """Exact row counts of every base table (used after a restore), in one client
        run (an exec costs ~0.1 s): the server lists the tables and builds the
        counting statement itself (QUOTE and doubled backticks: any name), then runs
        it."""
        out: dict[str, dict[str, int]] = {db: {} for db in databases}
        if not databases:
            return out
        names = ", ".join(f"'{_sql_str(d)}'" for d in databases)
        # the names come back in hex: a tab or a newline in one cannot break the rows
        rows = self.query(
            "SET SESSION group_concat_max_len = 1073741824; "
            "SELECT GROUP_CONCAT(CONCAT('SELECT ', QUOTE(HEX(table_schema)), ', ', "
            "QUOTE(HEX(table_name)), ', COUNT(*) FROM `', REPLACE(table_schema, '`', '``'), "
            "'`.`', REPLACE(table_name, '`', '``'), '`') SEPARATOR ' UNION ALL ') INTO @q "
            "FROM information_schema.tables WHERE table_schema IN "
            f"({names}) AND table_type = 'BASE TABLE'; "
            "SET @q = COALESCE(@q, 'SELECT 1, 2, 3 FROM DUAL WHERE FALSE'); "
            "PREPARE backout_counts FROM @q; EXECUTE backout_counts; "
            "DEALLOCATE PREPARE backout_counts", timeout=3600)
        # the server's spelling of a database may differ in case from the one asked
        # (lower_case_table_names): each answer goes under the name asked
        asked = {d.casefold(): d for d in databases}
        for schema, name, count in sorted(rows):
            db = bytes.fromhex(schema).decode("utf-8", errors="replace")
            table = bytes.fromhex(name).decode("utf-8", errors="replace")
            out.setdefault(db if db in out else asked.get(db.casefold(), db), {})[table] = \
                int(count)
        return {db: dict(sorted(tables.items())) for db, tables in out.items()}


# What a consistent dump (--single-transaction --routines --triggers --events) needs
# on each database, and what the binlog position (--master-data) needs on *.*.
DUMP_PRIVILEGES = ("SELECT", "SHOW VIEW", "TRIGGER", "EVENT")
BINLOG_PRIVILEGES = (("RELOAD",), ("REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"))
# (kind, information_schema table, column prefix) of the objects that carry a DEFINER
DEFINED_OBJECTS = (("view", "views", "table"), ("routine", "routines", "routine"),
                   ("trigger", "triggers", "trigger"), ("event", "events", "event"))
_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<scope>\S+) TO ", re.I)


def granted(grants: Sequence[str]) -> dict[str, set[str]]:
    """``SHOW GRANTS`` lines as scope (``*`` or a database) -> privileges."""
    out: dict[str, set[str]] = {}
    for line in grants:
        m = _GRANT.match(line.strip())
        if m is None:
            continue
        scope = m.group("scope")
        db, _, table = scope.partition(".")
        if table not in ("*", "`*`"):
            continue  # table-level grants do not cover a whole database
        name = "*" if db in ("*", "`*`") else db.strip("`").replace("``", "`")
        privs = {p.strip().upper() for p in m.group("privs").split(",")}
        if "ALL PRIVILEGES" in privs or "ALL" in privs:
            privs |= {*DUMP_PRIVILEGES, "RELOAD", "REPLICATION CLIENT", "BINLOG MONITOR",
                      "SUPER", "SET USER"} if name == "*" else set(DUMP_PRIVILEGES)
        out.setdefault(name, set()).update(privs)
    return out


def missing_dump_privileges(grants: Sequence[str], databases: Sequence[str]) -> dict[str, list[str]]:
    """database -> the privileges a consistent dump needs that ``grants`` lack."""
    have = granted(grants)
    out = {}
    for db in databases:
        held = have.get("*", set()) | have.get(db, set())
        missing = [p for p in DUMP_PRIVILEGES if p not in held]
        if missing:
            out[db] = missing
    return out


def can_set_definers(grants: Sequence[str]) -> bool:
    held = granted(grants).get("*", set())
    return bool(held & {"SET USER", "SUPER"})


def can_read_binlog_position(grants: Sequence[str]) -> bool:
    held = granted(grants).get("*", set())
    return all(any(p in held for p in alternatives) for alternatives in BINLOG_PRIVILEGES)


def _sql_str(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _ident(value: str) -> str:
    return value.replace("`", "``")


_DUMP_ERROR = re.compile(r"Couldn't execute '(?P<stmt>[^']*)': (?P<msg>.*)$")
_OBJECT = re.compile(r"(?:FROM|TABLE|VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT)\s+`([^`]+)`", re.I)


def dump_errors(stderr: str) -> list[dict[str, str]]:
    """The objects a ``--force`` dump went past, from its error lines."""
    out = []
    for line in stderr.splitlines():
        m = _DUMP_ERROR.search(line)
        if m:
            obj = _OBJECT.search(m.group("stmt"))
            out.append({"object": obj.group(1) if obj else m.group("stmt"),
                        "kind": "object", "why": m.group("msg").strip()})
    return out


def _dump_beside(env: Environment, my: MySQL, set_dir: Path,
                 dump: Callable[[list[str], Path | None], Written],
                 argv_for: Callable[[Path], list[str] | None],
                 lacks: Callable[[Written], str | None]) -> Written | None:
    """The dump through a FIFO, from a client beside the server (``argv_for`` a
    directory of backout's own: the client's argv): its bytes pass no Docker Engine,
    whose exec stream carried them at a third of the client's speed. None where the
    platform gives no such client, when the client there failed or nothing came
    through (one that cannot connect or log in over TCP, an engine that maps
    backout's user elsewhere), or when the dump ``lacks`` what the server has
    (another account over TCP than the one checked, which sees less): the caller's
    way then (said with --verbose). Its container is removed on any failure (on
    success it removed itself).

    The directory is made in the set's (a FIFO and the client's option file): one a
    killed run left there is removed first (a resumed backup dumps into the same
    set), an abandoned set goes whole."""
    # one a killed run left (`backout resume` dumps into the same set): its option
    # file holds the password and it is no part of the set to publish
    for left in set_dir.glob(".beside-*"):
        shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".beside-", dir=set_dir) as directory:
        fifo = Path(directory) / BESIDE_FIFO
        try:
            os.mkfifo(fifo, 0o600)
        except OSError as exc:  # a file system without FIFOs (some network ones)
            env.log_external(f"  no FIFO in {set_dir}: {exc.strerror or exc}: through "
                             "docker exec")
            return None
        argv = argv_for(Path(directory))
        if argv is None:
            return None
        written = None
        try:
            written = dump(argv, fifo)
        except (DiskFullError, StalledError, ProofProcessError):
            raise  # not the way's: through docker exec it would fail the same
        except ExternalError as exc:
            # nothing came through, or the client there failed: it may be the way (an
            # account over TCP that may do less); docker exec answers for the server
            env.log_external(f"  {exc.message}: through docker exec instead")
        finally:
            if written is None:
                remove_dump_helpers(env, my.access)
        why = None if written is None else lacks(written)
        if why is not None:
            env.log_external(f"  the dump from beside the server {why}: through docker exec "
                             "instead")
            return None
        return written


def _tables_missing(written: Written, expected: Mapping[str, set[str]]) -> str | None:
    """What of ``expected`` (database -> base tables) the dump's own count lacks."""
    dumped = (written.scanned.checks if written.scanned else {}).get("databases", {})
    missing = sorted(f"{db}.{table}" for db, tables in expected.items()
                     for table in tables - set(dumped.get(db, {}).get("tables", {})))
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"lacks {shown}"


def remove_dump_helpers(env: Environment, access: EngineAccess) -> None:
    """Remove the dump clients beside the service's server that are left (best
    effort, bounded: one whose reader is gone ends by itself at its next write)."""
    label = dump_helper_label(access)
    try:
        found = proc.run(env, ["docker", "ps", "-aq", "--filter", f"label={label}"],
                         timeout=20, check=False, what="docker ps").stdout.split()
        if found:
            proc.run(env, ["docker", "rm", "-f", "-v", *found], timeout=30, check=False,
                     what="docker rm")
    except ExternalError:
        pass


def _dump_mysql(ctx: EngineContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
    my = MySQL(access)
    db = access.db
    # The views of the configured databases are read beside the server's facts (a
    # `docker exec` each, 0.1-0.15 s, on every backup); all databases: once listed.
    views = proc.Background(lambda: my.broken_views(db.databases)) if db.databases else None
    with proc.settled() as started:  # the views' read ends here, whatever happens
        started += [views] if views is not None else []
        # proves reachability and credentials before anything is written
        facts = my.server_facts(db.databases)
        version, binlog, present = facts.version, facts.binlog, facts.databases
        dumpable, absent = dumpable_databases(ctx, db, present)
        user = access.user("root")
        if user != "root":
            # An application user (no root password in the compose file): say what it
            # lacks for a consistent dump before dumping, rather than a partial file.
            grants = my.grants()
            missing = missing_dump_privileges(grants, dumpable)
            if missing:
                listed = "; ".join(f"{', '.join(p)} on {d}" for d, p in missing.items())
                first = next(iter(missing))
                raise ExternalError(
                    f"{db.name}: user {user!r} lacks what a consistent dump needs: {listed}",
                    fix=f"as root: GRANT {', '.join(DUMP_PRIVILEGES)} ON `{_ident(first)}`.* TO "
                        f"'{_sql_str(user or '')}'@'%' (for each database), or give backout root's "
                        "password")
            foreign = my.foreign_definers(dumpable)
            if foreign and not can_set_definers(grants):
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                ctx.env.warn(f"{db.name}: a restore as {user!r} will fail: {shown} must be recreated "
                             "with another user as DEFINER, which needs SET USER (or SUPER); "
                             "give backout root's password, or grant it")
            if binlog and not can_read_binlog_position(grants):
                binlog = False
                ctx.env.warn(f"{db.name}: user {user!r} cannot read the binlog position (needs "
                             "RELOAD and REPLICATION CLIENT/BINLOG MONITOR): the backup records "
                             "no binlog position")
        # Broken views stop the dump tools; they cannot be restored either (CREATE VIEW
        # checks what it reads), so they are left out and recorded with their definition.
        # (asked of every configured database: one that does not exist has no view)
        not_dumped: list[dict[str, str]] = (
            my.broken_views(dumpable) if views is None else views.result())
    name = artifact_name(db)
    what = f"{db.name} dump"
    level = ctx.config.backups.zstd_level
    if not dumpable:  # every configured database was dropped: an empty, valid dump
        text = _EMPTY_DUMP.format(names=", ".join(absent), at=time.strftime("%Y-%m-%d %H:%M:%S"))

        def write(pipe: IO[bytes]) -> None:
            pipe.write(text.encode())

        written = stream_from_python(ctx.env, write, set_dir / name, what=what, level=level,
                                     checker=MySQLDumpChecker(dumpable, what))
    else:
        ignore = [item["object"] for item in not_dumped]

        # from beside the server while that gives a dump; else (and after it gave
        # nothing once) through `docker exec`
        beside = [facts.tcp_port is not None and not switched_off(ctx.env.env, BESIDE_SWITCH)]

        def run_dump(force: bool) -> Written:
            def dump(argv: list[str], into: Path | None) -> Written:
                return stream_to_file(  # beside: its password is in its option file
                    ctx.env, argv, set_dir / name, what=what, level=level,
                    secret_env=my.secret_env() if into is None else None,
                    cwd=str(ctx.config.project_dir),
                    total=my.data_bytes(dumpable) if ctx.env.progress else None,
                    stall=ctx.config.backups.stall_seconds, ok_exit=(0, 2) if force else (0,),
                    checker=MySQLDumpChecker(dumpable, what), into=into)

            if beside[0]:
                assert facts.tcp_port is not None
                port = facts.tcp_port
                expected = {d: facts.tables.get(d, set()) for d in dumpable}
                done = _dump_beside(
                    ctx.env, my, set_dir, dump,
                    lambda directory: my.beside_dump_argv(
                        dumpable, binlog=binlog, port=port, directory=directory,
                        ignore=ignore, force=force),
                    lambda written: _tables_missing(written, expected))
                if done is not None:
                    return done
                beside[0] = False
            return dump(my.dump_argv(dumpable, binlog=binlog, ignore=ignore, force=force), None)

        try:
            written = run_dump(force=False)
        except ExternalError as exc:
            if not ctx.safety or isinstance(exc, (DiskFullError, StalledError,
                                                  ProofProcessError)):
                raise  # not the damage: a forced dump would fail the same way
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
    scanned = written.scanned
    assert scanned is not None  # proven as it was written
    return {
        "database": {
            "type": "mysql", "service": db.service, "server_version": version,
            "image_id": running_image_id(ctx, db.service), "mode": db.mode,
            "dump_flags": [*DUMP_FLAGS, *(["--master-data=2"] if binlog else [])],
            "consistency": "single-transaction snapshot (consistent for InnoDB tables)",
            "binlog": scanned.checks.get("binlog"),
            "databases": scanned.checks["databases"],
            "absent": absent, "not_dumped": not_dumped,
            "artifacts": [name],
        },
        "artifact": artifact_entry(name, FORMAT, scanned, db.name),
    }


_EMPTY_DUMP = """-- backout: none of the configured databases exist ({names}): nothing to dump
-- Dump completed on {at}
"""


def restore_mysql(env: Environment, access: EngineAccess, artifact: Path,
                  section: dict[str, Any]) -> dict[str, Any]:
    """Drop and reload every database of the dump. Databases the dump records as
    absent when it was taken (a safety backup after a DROP DATABASE) are dropped, so
    putting a safety backup back reproduces exactly what was there."""
    my = MySQL(access)
    databases = list(section["databases"])
    drops = [f"DROP DATABASE IF EXISTS `{_ident(db)}`"
             for db in [*databases, *section.get("absent", [])]]
    if drops:  # one client run for all (an exec costs ~0.1 s)
        my.query("; ".join(drops), timeout=600 * len(drops))
    what = f"{access.db.name} restore"
    sessions = access.config.backups.restore_sessions
    if sessions > 1:
        load_in_parallel(env, artifact, my.session, sessions, what=what,
                         stall=access.config.backups.stall_seconds)
    else:
        decompress_into(env, artifact, my.restore_argv(), what=what,
                        secret_env=my.secret_env(), cwd=str(access.config.project_dir),
                        stall=access.config.backups.stall_seconds)
    counts = my.table_counts(databases)
    return {"counts": counts}


def mysql_counts_match(section: dict[str, Any], counts: dict[str, dict[str, int]]) -> bool:
    expected = {db: v["tables"] for db, v in section["databases"].items()}
    return expected == counts


def _test_mysql(env: Environment, cfg: Config, db: DatabaseConfig, platform: Platform, image: str,
                artifact: Path, section: dict[str, Any], password: str,
                holder: list[str]) -> dict[str, Any]:
    from backout.engines.mysql import MySQL

    container = run_throwaway(env, image, ["-e", "MYSQL_ROOT_PASSWORD", "-e", "MARIADB_ROOT_PASSWORD"],
                     {"MYSQL_ROOT_PASSWORD": password, "MARIADB_ROOT_PASSWORD": password})
    holder.append(container)
    access = EngineAccess(env, cfg, dataclasses.replace(db, user="root"), platform,
                          container=container)
    wait_ready(lambda: bool(MySQL(access).version()), "mysql")
    result = restore_mysql(env, access, artifact, section)
    return {"ok": mysql_counts_match(section, result["counts"]),
            "expected": expected_counts(section),
            "restored": result["counts"]}


def _mysql(access: EngineAccess, section: dict[str, Any],
           current: dict[str, Any] | None = None) -> dict[str, Any]:
    """``current``: a section of the same server taken since (the restore's safety
    backup). When the binary log has not moved since its dump's position, nothing
    was written anywhere on the server since, so its row counts are the live ones and
    the tables are not counted again (InnoDB scans each); any write since (a writer
    backout does not know, an event, a resumed operation whose writers came back)
    moves it, and the tables are counted. Without a binary log they are counted."""
    my = MySQL(access)
    binlog = section.get("binlog")

    def live_counts() -> tuple[set[str], dict[str, dict[str, int]]]:
        # the databases and their counts at once too: a database that does not exist
        # has no table to count, and its answer is left out as the listing says
        with proc.settled() as started:
            counts = proc.Background(lambda: my.table_counts(list(section["databases"])))
            started.append(counts)
            present = set(my.user_databases())
            return present, {d: c for d, c in counts.result().items() if d in present}

    # The reads are independent: asked at once (a `docker exec` each, 0.1-0.5 s, one
    # after the other made a second of every `rollback db mysql`'s plan). Without a
    # safety backup to compare with (the plan's estimate), the tables are counted
    # whatever the binlog says, so the count starts with the rest. Every read has
    # ended when this returns or raises.
    with proc.settled() as started:
        counted = proc.Background(live_counts) if current is None else None
        now_gtid = proc.Background(my.gtid_now) if binlog else None
        # the GTID at the backup's binlog position when its dump did not write it (the
        # server reads the binlog up to there: 0.25 s at 180 MB)
        then_gtid = (proc.Background(lambda: my.gtid_at(binlog["file"],
                                                        int(binlog["position"])))
                     if binlog and not binlog.get("gtid") else None)
        started += [call for call in (counted, now_gtid, then_gtid) if call is not None]
        position = my.binlog_position() if binlog or current is not None else None
        now_counts = _unmoved_counts(section, current, position)
        if now_counts is not None:
            assert current is not None
            present = set(current["databases"])
        else:
            present, now_counts = counted.result() if counted else live_counts()
        then = expected_counts(section)
        deltas = count_deltas(then, {**{d: {} for d in then}, **now_counts})
        out: dict[str, Any] = {"row_deltas": deltas,
                               "changes": sum(abs(v) for v in deltas.values()),
                               "databases_missing_now": sorted(set(section["databases"])
                                                               - present)}
        if binlog and position:
            out["binlog"] = {"from": binlog, "to": position,
                             "bytes": _binlog_bytes(my, binlog, position)}
            before = binlog.get("gtid") or (then_gtid.result() if then_gtid else None)
            after = now_gtid.result() if now_gtid is not None else None
            if before is not None and after is not None:
                out["gtid"] = {"from": before, "to": after,
                               "transactions": _gtid_transactions(before, after)}
        return out


def _unmoved_counts(section: dict[str, Any], current: dict[str, Any] | None,
                    position: dict[str, Any] | None) -> dict[str, dict[str, int]] | None:
    """``current``'s row counts of ``section``'s databases when they are the live
    ones: the binlog is where ``current``'s dump took it, ``current`` left nothing
    out (``not_dumped``) and took, or found absent, every database of ``section``."""
    at = (current or {}).get("binlog")
    if current is None or not at or position is None or current.get("not_dumped") \
            or (at["file"], int(at["position"])) != (position["file"], position["position"]):
        return None
    if not set(section["databases"]) <= set(current["databases"]) | set(current.get("absent", [])):
        return None
    return {d: v for d, v in expected_counts(current).items() if d in section["databases"]}


def _binlog_bytes(my: MySQL, start: dict[str, Any], end: dict[str, Any]) -> int | None:
    if start["file"] == end["file"]:
        return int(end["position"]) - int(start["position"])
    sizes = my.binlog_sizes()
    if start["file"] not in sizes:
        return None  # purged since: the distance cannot be told
    names = sorted(sizes)
    total = sizes[start["file"]] - int(start["position"])
    for name in names[names.index(start["file"]) + 1:]:
        if name == end["file"]:
            return total + int(end["position"])
        total += sizes[name]
    return None


def _gtid_transactions(before: str, after: str) -> int | None:
    """Transactions between two MariaDB GTID positions (``domain-server-seq``, comma
    separated per domain): the sequence numbers' difference, summed over domains."""
    def parse(text: str) -> dict[str, int]:
        out = {}
        for part in text.split(","):
            bits = part.strip().split("-")
            if len(bits) == 3 and bits[2].isdigit():
                out[bits[0]] = int(bits[2])
        return out

    b, a = parse(before), parse(after)
    if not a:
        return None
    return sum(seq - b.get(domain, 0) for domain, seq in a.items())


def artifact_name(db: DatabaseConfig) -> str:
    return ENGINE.artifact_name(db)


FORMAT = "mysql-sql+zstd"


def expected_counts(section: Mapping[str, Any]) -> dict[str, Any]:
    return {db: v["tables"] for db, v in section["databases"].items()}


class MySQLEngine(EngineBase):
    suffix = ".sql.zst"
    type = "mysql"
    description = "a MySQL dump"
    count_unit = "rows"
    image_patterns = ("mariadb", "mysql")
    image_repositories = ("mysql", "mariadb", "percona", "percona/percona-server",
                          "mysql/mysql-server", "bitnami/mysql", "bitnami/mariadb",
                          "bitnami/mariadb-galera")
    server_programs = ("mariadbd", "mysqld")
    limited_user_note = "each backup checks the privileges a consistent dump needs"
    credentials = (("root", ("MYSQL_ROOT_PASSWORD", "MARIADB_ROOT_PASSWORD"), None),
                   (None, ("MYSQL_PASSWORD", "MARIADB_PASSWORD"), ("MYSQL_USER", "MARIADB_USER")))
    database_name_vars = ("MYSQL_DATABASE", "MARIADB_DATABASE")
    MAGIC = (b"-- MySQL dump", b"-- MariaDB dump", b"/*M!999999")

    def dump(self, ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        return _dump_mysql(ctx, EngineAccess(ctx.env, ctx.config, db, ctx.platform), set_dir)

    def checker(self, section: Mapping[str, Any], what: str) -> Checker:
        return MySQLDumpChecker(list(section.get("databases", {})), what)

    def sniff(self, head: bytes, path: Path) -> int:
        if any(head.startswith(m) or m in head[:200] for m in self.MAGIC):
            return 3
        if head.startswith(b"--") or b"CREATE TABLE" in head or b"INSERT INTO" in head:
            return 1
        return 0

    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]:
        what = artifact.name
        checks = scan(env, artifact, MySQLDumpChecker([], what), what=what, passthrough=True).checks
        return {"type": self.type, "databases": checks["databases"]}

    def expected_counts(self, section: Mapping[str, Any]) -> Any:
        return expected_counts(section)

    def counts_match(self, section: Mapping[str, Any], counts: Any) -> bool:
        return mysql_counts_match(dict(section), counts)

    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]:
        return restore_mysql(env, access, artifact, section)

    def trial_restore(self, target: TrialTarget, artifact: Path,
                      section: dict[str, Any]) -> dict[str, Any]:
        return _test_mysql(target.env, target.config, target.db, target.platform, target.image,
                           artifact, section, target.password, target.holder)

    def probe(self, access: EngineAccess) -> str:
        return MySQL(access).version()

    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        return _mysql(access, section, current)

    def overwritten(self, db: DatabaseConfig) -> str:
        return "its databases are dropped and reloaded"


ENGINE = MySQLEngine()
