"""``backups verify --restore-test``: restore each artifact into a throwaway
container of the same image and compare what comes back with the manifest.

Throwaway containers carry the label ``io.backout.restore-test`` and are removed
in all cases; leftovers of a crashed run are removed by the next one.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from backout import proc
from backout.backup import restore
from backout.backup.engines import manifest_counts
from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError
from backout.platforms.base import Platform
from backout.storage.pipeline import IntegrityError, decompressed, metered

LABEL = "io.backout.restore-test"
PASSWORD_VAR = "BACKOUT_RESTORE_TEST_PASSWORD"


def _docker(env: Environment, *args: str, timeout: float = 120, check: bool = True,
            secret_env: dict[str, str] | None = None) -> proc.Result:
    return proc.run(env, ["docker", *args], timeout=timeout, check=check, secret_env=secret_env,
                    what=f"docker {args[0]}")


def remove_leftovers(env: Environment) -> None:
    ids = _docker(env, "ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        _docker(env, "rm", "-f", "-v", *ids, check=False)


def _wait(check: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ExternalError as exc:
            last = exc.message
        time.sleep(1)
    raise ExternalError(f"restore test: {what} did not become ready in {timeout:.0f}s {last}")


def restore_test(env: Environment, config: Config, platform: Platform, set_dir: Path,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """Per database: {"ok": bool, "expected": ..., "restored": ...}."""
    remove_leftovers(env)
    out: dict[str, Any] = {}
    for name, section in sorted(manifest["databases"].items()):
        image = section.get("image_id")
        if not image or not _docker(env, "image", "inspect", image, check=False).ok:
            raise NotFoundError(f"restore test of {name}: image {str(image)[:19]} is no longer "
                                "on this host", fix="keep release images (backout retains them)")
        artifact = set_dir / section["artifacts"][0]
        password = secrets.token_urlsafe(18)
        env.redact.add(password)
        db = dataclasses.replace(config.databases[name], password_env=PASSWORD_VAR,
                                 password_file=None, user_env=None, mode="exec")
        cfg = dataclasses.replace(config, secrets={**config.secrets, PASSWORD_VAR: password})
        holder: list[str] = []
        try:
            tester = {"mysql": _test_mysql, "redis": _test_redis, "mongodb": _test_mongodb}
            out[name] = tester[section["type"]](env, cfg, db, platform, image, artifact, section,
                                                password, holder)
        except (IntegrityError, ExternalError) as exc:
            out[name] = {"ok": False, "error": exc.one_line()}
        finally:
            for container in holder:
                _docker(env, "rm", "-f", "-v", container, check=False)
    return out


def _test_mysql(env: Environment, cfg: Config, db: DatabaseConfig, platform: Platform, image: str,
                artifact: Path, section: dict[str, Any], password: str,
                holder: list[str]) -> dict[str, Any]:
    from backout.engines.mysql import MySQL

    container = _run(env, image, ["-e", "MYSQL_ROOT_PASSWORD", "-e", "MARIADB_ROOT_PASSWORD"],
                     {"MYSQL_ROOT_PASSWORD": password, "MARIADB_ROOT_PASSWORD": password})
    holder.append(container)
    access = EngineAccess(env, cfg, dataclasses.replace(db, user="root"), platform,
                          container=container)
    _wait(lambda: bool(MySQL(access).version()), "mysql")
    result = restore.restore_mysql(env, access, artifact, section)
    return {"ok": restore.mysql_counts_match(section, result["counts"]),
            "expected": manifest_counts(section),
            "restored": result["counts"]}


def _test_redis(env: Environment, cfg: Config, db: DatabaseConfig, platform: Platform, image: str,
                artifact: Path, section: dict[str, Any], password: str,
                holder: list[str]) -> dict[str, Any]:
    from backout.engines.redis import Redis

    del password  # the throwaway server runs without one
    container = _redis_with_rdb(env, image, artifact, holder)
    access = EngineAccess(env, cfg, dataclasses.replace(db, password_env=None), platform,
                      container=container)
    _wait(lambda: Redis(access).call("PING") == "PONG", "redis")
    counts = {"db0": Redis(access).dbsize()}
    return {"ok": restore.redis_counts_match(section, counts), "expected": manifest_counts(section),
            "restored": counts}


def _test_mongodb(env: Environment, cfg: Config, db: DatabaseConfig, platform: Platform,
                  image: str,
                  artifact: Path, section: dict[str, Any], password: str,
                  holder: list[str]) -> dict[str, Any]:
    from backout.engines.mongodb import MongoDB

    del password
    container = _run(env, image, ["-p", "127.0.0.1::27017"], {})
    holder.append(container)
    port = _docker(env, "port", container, "27017").stdout.split("\n")[0]
    db = dataclasses.replace(db, password_env=None, host="127.0.0.1",
                             port=int(port.rsplit(":", 1)[1]))
    access = EngineAccess(env, cfg, db, platform, container=container)

    def ready() -> bool:
        m = MongoDB(access)
        try:
            return bool(m.ping())
        finally:
            m.close()

    _wait(ready, "mongodb")
    result = restore.restore_mongodb(env, access, artifact, section)
    return {"ok": restore.mongo_counts_match(section, result["counts"]),
            "expected": manifest_counts(section),
            "restored": result["counts"]}


def _run(env: Environment, image: str, flags: list[str], secret_env: dict[str, str]) -> str:
    result = _docker(env, "run", "-d", "--label", f"{LABEL}=1", *flags, image,
                     secret_env=secret_env, timeout=120)
    return result.stdout.strip()


def _redis_with_rdb(env: Environment, image: str, artifact: Path, holder: list[str]) -> str:
    """A stopped container with our RDB as /data/dump.rdb, then started (AOF off)."""
    cid = _docker(env, "create", "--label", f"{LABEL}=1", "--entrypoint", "redis-server", image,
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
    _docker(env, "start", cid)
    return cid
