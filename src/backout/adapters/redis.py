"""Redis through ``redis-cli`` (password in REDISCLI_AUTH, never ``-a``)."""

from __future__ import annotations

import time

from backout.adapters.dbaccess import DbAccess
from backout.errors import BackoutError, ExternalError


class Redis:
    def __init__(self, access: DbAccess) -> None:
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

    def call(self, *args: str, timeout: float = 60) -> str:
        inner = self.cli_argv(*args)
        # argv above is complete; run through DbAccess for error explanations
        from backout import proc

        result = proc.run(self.access.env, inner, timeout=timeout, secret_env=self.secret_env(),
                          check=False, what=f"redis-cli {args[0]}",
                          cwd=str(self.access.config.project_dir))
        out = result.stdout.strip()
        if not result.ok or out.startswith(("NOAUTH", "WRONGPASS", "ERR", "(error)")) or \
                "Could not connect" in result.stderr:
            fake = proc.Result(result.argv, result.returncode or 1, result.stdout,
                               result.stderr + "\n" + out, result.duration)
            raise self.access.explain(fake, f"redis {args[0]}")
        return out

    def info(self, section: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.call("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
        return out

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

    def bgsave_and_wait(self, timeout: float = 3600) -> dict[str, float | int]:
        """BGSAVE, then wait until LASTSAVE advances past its value before the request.

        LASTSAVE has one-second resolution, so we first let the server clock pass
        the last save's second: a save finishing within that same second would
        otherwise be indistinguishable from the old one.
        """
        start = time.monotonic()
        before = self.lastsave()
        while self.server_time() <= before:
            time.sleep(0.2)
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
                        "aof_enabled": int(info.get("aof_enabled", "0"))}
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
