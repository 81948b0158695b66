"""MySQL / MariaDB through their own client tools (mariadb/mysql, mariadb-dump/mysqldump)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from backout.engines.access import EngineAccess
from backout.errors import BackoutError, ExternalError

SYSTEM_DATABASES = {"information_schema", "performance_schema", "mysql", "sys"}
# The flags the runbook's backup used, plus what makes a dump restorable as-is.
DUMP_FLAGS = ("--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
              "--quick", "--default-character-set=utf8mb4")
# Use whichever client the image ships (MariaDB renamed them; MySQL never did).
_PICK = 'b=$(command -v {a} || command -v {b}) || {{ echo "{a}/{b} not found" >&2; exit 127; }}; exec "$b" "$@"'


def _tool(a: str, b: str, args: Sequence[str]) -> list[str]:
    return ["sh", "-c", _PICK.format(a=a, b=b), "sh", *args]


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

    def log_bin(self) -> bool:
        return self.query("SELECT @@log_bin")[0][0] == "1"

    def dump_argv(self, databases: Sequence[str], *, binlog: bool, ignore: Sequence[str] = (),
                  force: bool = False) -> list[str]:
        """``ignore``: ``db.table`` names left out; ``force``: go on past errors
        (each is printed on stderr; see ``dump_errors``)."""
        flags = list(DUMP_FLAGS)
        if binlog:
            flags.append("--master-data=2")  # binlog position as a comment in the head
        flags += [f"--ignore-table={name}" for name in ignore]
        if force:
            flags.append("--force")
        return self.access.argv(_tool("mariadb-dump", "mysqldump",
                                      [*self._auth_args(), *flags, "--databases", *databases]),
                                ["MYSQL_PWD"] if self.secret_env() else [])

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

    def table_counts(self, databases: Sequence[str]) -> dict[str, dict[str, int]]:
        """Exact row counts of every base table (used after a restore)."""
        out: dict[str, dict[str, int]] = {}
        for db in databases:
            tables = [r[0] for r in self.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                f"'{_sql_str(db)}' AND table_type = 'BASE TABLE' ORDER BY table_name")]
            out[db] = {}
            if not tables:
                continue
            union = " UNION ALL ".join(
                f"SELECT '{_sql_str(t)}', COUNT(*) FROM `{_ident(db)}`.`{_ident(t)}`" for t in tables)
            for name, count in self.query(union):
                out[db][name] = int(count)
        return out


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
