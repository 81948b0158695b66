"""Redis through ``redis-cli`` (password in REDISCLI_AUTH, never ``-a``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from backout import proc
from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.base import (
    LABEL,
    EngineBase,
    EngineContext,
    TrialTarget,
    artifact_entry,
    docker,
    running_image_id,
    wait_ready,
)
from backout.engines.formats import RDBChecker
from backout.engines.images import variable_reference
from backout.engines.rediscli import ERROR_REPLY, CliSession, plain
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError
from backout.platforms.base import Platform
from backout.storage.pipeline import (
    Checker,
    IntegrityError,
    decompress_into,
    decompressed,
    decompressed_size,
    metered,
    scan,
    stream_to_file,
)

SESSION_PROBE_SECONDS = 5.0


class Redis:
    def __init__(self, access: EngineAccess) -> None:
        self.access = access
        self._session: CliSession | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[Redis]:
        """Inside, single commands go to one redis-cli process (see rediscli); nested
        uses share the outer one."""
        if self._session is not None:
            yield self
            return
        session = CliSession(self.access.env, self.cli_argv(), secret_env=self.secret_env(),
                             cwd=str(self.access.config.project_dir), explain=self.access.explain)
        try:
            # redis-cli before 6.0.17/6.2.5 does not flush its replies into a pipe: no
            # answer here means one call per question, as before (an error too: the
            # one-off call then says it as it always did)
            session.ask("ECHO", "ready", timeout=SESSION_PROBE_SECONDS)
            answered = True
        except BackoutError:
            session.close(kill=True)
            self.access.env.log_external("  redis-cli session: no answer; one call per question")
            answered = False
        if not answered:
            yield self
            return
        self._session = session
        try:
            yield self
        finally:
            self._session = None
            session.close()

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
        if self._session is not None:
            if args and plain(args) and not commands:
                return self._session.ask(*args, timeout=timeout)
            if commands and not args and all(plain(c.split()) for c in commands):
                return "\n".join(self._session.ask(*c.split(), timeout=timeout)
                                 for c in commands)
        inner = self.cli_argv(*args)
        # argv above is complete; run through EngineAccess for error explanations
        from backout import proc

        result = proc.run(self.access.env, inner, timeout=timeout, secret_env=self.secret_env(),
                          check=False, what=f"redis-cli {(args or commands or ['?'])[0]}",
                          cwd=str(self.access.config.project_dir),
                          input_text="".join(f"{c}\n" for c in commands) if commands else None)
        out = result.stdout.strip()
        if not result.ok or out.startswith(ERROR_REPLY) or \
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
            if info.get("rdb_bgsave_in_progress") == "0":
                # INFO's rdb_last_save_time is LASTSAVE (asked apart where INFO lacks it)
                last = int(info.get("rdb_last_save_time") or self.lastsave())
                if last > before:
                    if info.get("rdb_last_bgsave_status") != "ok":
                        raise ExternalError(f"{self.access.db.name}: BGSAVE failed on the server "
                                            "(see the redis log)",
                                            fix="check disk space of the redis volume")
                    return {"lastsave": last, "seconds": round(time.monotonic() - start, 3),
                            "aof_enabled": int(info.get("aof_enabled", "0")),
                            "write_stats": writes}
            # a question costs ~1 ms in a session, an exec ~0.1 s without one
            time.sleep(0.05 if self._session is not None else 0.1)

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


def _dump_redis(ctx: EngineContext, access: EngineAccess, set_dir: Path) -> dict[str, Any]:
    redis = Redis(access)
    db = access.db
    with redis.session():
        version = redis.version()
        path = redis.rdb_path()
        saved = redis.bgsave_and_wait(count_writes=True)  # "writes since" count from here
    name = artifact_name(db)
    what = f"{db.name} snapshot"
    # The file is renamed into place by each save; `cat` holds the inode it opened,
    # so a save finishing meanwhile cannot tear our copy.
    scanned = stream_to_file(ctx.env, access.argv(["cat", path]), set_dir / name, what=what,
                             level=ctx.config.backups.zstd_level,
                             cwd=str(ctx.config.project_dir),
                             total=redis.file_bytes(path) if ctx.env.progress else None,
                             stall=ctx.config.backups.stall_seconds,
                             checker=RDBChecker(what)).scanned
    assert scanned is not None  # proven as it was written
    return {
        "database": {
            "type": "redis", "service": db.service, "server_version": version,
            "image_id": running_image_id(ctx, db.service), "mode": db.mode,
            "consistency": "point-in-time RDB snapshot (BGSAVE)",
            "rdb_path": path, "rdb_version": scanned.checks["rdb_version"],
            "rdb_checksum": scanned.checks["checksum"],
            "aof_enabled": bool(saved["aof_enabled"]), "bgsave_seconds": saved["seconds"],
            "keys": scanned.checks["keys"], "write_stats": saved["write_stats"],
            "artifacts": [name],
        },
        "artifact": artifact_entry(name, FORMAT, scanned, db.name),
    }


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
                        stamp: str, aof: dict[str, str] | None, *,
                        size: int | None = None) -> None:
    """With the Redis service stopped: the RDB replaced, any AOF set aside.

    A server with AOF on loads only its AOF, never the RDB; so when AOF is on the
    snapshot also becomes the new AOF: on Redis 7 the base of a fresh multi-part
    AOF (a base may be an RDB), before 7 the AOF file itself (an AOF may start
    with an RDB preamble). A one-off container of the service (same volumes) does
    the file work, so it works whatever the volume driver is.

    Nothing is moved before the whole RDB has arrived (its size is checked): a
    stream cut short (an interrupt, a stalled engine) leaves the volume as it was.
    The one-off container is labelled, and removed in every case: none is left
    behind ("created", or exited without its --rm) holding the volume.
    """
    directory, _, name = rdb_path.rpartition("/")
    aof = aof or {}
    if size is None:  # the RDB's bytes, unless the caller read them already
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
    with redis.session():  # closed before the server stops under it
        aof = aof_layout(redis)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # the RDB's size (a read through the artifact) while Redis stops (its last save);
    # a stop that fails or is interrupted is reported without waiting for it (a
    # daemon thread: the process's exit does not wait either)
    size = proc.Background(lambda: decompressed_size(env, artifact))
    platform.stop([access.db.service], timeout=120)
    put_rdb_into_volume(env, access, artifact, rdb_path, stamp, aof, size=size.result())
    platform.bring_up(access.db.service)
    keys = {"db0": redis.dbsize()}
    return {"counts": keys, "aof": aof["mode"]}


def redis_counts_match(section: dict[str, Any], counts: dict[str, int]) -> bool:
    expected = section.get("keys") or {}
    return all(counts.get(db, 0) == n for db, n in expected.items()) and \
        (bool(expected) or counts.get("db0", 0) == 0)


def _test_redis(env: Environment, cfg: Config, db: DatabaseConfig, platform: Platform, image: str,
                artifact: Path, section: dict[str, Any], password: str,
                holder: list[str]) -> dict[str, Any]:
    from backout.engines.redis import Redis

    del password  # the throwaway server runs without one
    container = _redis_with_rdb(env, image, artifact, holder)
    access = EngineAccess(env, cfg, dataclasses.replace(db, password_env=None), platform,
                      container=container)
    wait_ready(lambda: Redis(access).call("PING") == "PONG", "redis")
    counts = {"db0": Redis(access).dbsize()}
    return {"ok": redis_counts_match(section, counts), "expected": expected_counts(section),
            "restored": counts}


def _redis_with_rdb(env: Environment, image: str, artifact: Path, holder: list[str]) -> str:
    """A stopped container with our RDB as /data/dump.rdb, then started (AOF off)."""
    cid = docker(env, "create", "--label", f"{LABEL}=1", "--entrypoint", "redis-server", image,
                  "--dir", "/data", "--dbfilename", "dump.rdb", "--appendonly", "no",
                  "--save", "", "--protected-mode", "no").stdout.strip()
    holder.append(cid)
    with tempfile.TemporaryDirectory() as tmp:
        rdb = Path(tmp) / "dump.rdb"
        with rdb.open("wb") as fh, decompressed(env, artifact, force=False, stdout=fh) as zstd, \
                metered(env, "restore test redis", zstd.pid, artifact.stat().st_size,
                        estimated=False):
            if zstd.wait() != 0:
                raise IntegrityError(f"restore test: {artifact.name} does not decompress")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(rdb, arcname="dump.rdb")
        proc_result = subprocess.run(["docker", "cp", "-", f"{cid}:/data"], input=buf.getvalue(),
                                     capture_output=True, check=False, env=proc.child_env(env),
                                     **proc.CHILD)
        if proc_result.returncode != 0:
            raise ExternalError("restore test: cannot copy the RDB into the throwaway container: "
                                f"{proc.last_line(proc_result.stderr.decode(errors='replace'))}")
    docker(env, "start", cid)
    return cid


def _redis(access: EngineAccess, section: dict[str, Any]) -> dict[str, Any]:
    redis = Redis(access)
    recorded = section.get("write_stats")
    with redis.session():
        now_keys = redis.keyspace()
        stats_now = redis.write_stats() if recorded else None
    then = dict(section.get("keys") or {})
    deltas = {db: now_keys.get(db, 0) - then.get(db, 0) for db in sorted(set(then) | set(now_keys))
              if now_keys.get(db, 0) != then.get(db, 0)}
    out: dict[str, Any] = {"key_deltas": deltas, "changes": sum(abs(v) for v in deltas.values())}
    if recorded and stats_now and stats_now["run_id"] == recorded["run_id"] \
            and stats_now["write_commands"] >= recorded["write_commands"]:
        out["write_commands"] = stats_now["write_commands"] - recorded["write_commands"]
        # A SET on a key that exists, an INCR, an LPUSH change no key count: the
        # write commands are the better measure whenever they are larger.
        out["changes"] = max(out["changes"], out["write_commands"])
    elif recorded:
        # the server restarted since (its counters did too), or CONFIG RESETSTAT ran
        out["write_commands"] = None
    return out


def _words(command: Any) -> list[str]:
    if isinstance(command, list):
        return [str(w) for w in command]
    return shlex.split(command) if isinstance(command, str) else []


def requirepass_in_conf(text: str) -> str | None:
    """The password of a redis.conf's last ``requirepass`` line (quotes as Redis reads
    them: "..." with backslash escapes, '...' literally), or None."""
    found = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        if key.lower() != "requirepass":
            continue
        value = rest.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        found = value or None
    return found


def artifact_name(db: DatabaseConfig) -> str:
    return ENGINE.artifact_name(db)


FORMAT = "redis-rdb+zstd"


def expected_counts(section: Mapping[str, Any]) -> dict[str, Any]:
    return dict(section["keys"])


class RedisEngine(EngineBase):
    suffix = ".rdb.zst"
    type = "redis"
    description = "a Redis RDB"
    count_unit = "keys"
    image_patterns = ("redis", "valkey")
    image_repositories = ("redis", "valkey", "valkey/valkey", "bitnami/redis", "bitnami/valkey",
                          "redis/redis-stack", "redis/redis-stack-server", "eqalpha/keydb",
                          "redislabs/redismod")
    image_prefixes = ("redislabs/",)
    server_programs = ("redis-server", "valkey-server")
    credentials: tuple[tuple[str | None, tuple[str, ...], tuple[str, ...] | None], ...] = (
        (None, ("REDIS_PASSWORD", "VALKEY_PASSWORD"), None),)  # bitnami/redis, bitnami/valkey
    restarts_on_restore = True

    def init_credentials(self, spec: Mapping[str, Any], raw_spec: Mapping[str, Any] | None,
                         env_values: Mapping[str, str]
                         ) -> tuple[dict[str, str], list[str], list[str]] | None:
        """``requirepass`` on the command line (``--requirepass ${VAR}``) or in a
        redis.conf the command names and the service mounts from the project."""
        raw_command = _words((raw_spec or spec).get("command"))
        command = _words(spec.get("command"))
        if "--requirepass" in raw_command[:-1]:
            value = raw_command[raw_command.index("--requirepass") + 1]
            var = variable_reference(value)
            if var is None:
                return {}, [], ["requirepass is a literal in the compose file's command: "
                                "backout does not copy passwords; put it in .env (say "
                                "REDIS_PASSWORD=...), write `--requirepass ${REDIS_PASSWORD}` "
                                "and set password_env = \"REDIS_PASSWORD\""]
            warnings = [] if var in env_values else [
                f"requirepass comes from ${{{var}}}, which is set in neither .env nor the "
                f"environment: set {var} (Redis gets an empty password otherwise)"]
            return ({"password_env": var},
                    [f"password: {var} (`--requirepass ${{{var}}}` in the command)"], warnings)
        conf = next((w for w in command[1:] if w.endswith(".conf")), None)
        if conf is None:
            return None
        for mount in spec.get("volumes") or []:
            if mount.get("type") != "bind" or mount.get("target") != conf:
                continue
            try:
                text = Path(str(mount.get("source"))).read_text(encoding="utf-8")
            except OSError:
                return None
            if requirepass_in_conf(text) is None:
                return None
            return ({"password_container_file": conf},
                    [f"password: requirepass of {conf}, read inside the container at each use"],
                    [])
        return None

    def password_in_file(self, text: str) -> str | None:
        """``requirepass`` of a redis.conf (the last one wins, as in Redis)."""
        return requirepass_in_conf(text)

    def dump(self, ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        return _dump_redis(ctx, EngineAccess(ctx.env, ctx.config, db, ctx.platform), set_dir)

    def checker(self, section: Mapping[str, Any], what: str) -> Checker:
        return RDBChecker(what)

    def sniff(self, head: bytes, path: Path) -> int:
        return 3 if head.startswith(b"REDIS") or b"REDIS" in head[:200] else 0

    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]:
        what = artifact.name
        checks = scan(env, artifact, RDBChecker(what), what=what, passthrough=True).checks
        return {"type": self.type, "keys": checks["keys"], "rdb_path": None}

    def expected_counts(self, section: Mapping[str, Any]) -> Any:
        return expected_counts(section)

    def scanned_counts(self, section: Mapping[str, Any],
                       checks: Mapping[str, Any]) -> tuple[Any, Any]:
        return section.get("keys"), checks.get("keys")

    def counts_match(self, section: Mapping[str, Any], counts: Any) -> bool:
        return redis_counts_match(dict(section), counts)

    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]:
        return restore_redis(env, access, artifact, section)

    def trial_restore(self, target: TrialTarget, artifact: Path,
                      section: dict[str, Any]) -> dict[str, Any]:
        return _test_redis(target.env, target.config, target.db, target.platform, target.image,
                           artifact, section, target.password, target.holder)

    def probe(self, access: EngineAccess) -> str:
        return Redis(access).version()

    def answer(self, access: EngineAccess) -> str:
        return str(Redis(access).call("PING"))

    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        # asked of the server in any case: INFO's key counts and write counters cost
        # no scan, and they see a write made since ``current`` was taken
        return _redis(access, section)

    def overwritten(self, db: DatabaseConfig) -> str:
        return "the keyspace is replaced (Redis restarts; any AOF is set aside)"


ENGINE = RedisEngine()
