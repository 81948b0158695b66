"""MySQL / MariaDB through their own client tools (mariadb/mysql, mariadb-dump/mysqldump)."""

from __future__ import annotations

from collections.abc import Sequence

from backout.adapters.dbaccess import DbAccess
from backout.errors import BackoutError

SYSTEM_DATABASES = {"information_schema", "performance_schema", "mysql", "sys"}
# The flags the runbook's backup used, plus what makes a dump restorable as-is.
DUMP_FLAGS = ("--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
              "--quick", "--default-character-set=utf8mb4")
# Use whichever client the image ships (MariaDB renamed them; MySQL never did).
_PICK = 'b=$(command -v {a} || command -v {b}) || {{ echo "{a}/{b} not found" >&2; exit 127; }}; exec "$b" "$@"'


def _tool(a: str, b: str, args: Sequence[str]) -> list[str]:
    return ["sh", "-c", _PICK.format(a=a, b=b), "sh", *args]


class MySQL:
    def __init__(self, access: DbAccess) -> None:
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

    def dump_argv(self, databases: Sequence[str], *, binlog: bool) -> list[str]:
        flags = list(DUMP_FLAGS)
        if binlog:
            flags.append("--master-data=2")  # binlog position as a comment in the head
        return self.access.argv(_tool("mariadb-dump", "mysqldump",
                                      [*self._auth_args(), *flags, "--databases", *databases]),
                                ["MYSQL_PWD"] if self.secret_env() else [])

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
