"""Redis through ``redis-cli`` (password in REDISCLI_AUTH, never ``-a``)."""

from __future__ import annotations

import time
from typing import Any

from backout.engines.access import EngineAccess
from backout.errors import BackoutError, ExternalError


class Redis:
    def __init__(self, access: EngineAccess) -> None:
        self.access = access

    def secret_env(self) -> dict[str, str]:
        password = self.access.password()
        return {"REDISCLI_AUTH": password} if password else {}

    def cli_argv(self, *args: str) -> list[str]:
        base = ["redis-cli", "--no-auth-warning"]
        if self.access.db.mode == "tcp":
            base += ["-h", self.access.db.host, "-p", str(self.access.db.port)]
        user = self.access.user()
        if user:
            base += ["--user", user]
        return self.access.argv([*base, *args], list(self.secret_env()))

    def call(self, *args: str, timeout: float = 60, commands: list[str] | None = None) -> str:
        """One command (``args``), or several run back to back by one redis-cli
        (``commands``, one per line on its stdin): their replies, in order."""
        inner = self.cli_argv(*args)
        # argv above is complete; run through EngineAccess for error explanations
        from backout import proc

        result = proc.run(self.access.env, inner, timeout=timeout, secret_env=self.secret_env(),
                          check=False, what=f"redis-cli {(args or commands or ['?'])[0]}",
                          cwd=str(self.access.config.project_dir),
                          input_text="".join(f"{c}\n" for c in commands) if commands else None)
        out = result.stdout.strip()
        if not result.ok or out.startswith(("NOAUTH", "WRONGPASS", "ERR", "(error)")) or \
                "Could not connect" in result.stderr:
            fake = proc.Result(result.argv, result.returncode or 1, result.stdout,
                               result.stderr + "\n" + out, result.duration)
            raise self.access.explain(fake, f"redis {(args or commands or ['?'])[0]}")
        return out

    def info(self, section: str) -> dict[str, str]:
        return _info_fields(self.call("INFO", section))

    def version(self) -> str:
        return self.info("server").get("redis_version", "unknown")

    def config_get(self, key: str, default: str) -> str:
        try:
            lines = self.call("CONFIG", "GET", key).splitlines()
        except ExternalError:
            return default  # CONFIG may be renamed away on hardened servers
        return lines[1] if len(lines) >= 2 else default

    def lastsave(self) -> int:
        return int(self.call("LASTSAVE"))

    def server_time(self) -> int:
        return int(self.call("TIME").splitlines()[0])

    def bgsave_and_wait(self, timeout: float = 3600, count_writes: bool = False
                        ) -> dict[str, Any]:
        """BGSAVE, then wait until LASTSAVE advances past its value before the request.

        LASTSAVE has one-second resolution, so we first let the server clock pass
        the last save's second: a save finishing within that same second would
        otherwise be indistinguishable from the old one.
        """
        start = time.monotonic()
        before = self.lastsave()
        while self.server_time() <= before:
            time.sleep(0.2)
        writes = None
        if count_writes and (names := self._write_commands()):
            # The write counters are read by the same redis-cli right before the save
            # forks: a write or two of other clients may fall between the two (not in
            # one MULTI: inside EXEC a BGSAVE is only scheduled, and forks later).
            out = self.call(commands=["INFO server commandstats", "BGSAVE SCHEDULE"])
            text, _, reply = out.rpartition("\n")
            writes = _write_stats(_info_fields(text), names)
        else:
            reply = self.call("BGSAVE", "SCHEDULE")
        if "scheduled" not in reply.lower() and "started" not in reply.lower():
            raise ExternalError(f"{self.access.db.name}: BGSAVE refused: {reply}")
        while True:
            if time.monotonic() - start > timeout:
                raise ExternalError(f"{self.access.db.name}: BGSAVE did not finish in {timeout:.0f}s")
            info = self.info("persistence")
            if info.get("rdb_bgsave_in_progress") == "0" and self.lastsave() > before:
                if info.get("rdb_last_bgsave_status") != "ok":
                    raise ExternalError(f"{self.access.db.name}: BGSAVE failed on the server "
                                        "(see the redis log)", fix="check disk space of the redis volume")
                return {"lastsave": self.lastsave(), "seconds": round(time.monotonic() - start, 3),
                        "aof_enabled": int(info.get("aof_enabled", "0")), "write_stats": writes}
            time.sleep(0.1)

    def rdb_path(self) -> str:
        directory = self.config_get("dir", "/data")
        name = self.config_get("dbfilename", "dump.rdb")
        return f"{directory.rstrip('/')}/{name}"

    def file_bytes(self, path: str) -> int | None:
        """Size of the snapshot file (what a copy of it moves), or None."""
        try:
            out = self.access.run(["stat", "-c", "%s", path], {}, what="redis snapshot size",
                                  timeout=30).stdout
            return int(out.strip())
        except (BackoutError, ValueError):
            return None

    def dbsize(self) -> int:
        return int(self.call("DBSIZE"))

    def keyspace(self) -> dict[str, int]:
        """Keys per logical database ({"db0": N, ...}) from INFO keyspace."""
        out = {}
        for name, value in self.info("keyspace").items():
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            out[name] = int(fields.get("keys", 0))
        return out

    def _write_commands(self) -> set[str]:
        """Commands of the ACL category @write (Redis 7+; empty when it cannot tell)."""
        try:
            return set(self.call("COMMAND", "LIST", "FILTERBY", "ACLCAT", "write").split())
        except ExternalError:
            return set()

    def write_stats(self) -> dict[str, Any] | None:
        """Write commands the server has executed since it started (INFO commandstats,
        commands of the ACL category @write), with the server's run id: the difference
        of two readings of the same run is the number of writes between them. None
        when the server cannot tell (before Redis 7, or COMMAND/INFO renamed away)."""
        names = self._write_commands()
        if not names:
            return None
        try:
            return _write_stats(_info_fields(self.call("INFO", "server", "commandstats")), names)
        except ExternalError:
            return None


def _info_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def _write_stats(info: dict[str, str], write_cmds: set[str]) -> dict[str, Any] | None:
    if not info.get("run_id"):
        return None
    total = 0
    for key, value in info.items():
        if not key.startswith("cmdstat_"):
            continue
        command = key.removeprefix("cmdstat_").split("|")[0]
        if command in write_cmds:
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            # calls reached execution (rejected ones are not in it); some failed
            total += int(fields.get("calls", 0)) - int(fields.get("failed_calls", 0))
    return {"run_id": info["run_id"], "write_commands": total}
