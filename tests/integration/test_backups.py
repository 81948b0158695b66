"""Issue 3 acceptance on the real test stack: checkpoints and backups.

* A checkpoint restores BY HAND with the standard tools, row-for-row, key-for-key and
  doc-for-doc (MySQL: ``zstd -dc | mariadb``; Redis: the RDB copied into the volume;
  MongoDB: the tar of BSON inserted with pymongo).
* Faults (database down, wrong password, disk full, ``kill -9``, corrupt artifacts)
  end in one clear line, a documented exit code, and nothing published.
* Secrets never reach argv, output, the manifest or the state database.
* Redis with AOF, a backup under continuous writes, ``--restore-test``, ``--quiesce``.
* Named volumes (tar with the service stopped, restored by hand into a new volume),
  the RDB's own CRC-64, and mongodump inside the container (a FAKE mongodump: no
  real one exists on our machines).

The CLI runs as a real subprocess (``python -m backout``, cwd = the project), as an
operator would run it. Everything a test changes on the shared session stack (.env,
backout.toml, stopped services, extra tables) is put back in ``finally``.

MongoDB here is the nx-27017 wire-protocol stand-in, not MongoDB: there is no
``mongodump``/``mongorestore`` on our machines, so the Mongo checks depend on the
stand-in's insert/find behaviour.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from tests.support.snapshots import mongo_snapshot, mysql_snapshot, redis_snapshot
from tests.support.stack import DATABASE, TestStack, wait_for

pytestmark = pytest.mark.docker

WRITERS = ("backend", "frontend", "model-server")


# --------------------------------------------------------------------------- helpers


def backout(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backout", *args], cwd=cwd,
                          env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BACKOUT_FAULT_INJECT"}
    env.update(extra)
    return env


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["ok"] is True
    return data


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int,
                          code: str, *needles: str) -> str:
    """A run with --json failed cleanly: the documented exit code, one error line on
    stderr (nothing but backout's own lines there), no traceback, a JSON error."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("backout: error: ")]
    assert len(errors) == 1, result.stderr
    assert all(line.startswith("backout: ") for line in lines), result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert payload["error"]["code"] == code, payload
    assert payload["error"]["exit_code"] == exit_code
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def listed(project: Path, *, show_all: bool = False) -> dict[str, bool]:
    """id -> usable, from `backups list --json [--all]`."""
    args = ["backups", "list", "--json"] + (["--all"] if show_all else [])
    rows = ok_json(backout(*args, cwd=project))["backups"]
    return {r["id"]: bool(r["usable"]) for r in rows}


def usable(project: Path) -> set[str]:
    return {i for i, ok in listed(project).items() if ok}


def backup_dir(project: Path) -> Path:
    return project / ".backout" / "backups"


def partials(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".partial-*")) if root.is_dir() else []


def manifest(project: Path, set_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((backup_dir(project) / set_id / "manifest.json").read_text())
    return data


def artifact(project: Path, set_id: str, database: str) -> Path:
    section = manifest(project, set_id)["databases"][database]
    return backup_dir(project) / set_id / section["artifacts"][0]


def plan_steps(project: Path, *extra: str) -> list[str]:
    data = ok_json(backout("checkpoint", "--dry-run", "--json", *extra, cwd=project))
    return [s["name"] for s in data["plan"]["steps"]]


def service_states(stack: TestStack) -> dict[str, str]:
    return {row["Service"]: row["State"] for row in stack.ps()}


def services_up(stack: TestStack, *services: str, timeout: float = 180) -> None:
    """Start services (not their dependencies) and wait until Docker calls them healthy.

    Unlike `up --wait`, a passing "unhealthy" (a healthcheck timing out on a loaded
    machine) is waited out instead of failing at once.
    """
    stack.compose("up", "-d", "--no-deps", *services)

    def healthy() -> bool:
        health = {row["Service"]: row.get("Health") for row in stack.ps()}
        return all(health.get(s) == "healthy" for s in services)

    wait_for(healthy, timeout=timeout, interval=1, message=f"{', '.join(services)} healthy")


def all_healthy(stack: TestStack, timeout: float = 120) -> None:
    """Wait until every service of the stack is healthy: a quiesced run starts the writers
    with `docker compose start`, which refuses while a database healthcheck flickers."""
    def healthy() -> bool:
        health = {row["Service"]: row.get("Health") for row in stack.ps()}
        return all(health.get(s) == "healthy"
                   for s in ("mysql", "redis", "mongodb", "postgres", *WRITERS))

    wait_for(healthy, timeout=timeout, interval=1, message="all services healthy")


def writers_up(stack: TestStack) -> None:
    """Writers started and healthy again (a no-op when they already are)."""
    services_up(stack, *WRITERS)


def zstd_bytes(path: Path) -> bytes:
    return subprocess.run(["zstd", "-d", "-q", "-c", str(path)], capture_output=True,
                          check=True, timeout=120).stdout


def pipe_zstd_into(path: Path, argv: list[str], *, env: dict[str, str], cwd: Path) -> None:
    """`zstd -dc path | argv`, both stages must succeed."""
    zstd = subprocess.Popen(["zstd", "-d", "-q", "-c", str(path)], stdout=subprocess.PIPE)
    assert zstd.stdout is not None
    try:
        consumer = subprocess.run(argv, stdin=zstd.stdout, env=env, cwd=cwd,
                                  capture_output=True, text=True, timeout=300, check=False)
    finally:
        zstd.stdout.close()
    assert zstd.wait(timeout=60) == 0
    assert consumer.returncode == 0, consumer.stderr


# -- snapshots of the data


def snapshot(stack: TestStack) -> dict[str, Any]:
    """Every row (and column definition), every key with its type and whether it has
    a TTL, every document."""
    return {"mysql": mysql_snapshot(stack), "redis": redis_snapshot(stack, ttl=True),
            "mongodb": mongo_snapshot(stack)}


# -- restores by hand, with the standard tools


def restore_mysql_by_hand(stack: TestStack, dump: Path) -> None:
    """Drop the database, then `zstd -dc dump | docker compose exec -T mysql mariadb`;
    the password travels in MYSQL_PWD (environment), never in argv."""
    stack.mysql_query(f"DROP DATABASE IF EXISTS `{DATABASE}`", database=None)
    env = {**stack.compose_env(), "MYSQL_PWD": stack.secrets["MYSQL_ROOT_PASSWORD"]}
    pipe_zstd_into(dump, ["docker", "compose", "exec", "-T", "-e", "MYSQL_PWD", "mysql",
                          "mariadb", "--user=root"], env=env, cwd=stack.project_dir)


def restore_redis_by_hand(stack: TestStack, rdb_artifact: Path, tmp: Path) -> None:
    """Stop Redis (it saves on shutdown, so only now may the file be replaced), copy the
    RDB into its volume, start it again. AOF is off in this stack, so the RDB is loaded."""
    assert stack.redis_cmd("CONFIG", "GET", "appendonly").split() == ["appendonly", "no"]
    stack.compose("stop", "redis")
    rdb = tmp / "dump.rdb"
    rdb.write_bytes(zstd_bytes(rdb_artifact))
    rdb.chmod(0o644)  # docker cp keeps the mode; redis-server runs as the redis user
    subprocess.run(["docker", "cp", str(rdb), f"{stack.container_id('redis')}:/data/dump.rdb"],
                   check=True, capture_output=True, timeout=60)
    services_up(stack, "redis")


def restore_mongo_by_hand(stack: TestStack, tar_artifact: Path) -> None:
    """What `mongorestore --drop dump/` would do (mongorestore does not exist on our
    machines, and the server is the nx-27017 stand-in): every dumped collection is
    dropped and its BSON documents inserted with pymongo; collections not in the dump
    are dropped too, so the database ends exactly as dumped."""
    import bson
    import pymongo

    dumped: dict[str, list[dict[str, Any]]] = {}
    with tarfile.open(fileobj=BytesIO(zstd_bytes(tar_artifact)), mode="r") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and parts[-1].endswith(".bson") and parts[-2] == DATABASE:
                fh = tar.extractfile(member)
                assert fh is not None
                dumped[parts[-1][: -len(".bson")]] = bson.decode_all(fh.read())
    assert dumped, "no collection of the app database in the dump"
    client: Any = pymongo.MongoClient("127.0.0.1", stack.ports["mongo"], directConnection=True,
                                      serverSelectionTimeoutMS=10000)
    try:
        db = client[DATABASE]
        for name in db.list_collection_names():
            if name not in dumped and not name.startswith("system."):
                db.drop_collection(name)
        for name, docs in dumped.items():
            db.drop_collection(name)
            if docs:
                db[name].insert_many(docs, ordered=True)
    finally:
        client.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def project(stack: TestStack) -> Path:
    path: Path = stack.project_dir
    (path / "backout.toml").unlink(missing_ok=True)
    result = backout("init", cwd=path)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def quiesced(project: Path, stack: TestStack) -> Iterator[dict[str, Any]]:
    """One `checkpoint --quiesce`, shared by the tests that need a fresh published set."""
    try:
        all_healthy(stack)
        # the customers as they are now (no writer touches them; a test module run
        # before this one on the same stack may have deleted some of the seed's 20)
        customers = {"mysql": len(mysql_snapshot(stack)["customers"]),
                     "mongodb": len(mongo_snapshot(stack)["customers"])}
        data = ok_json(backout("checkpoint", "--quiesce", "--label", "quiesced", "--json",
                               cwd=project))
        states = service_states(stack)  # right after the command, before anyone helps
        yield {"set_id": data["set_id"], "states": states, "result": data,
               "customers": customers}
    finally:
        writers_up(stack)


# --------------------------------------------------------------------------- 1. restore by hand


def test_checkpoint_restores_by_hand_row_for_row(project: Path, stack: TestStack,
                                                 tmp_path: Path) -> None:
    stack.compose("stop", *WRITERS)  # still data: nothing writes while we compare
    try:
        before = snapshot(stack)
        assert before["mysql"]["customers"] and before["redis"] and before["mongodb"]["customers"]
        set_id = ok_json(backout("checkpoint", "--label", "by hand", "--json",
                                 cwd=project))["set_id"]

        # Change all three databases after the checkpoint.
        stack.mysql_query(
            "UPDATE customers SET name = CONCAT(name, ' (changed)') WHERE id <= 5;"
            "DELETE FROM customers WHERE id = 20;"
            "INSERT INTO items (name) VALUES ('made after the checkpoint');"
            # a transfer keeps the app's invariants even if this test dies here
            "UPDATE accounts SET balance_cents = balance_cents + 7 WHERE id = 1;"
            "UPDATE accounts SET balance_cents = balance_cents - 7 WHERE id = 2;"
            "CREATE TABLE after_checkpoint (id INT PRIMARY KEY);")
        stack.redis_pipe("SET seed:version 2\nDEL seed:customers\nHSET seed:config currency USD\n"
                         "SET after:checkpoint 1\n")
        stack.mongo_eval("db.customers.update_one({'_id': 1}, {'$set': {'name': 'changed'}})\n"
                         "db.customers.delete_one({'_id': 2})\n"
                         "db.after_checkpoint.insert_one({'x': 1})\n")
        changed = snapshot(stack)
        for kind in ("mysql", "redis", "mongodb"):
            assert changed[kind] != before[kind], f"the {kind} change did not happen"

        restore_mysql_by_hand(stack, artifact(project, set_id, "mysql"))
        restore_redis_by_hand(stack, artifact(project, set_id, "redis"), tmp_path)
        restore_mongo_by_hand(stack, artifact(project, set_id, "mongodb"))

        after = snapshot(stack)
        assert after["mysql"].keys() == before["mysql"].keys()
        for table, rows in before["mysql"].items():
            assert after["mysql"][table] == rows, f"table {table} differs after the restore"
        assert after["redis"].keys() == before["redis"].keys()
        for key, value in before["redis"].items():
            assert after["redis"][key] == value, f"redis key {key} differs after the restore"
        assert after["mongodb"] == before["mongodb"]
    finally:
        stack.mysql_query("DROP TABLE IF EXISTS after_checkpoint")
        writers_up(stack)


# --------------------------------------------------------------------------- quiesce, verify


def test_quiesce_restarts_writers_and_records_the_pause(project: Path,
                                                        quiesced: dict[str, Any]) -> None:
    for service in WRITERS:
        assert quiesced["states"].get(service) == "running", quiesced["states"]
    m = manifest(project, quiesced["set_id"])
    assert m["quiesce"]["enabled"] is True
    assert m["quiesce"]["writers_paused_seconds"] > 0
    assert m["label"] == "quiesced" and m["kind"] == "checkpoint"
    assert quiesced["set_id"] in usable(project)


def test_verify_restore_test_counts_match(project: Path, quiesced: dict[str, Any]) -> None:
    result = backout("backups", "verify", quiesced["set_id"], "--restore-test", "--json",
                     cwd=project)
    data = ok_json(result)
    assert data["verify"]["ok"] is True
    tests = data["restore_test"]
    assert set(tests) == {"mysql", "redis", "mongodb", "postgresql"}
    for name, res in tests.items():
        assert res["ok"] is True, (name, res)
        assert res["restored"] == res["expected"], name
    customers = quiesced["customers"]
    assert customers["mysql"] and customers["mongodb"]  # the seed's, or what is left
    assert tests["mysql"]["restored"][DATABASE]["customers"] == customers["mysql"]
    assert tests["mongodb"]["restored"][DATABASE]["customers"] == customers["mongodb"]
    assert tests["redis"]["restored"]["db0"] >= 3  # at least the seed keys
    # the throwaway containers are gone
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=io.backout.restore-test"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 100)


@pytest.mark.parametrize(("database", "damage", "needle"), [
    ("mysql", "flip", "not a valid zstd stream"),  # same size: only sha256/zstd can tell
    ("redis", "truncate", "wrong size"),  # caught by the manifest's sizes already
    ("mongodb", "manifest-sha", "sha256 mismatch"),  # valid file, other checksum recorded
])
def test_verify_names_the_damaged_artifact(project: Path, quiesced: dict[str, Any],
                                           database: str, damage: str, needle: str) -> None:
    root = backup_dir(project)
    copy_id = f"19990101T000000Z-{secrets.token_hex(2)}"
    copy = root / copy_id
    shutil.copytree(root / quiesced["set_id"], copy)
    try:
        target = artifact(project, copy_id, database)
        name = target.name
        size = target.stat().st_size
        if damage == "flip":
            _flip_middle_byte(target)
            assert target.stat().st_size == size
        elif damage == "truncate":
            _truncate(target)
        else:
            m = manifest(project, copy_id)
            m["artifacts"][name]["sha256"] = "0" * 64
            (copy / "manifest.json").write_text(json.dumps(m))
        result = backout("backups", "verify", copy_id, "--json", cwd=project)
        assert result.returncode == 5, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        report = json.loads(result.stdout)["verify"]
        assert report["ok"] is False
        problems = [a["problem"] for a in report["artifacts"] if not a["ok"]]
        if report["problem"]:
            problems.append(report["problem"])
        assert len(problems) == 1, report
        assert name in problems[0] and needle in problems[0], problems[0]
        # only the damaged artifact is blamed
        assert all(a["ok"] for a in report["artifacts"] if a["name"] != name)
        # the original is untouched and still verifies
        ok_json(backout("backups", "verify", quiesced["set_id"], "--json", cwd=project))
    finally:
        shutil.rmtree(copy, ignore_errors=True)


# --------------------------------------------------------------------------- secrets


class CmdlineWatcher(threading.Thread):
    """Reads /proc/*/cmdline of every process (host and containers) every ~20 ms."""

    def __init__(self, needles: list[bytes], tools: tuple[bytes, ...]) -> None:
        super().__init__(daemon=True)
        self.needles = needles
        self.tools = tools
        self.stop = threading.Event()
        self.hits: list[str] = []
        self.seen: set[bytes] = set()
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmdline = fh.read()
                except OSError:
                    continue
                for needle in self.needles:
                    if needle in cmdline:
                        self.hits.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
                self.seen.update(t for t in self.tools if t in cmdline)
            self.rounds += 1
            self.stop.wait(0.02)


def test_passwords_never_leave_the_environment(project: Path, stack: TestStack) -> None:
    # The stack's passwords are 128-bit random values made for this run (sentinels):
    # any occurrence anywhere is a leak, never a coincidence.
    sentinels = [v for k, v in stack.secrets.items() if "PASSWORD" in k]
    assert {"MYSQL_ROOT_PASSWORD", "REDIS_PASSWORD"} <= set(stack.secrets)
    watcher = CmdlineWatcher([s.encode() for s in sentinels],
                             (b"mariadb-dump", b"redis-cli", b"MYSQL_PWD"))
    watcher.start()
    try:
        result = backout("checkpoint", "--verbose", "--json", cwd=project)
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
    data = ok_json(result)
    assert watcher.rounds > 10
    assert watcher.hits == [], watcher.hits
    # the watcher did see the dump tools run, so it was looking at the right time
    assert {b"mariadb-dump", b"redis-cli", b"MYSQL_PWD"} <= watcher.seen, watcher.seen
    # --verbose logged the external calls (variable names only)
    assert "mariadb-dump" in result.stderr and "MYSQL_PWD" in result.stderr
    events = backout("events", "--json", "--limit", "1000", cwd=project)
    assert events.returncode == 0, events.stderr
    state_files = [p for p in (project / ".backout").rglob("*")
                   if p.is_file() and not p.name.endswith(".zst")]
    assert any(p.name == "state.db" for p in state_files)
    texts = {"stdout": result.stdout, "stderr": result.stderr, "events": events.stdout,
             "manifest": (backup_dir(project) / data["set_id"] / "manifest.json").read_text()}
    blobs = {str(p.relative_to(project)): p.read_bytes() for p in state_files}
    for secret in sentinels:
        for where, text in texts.items():
            assert secret not in text, f"a password appears in {where}"
        for where, blob in blobs.items():
            assert secret.encode() not in blob, f"a password appears in {where}"


# --------------------------------------------------------------------------- writes during a backup


class RestoredDatabase:
    """TestStack's invariant checks, pointed at another database of the same server."""

    def __init__(self, stack: TestStack, database: str) -> None:
        self.stack = stack
        self.database = database

    def mysql_query(self, sql: str, **_kw: Any) -> list[tuple[str | None, ...]]:
        return self.stack.mysql_query(sql, database=self.database)

    invariants = TestStack.invariants
    check_invariants = TestStack.check_invariants


def _renamed_dump(dump: bytes, old: str, new: str) -> bytes:
    """The dump loaded into another database: only its CREATE DATABASE and USE lines
    name the database (mariadb-dump --databases)."""
    pattern = re.compile(rb"^((?:CREATE DATABASE|USE) .*)`" + re.escape(old.encode()) + rb"`",
                         re.M)
    out, n = pattern.subn(rb"\1`" + new.encode() + rb"`", dump)
    assert n == 2, n
    return out


def test_backup_under_continuous_writes_is_consistent(project: Path, stack: TestStack) -> None:
    def orders() -> int:
        return int(stack.mysql_scalar("SELECT COUNT(*) FROM orders") or 0)

    throwaway = f"restorecheck_{secrets.token_hex(3)}"
    writers_up(stack)
    stack.fault("backend", write_interval=0.02)
    try:
        time.sleep(0.5)
        start = orders()
        data = ok_json(backout("backup", "mysql", "--json", cwd=project))
        end = orders()
        assert end - start >= 10, "the backend was not writing during the backup"
        dump = artifact(project, data["set_id"], "mysql")
        env = {**stack.compose_env(), "MYSQL_PWD": stack.secrets["MYSQL_ROOT_PASSWORD"]}
        load = subprocess.run(
            ["docker", "compose", "exec", "-T", "-e", "MYSQL_PWD", "mysql", "mariadb",
             "--user=root"], input=_renamed_dump(zstd_bytes(dump), DATABASE, throwaway),
            env=env, cwd=stack.project_dir, capture_output=True, timeout=300, check=False)
        assert load.returncode == 0, load.stderr
        numbers = RestoredDatabase(stack, throwaway).check_invariants()
        assert start <= numbers["orders"] <= end
        counts = manifest(project, data["set_id"])["databases"]["mysql"]["databases"]
        assert counts[DATABASE]["tables"]["orders"] == numbers["orders"]
    finally:
        stack.fault("backend", reset=True)
        stack.mysql_query(f"DROP DATABASE IF EXISTS `{throwaway}`", database=None)


# --------------------------------------------------------------------------- the dump's way

HELPER = "io.backout.dump-helper"


def _helpers_left() -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label={HELPER}"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.split()


def _live_counts(stack: TestStack) -> dict[str, int]:
    tables = [r[0] for r in stack.mysql_query("SHOW TABLES")]
    return {str(t): int(stack.mysql_scalar(f"SELECT COUNT(*) FROM `{t}`") or 0) for t in tables}


def _backup_counts(project: Path, stack: TestStack) -> tuple[subprocess.CompletedProcess[str],
                                                              dict[str, int]]:
    """`backup mysql --verbose`, and its counts, each between the live ones before and
    after it (the stack's writers write on; rows are only added)."""
    before = _live_counts(stack)
    result = backout("--verbose", "backup", "mysql", "--json", cwd=project)
    after = _live_counts(stack)
    counts = manifest(project, ok_json(result)["set_id"])["databases"]["mysql"]["databases"]
    dumped: dict[str, int] = counts[DATABASE]["tables"]
    assert set(dumped) == set(before) == set(after)
    assert all(before[t] <= dumped[t] <= after[t] for t in dumped), (before, dumped, after)
    return result, dumped


def test_the_mysql_dump_comes_from_beside_the_server_not_through_docker_exec(
        project: Path, stack: TestStack) -> None:
    """A client in a container of its own in the server's network namespace writes the
    dump into a FIFO of backout's: its bytes pass no Docker Engine exec stream."""
    result, _ = _backup_counts(project, stack)
    dump_lines = [line for line in result.stderr.splitlines() if "mariadb-dump" in line]
    assert len(dump_lines) == 1 and "docker run --rm --network container:" in dump_lines[0]
    assert "--host=127.0.0.1" in dump_lines[0] and "nothing came through" not in result.stderr
    assert _helpers_left() == []  # it removed itself


@contextlib.contextmanager
def _configured_user(project: Path, stack: TestStack, host: str,
                     password: str) -> Iterator[str]:
    """backout configured with a new MySQL user ``user@host`` (all privileges)."""
    user = f"u_{secrets.token_hex(3)}"
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    stack.mysql_query(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{quoted}';"
                      f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}'", database=None)
    config, env_file = project / "backout.toml", project / ".env"
    original_config, original_env = config.read_text(), env_file.read_text()
    text, n = re.subn(r'(\[databases\.mysql\]\n(?:.*\n)*?)user = "root"\n'
                      r'password_env = "MYSQL_ROOT_PASSWORD"\n',
                      rf'\1user = "{user}"\npassword_env = "USER_TEST_PASSWORD"\n',
                      original_config)
    assert n == 1, original_config
    try:
        config.write_text(text)
        # single quotes: Compose's .env reads the value as it stands
        env_file.write_text(original_env + f"\nUSER_TEST_PASSWORD='{password}'\n")
        yield user
    finally:
        config.write_text(original_config)
        env_file.write_text(original_env)
        stack.mysql_query(f"DROP USER IF EXISTS '{user}'@'{host}'", database=None)


@pytest.fixture
def local_only_user(project: Path, stack: TestStack) -> Iterator[str]:
    """A user that may log in from 'localhost' only (the server skips name
    resolution: a TCP login from 127.0.0.1 is refused)."""
    with _configured_user(project, stack, "localhost", secrets.token_hex(16)) as user:
        yield user


def test_a_password_of_every_kind_reaches_the_client_beside_the_server(
        project: Path, stack: TestStack) -> None:
    """Through its option file (quotes, a backslash, a comment sign, spaces, a
    semicolon: what the file's reader would otherwise cut or change)."""
    password = f'p "a\\s#s w;{secrets.token_hex(8)}'
    with _configured_user(project, stack, "%", password):
        result, _ = _backup_counts(project, stack)
    assert "nothing came through" not in result.stderr, result.stderr[-2000:]
    assert "docker run --rm --network container:" in result.stderr
    assert password not in result.stderr and password not in result.stdout


def test_a_user_refused_over_tcp_is_dumped_through_docker_exec(
        project: Path, stack: TestStack, local_only_user: str) -> None:
    result, _ = _backup_counts(project, stack)
    dump_lines = [line for line in result.stderr.splitlines()
                  if "mariadb-dump" in line and line.lstrip().startswith("backout: $")]
    assert len(dump_lines) == 2, dump_lines
    assert "docker run --rm --network container:" in dump_lines[0]
    assert "docker exec -i" in dump_lines[1] and "--host=" not in dump_lines[1]
    assert "nothing came through" in result.stderr and "Access denied" in result.stderr
    # exit 0 (ok_json): no warning either, the operator has nothing to do
    assert _helpers_left() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_signal_mid_dump_leaves_no_client_beside_the_server(
        project: Path, stack: TestStack, sig: int) -> None:
    """Ctrl-C (to the process group) or kill -9 while the client beside the server is
    streaming: nothing published, and its container goes (removed by backout after
    Ctrl-C; after kill -9, ended by its next write into a FIFO nobody reads)."""
    stack.mysql_query("CREATE TABLE mid_dump (id INT PRIMARY KEY, b TEXT NOT NULL);"
                      "INSERT INTO mid_dump SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_300000",
                      timeout=300)
    before = listed(project, show_all=True)
    try:
        run = subprocess.Popen([sys.executable, "-m", "backout", "backup", "mysql"], cwd=project,
                               env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
        try:
            wait_for(lambda: bool(_helpers_left()), timeout=60, interval=0.1,
                     message="the dump's client")
            time.sleep(0.3)  # streaming
            os.killpg(run.pid, sig)
            _, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == (130 if sig == signal.SIGINT else -9), (run.returncode, err)
        assert "Traceback" not in err
        wait_for(lambda: _helpers_left() == [], timeout=30, message="no client left")
        if sig == signal.SIGKILL:
            # the killed run's directory (the FIFO, the password's option file) is in
            # its unfinished set: never published, whatever `resume` does with the set
            resumed = backout("resume", "--json", cwd=project)
            assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
            published = [p for p in backup_dir(project).iterdir()
                         if p.is_dir() and not p.name.startswith(".")]
            assert [p for d in published for p in d.rglob(".beside-*")] == []
            before = listed(project, show_all=True)  # what resume published, if anything
        assert {k for k, usable in listed(project, show_all=True).items() if usable} == \
            {k for k, usable in before.items() if usable}
    finally:
        stack.mysql_query("DROP TABLE IF EXISTS mid_dump")


def test_without_the_switch_the_dump_goes_through_docker_exec(
        project: Path, stack: TestStack) -> None:
    result = backout("--verbose", "backup", "mysql", "--json", cwd=project,
                     env=clean_env(BACKOUT_DUMP_BESIDE="0"))
    ok_json(result)
    dump_lines = [line for line in result.stderr.splitlines() if "mariadb-dump" in line]
    assert len(dump_lines) == 1 and "docker exec -i" in dump_lines[0]


# --------------------------------------------------------------------------- faults


def test_database_down_fails_cleanly(project: Path, stack: TestStack) -> None:
    before = listed(project, show_all=True)
    stack.compose("stop", "mysql")
    try:
        result = backout("checkpoint", "--json", cwd=project)
        assert_one_line_error(result, 3, "unhealthy", "mysql", "not running")
        assert listed(project, show_all=True) == before
    finally:
        services_up(stack, "mysql")


@pytest.mark.parametrize(("variable", "database", "command"), [
    ("MYSQL_ROOT_PASSWORD", "mysql", "checkpoint"),
    ("REDIS_PASSWORD", "redis", "backup"),
    ("POSTGRES_PASSWORD", "postgresql", "backup"),
])
def test_wrong_password_fails_cleanly(project: Path, variable: str, database: str,
                                      command: str) -> None:
    env_file = project / ".env"
    original = env_file.read_text()
    wrong = f"wrong-{secrets.token_hex(8)}"
    before = listed(project, show_all=True)
    args = [command, database] if command == "backup" else [command]
    try:
        text, n = re.subn(rf"^{variable}=.*$", f"{variable}={wrong}", original, flags=re.M)
        assert n == 1
        env_file.write_text(text)
        result = backout(*args, "--json", cwd=project)
        line = assert_one_line_error(result, 6, "external", database, "authentication failed",
                                     variable)
        assert wrong not in line and wrong not in result.stdout
        assert listed(project, show_all=True) == before
    finally:
        env_file.write_text(original)


@pytest.fixture
def small_disk(project: Path, tmp_path: Path) -> Iterator[Path]:
    """[backups] dir pointed at a 64 KiB tmpfs (we run as root) for one test."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True,
                   capture_output=True, timeout=30)
    config = project / "backout.toml"
    original = config.read_text()
    try:
        text, n = re.subn(r'^dir = ".*"$', f'dir = "{mount}"', original, flags=re.M)
        assert n == 1
        config.write_text(text)
        yield mount
    finally:
        config.write_text(original)
        subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=30)


def test_disk_full_fails_cleanly_and_publishes_nothing(project: Path, stack: TestStack,
                                                       small_disk: Path) -> None:
    # 256 KiB of random bytes (hex in the dump, which zstd can only halve): the MySQL
    # dump cannot fit, while the MongoDB dump before it does.
    stack.mysql_query("CREATE TABLE disk_filler (id INT PRIMARY KEY, b LONGBLOB);"
                      "INSERT INTO disk_filler SELECT seq, RANDOM_BYTES(1024) FROM seq_1_to_256;")
    try:
        checksum = "CHECKSUM TABLE disk_filler, customers EXTENDED"
        before = stack.mysql_query(checksum)
        result = backout("checkpoint", "--json", cwd=project)
        assert_one_line_error(result, 6, "disk_full", "mysql", "no space left")
        assert listed(project, show_all=True) == {}
        # the failed backup removed its partial set: nothing is left to fill the disk
        assert list(small_disk.iterdir()) == []
        assert stack.mysql_query(checksum) == before  # the database is untouched
    finally:
        stack.mysql_query("DROP TABLE IF EXISTS disk_filler")


def test_kill_9_mid_backup_publishes_nothing_and_next_run_cleans_up(project: Path) -> None:
    steps = plan_steps(project)
    index = steps.index("dump mysql")
    before = usable(project)
    root = backup_dir(project)
    killed = backout("checkpoint", cwd=project,
                     env=clean_env(BACKOUT_FAULT_INJECT=f"step-{index}-started=kill"))
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    assert usable(project) == before
    assert set(listed(project, show_all=True)) - before == set()  # not even an unusable one
    left = partials(root)
    assert len(left) == 1, left  # the interrupted set, hidden

    result = backout("checkpoint", "--json", cwd=project)
    data = ok_json(result)
    assert "had been interrupted" in result.stderr
    assert partials(root) == []
    assert usable(project) == before | {data["set_id"]}
    ops = ok_json(backout("history", "--json", "--limit", "2", cwd=project))["operations"]
    assert [o["status"] for o in ops] == ["succeeded", "abandoned"]


def test_kill_9_during_quiesce_then_resume_restarts_writers(project: Path,
                                                            stack: TestStack) -> None:
    steps = plan_steps(project, "--quiesce")
    index = steps.index("dump mysql")
    assert any(s.startswith("stop writers") for s in steps[:index])
    before = usable(project)
    try:
        all_healthy(stack)
        killed = backout("checkpoint", "--quiesce", cwd=project,
                         env=clean_env(BACKOUT_FAULT_INJECT=f"step-{index}-started=kill"))
        assert killed.returncode == -9, (killed.returncode, killed.stderr)
        states = service_states(stack)
        assert all(states.get(w) != "running" for w in WRITERS), states  # died while quiesced
        assert usable(project) == before

        data = ok_json(backout("resume", "--json", cwd=project))
        assert data["status"] == "succeeded" and data["kind"] == "checkpoint"
        states = service_states(stack)
        assert all(states.get(w) == "running" for w in WRITERS), states
        new = usable(project) - before
        assert len(new) == 1
        assert manifest(project, new.pop())["quiesce"]["enabled"] is True
        assert partials(backup_dir(project)) == []
    finally:
        writers_up(stack)


# --------------------------------------------------------------------------- Redis with AOF


def _set_appendonly(stack: TestStack, value: str) -> None:
    stack.env["REDIS_APPENDONLY"] = value
    stack._write_env()
    services_up(stack, "redis")


def test_redis_restore_with_aof_on(project: Path, stack: TestStack) -> None:
    from backout.config import find_config, load_config
    from backout.engines.access import EngineAccess
    from backout.engines.redis import restore_redis
    from backout.environment import Environment
    from backout.platforms import for_config

    seed = (stack.project_dir / "seed" / "redis.txt").read_text()
    _set_appendonly(stack, "yes")
    try:
        assert stack.redis_cmd("CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]
        stack.redis_pipe(seed)  # switching AOF on starts from the (empty) AOF
        stack.redis_cmd("SET", "aoftest:key", "at-checkpoint")
        data = ok_json(backout("backup", "redis", "--json", cwd=project))
        section = manifest(project, data["set_id"])["databases"]["redis"]
        assert section["aof_enabled"] is True

        stack.redis_pipe("SET aoftest:key changed\nSET aoftest:new 1\nDEL seed:customers\n")
        assert stack.redis_cmd("GET", "aoftest:key") == "changed"

        env = Environment(project_dir=project)
        config = load_config(env, find_config(project, None))
        access = EngineAccess(env, config, config.databases["redis"], for_config(env, config))
        result = restore_redis(env, access, artifact(project, data["set_id"], "redis"), section)
        assert result["aof"] == "multipart"

        # The server (AOF on) serves the checkpoint's keys: had only the RDB been
        # replaced, it would have loaded its AOF and still say "changed".
        assert stack.redis_cmd("CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]
        assert stack.redis_cmd("GET", "aoftest:key") == "at-checkpoint"
        assert stack.redis_cmd("EXISTS", "aoftest:new") == "0"
        assert stack.redis_cmd("LRANGE", "seed:customers", "0", "-1").split() == \
            [str(i) for i in range(1, 21)]
    finally:
        _set_appendonly(stack, "no")
        stack.redis_pipe(seed + "DEL aoftest:key aoftest:new\n")


# --------------------------------------------------------------------------- known bug


@pytest.fixture
def tiny_disk(project: Path, tmp_path: Path, stack: TestStack) -> Iterator[Path]:
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount)], check=True,
                   capture_output=True, timeout=30)
    config = project / "backout.toml"
    original = config.read_text()
    try:
        config.write_text(re.sub(r'^dir = ".*"$', f'dir = "{mount}"', original, flags=re.M))
        yield mount
    finally:
        config.write_text(original)
        subprocess.run(["umount", str(mount)], check=False, capture_output=True, timeout=30)
        writers_up(stack)
        ops = ok_json(backout("history", "--json", "--limit", "1", cwd=project))["operations"]
        if ops and ops[0]["status"] == "running":  # left by the bug: let a backup abandon it
            backout("backup", "redis", "--json", cwd=project)


def test_quiesced_checkpoint_on_a_full_disk_restarts_writers(project: Path, stack: TestStack,
                                                             tiny_disk: Path) -> None:
    result = backout("checkpoint", "--quiesce", "--json", cwd=project)
    states = service_states(stack)
    assert all(states.get(w) == "running" for w in WRITERS), states
    assert_one_line_error(result, 6, "disk_full", "no space left")


# --------------------------------------------------------------------------- named volumes

VOLUME_SECTION = """
[volumes.redisdata]
volume = "redis-data"
service = "redis"
stop_service = true
"""


@pytest.fixture
def redis_volume(project: Path, stack: TestStack) -> Iterator[dict[str, str]]:
    """[volumes.redisdata] (Redis's own volume, Redis stopped during the tar) and known
    files planted in it: 300 KB of random bytes, a file owned by uid 1234, a symlink."""
    config = project / "backout.toml"
    original = config.read_text()
    plant = ("mkdir -p /data/voltest && head -c 300000 /dev/urandom > /data/voltest/blob && "
             "echo planted > /data/voltest/note && chown 1234:1234 /data/voltest/note && "
             "ln -sf note /data/voltest/link && sha256sum /data/voltest/blob")
    out = stack.compose("exec", "-T", "redis", "sh", "-c", plant).stdout
    try:
        config.write_text(original + VOLUME_SECTION)
        yield {"blob_sha256": out.split()[0]}
    finally:
        config.write_text(original)
        services_up(stack, "redis")
        stack.compose("exec", "-T", "redis", "rm", "-rf", "/data/voltest")


def _in_volume(volume: str, script: str, *, stdin: Path | None = None) -> str:
    """Run `sh -c script` in a throwaway debian container with the volume at /v."""
    argv = ["docker", "run", "--rm", "-i", "--network", "none", "-v", f"{volume}:/v",
            "debian:bookworm-slim", "sh", "-c", script]
    if stdin is None:
        return subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=120).stdout
    zstd = subprocess.Popen(["zstd", "-d", "-q", "-c", str(stdin)], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(argv, stdin=zstd.stdout, capture_output=True, text=True,
                             check=True, timeout=120).stdout
    finally:
        assert zstd.stdout is not None
        zstd.stdout.close()
    assert zstd.wait(timeout=60) == 0
    return out


def test_volume_backup_with_the_service_stopped_restores_by_hand(
        project: Path, stack: TestStack, redis_volume: dict[str, str]) -> None:
    steps = [s["name"] for s in ok_json(backout("backup", "redisdata", "--dry-run", "--json",
                                                cwd=project))["plan"]["steps"]]
    assert steps[1:4] == ["stop redis for volume redisdata", "back up volume redisdata",
                          "start redis after volume redisdata"]
    result = backout("backup", "redisdata", "--json", cwd=project)
    data = ok_json(result)
    assert service_states(stack)["redis"] == "running"  # started again by the plan
    m = manifest(project, data["set_id"])
    assert m["databases"] == {}
    section = m["volumes"]["redisdata"]
    assert section["service_stopped"] is True
    assert section["docker_volume"] == f"{stack.project_name}_redis-data"
    assert section["files"] >= 2 and section["symlinks"] >= 1
    assert section["bytes"] >= 300_000
    art = backup_dir(project) / data["set_id"] / section["artifacts"][0]
    assert art.name == "volume-redisdata.tar.zst" and art.stat().st_mode & 0o777 == 0o600
    assert m["artifacts"][art.name]["volume"] == "redisdata"
    # the journal shows the stop happened before the tar and the start after it
    ops = ok_json(backout("history", "--json", "--limit", "1", cwd=project))["operations"]
    assert ops[0]["status"] == "succeeded"
    verified = ok_json(backout("backups", "verify", data["set_id"], "--json", cwd=project))
    assert [a["name"] for a in verified["verify"]["artifacts"]] == [art.name]
    listed_row = next(r for r in ok_json(backout("backups", "list", "--json", cwd=project))
                      ["backups"] if r["id"] == data["set_id"])
    assert listed_row["volumes"] == ["redisdata"]

    # Restore BY HAND into a fresh volume, as the README says.
    restored = f"backout-voltest-{secrets.token_hex(3)}"
    subprocess.run(["docker", "volume", "create", "--label", f"io.backout.test.run={stack.run_id}",
                    restored], check=True, capture_output=True, timeout=60)
    try:
        _in_volume(restored, "tar -C /v -xpf - --numeric-owner", stdin=art)
        out = _in_volume(restored, "sha256sum /v/voltest/blob; stat -c %u /v/voltest/note; "
                                   "cat /v/voltest/note; readlink /v/voltest/link")
        assert out.split() == [redis_volume["blob_sha256"], "/v/voltest/blob", "1234",
                               "planted", "note"]
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", restored], capture_output=True,
                       timeout=60, check=False)


def test_volume_artifact_damage_is_named_by_verify(project: Path,
                                                   redis_volume: dict[str, str]) -> None:
    data = ok_json(backout("backup", "redisdata", "--json", cwd=project))
    root = backup_dir(project)
    copy_id = f"19990101T000001Z-{secrets.token_hex(2)}"
    shutil.copytree(root / data["set_id"], root / copy_id)
    try:
        _flip_middle_byte(root / copy_id / "volume-redisdata.tar.zst")
        result = backout("backups", "verify", copy_id, "--json", cwd=project)
        assert result.returncode == 5, (result.stdout, result.stderr)
        [bad] = [a for a in json.loads(result.stdout)["verify"]["artifacts"] if not a["ok"]]
        assert bad["name"] == "volume-redisdata.tar.zst" and "volume-redisdata" in bad["problem"]
    finally:
        shutil.rmtree(root / copy_id, ignore_errors=True)


def test_a_missing_volume_fails_cleanly(project: Path) -> None:
    config = project / "backout.toml"
    original = config.read_text()
    try:
        config.write_text(original + VOLUME_SECTION.replace('"redis-data"', '"redis-dta"'))
        result = backout("backup", "redisdata", "--json", cwd=project)
        assert_one_line_error(result, 2, "config", "volumes.redisdata.volume",
                              'no volume "redis-dta" in compose project')
    finally:
        config.write_text(original)


# --------------------------------------------------------------------------- RDB checksum


def test_rdb_checksum_of_the_stacks_redis_verifies_and_catches_a_flipped_byte(
        project: Path) -> None:
    data = ok_json(backout("backup", "redis", "--json", cwd=project))
    m = manifest(project, data["set_id"])
    assert m["databases"]["redis"]["rdb_checksum"] == "ok"  # Redis's CRC-64, recomputed
    root = backup_dir(project)
    copy_id = f"19990101T000002Z-{secrets.token_hex(2)}"
    shutil.copytree(root / data["set_id"], root / copy_id)
    try:
        art = root / copy_id / "redis.rdb.zst"
        rdb = bytearray(zstd_bytes(art))
        rdb[len(rdb) // 2] ^= 0x01
        art.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=bytes(rdb), check=True,
                                       capture_output=True, timeout=60).stdout)
        # a consistent manifest, so only the RDB's own checksum can tell
        m["artifacts"]["redis.rdb.zst"].update(bytes=art.stat().st_size,
                                               sha256=hashlib.sha256(art.read_bytes()).hexdigest())
        (root / copy_id / "manifest.json").write_text(json.dumps(m))
        result = backout("backups", "verify", copy_id, "--json", cwd=project)
        assert result.returncode == 5, (result.stdout, result.stderr)
        [bad] = [a for a in json.loads(result.stdout)["verify"]["artifacts"] if not a["ok"]]
        assert bad["name"] == "redis.rdb.zst"
        assert f"backup {copy_id}: redis.rdb.zst: RDB checksum mismatch" in bad["problem"]
    finally:
        shutil.rmtree(root / copy_id, ignore_errors=True)


# --------------------------------------------------------------------------- mongodump


FAKE_MONGODUMP = Path(__file__).resolve().parent.parent / "data" / "mongodump" / "fake-mongodump"


@pytest.fixture
def fake_mongodump(project: Path, stack: TestStack) -> Iterator[str]:
    """A FAKE mongodump (no real one exists here) in the stand-in's container, dumping
    the live stand-in with pymongo; plus a MongoDB password (a sentinel: the stand-in
    ignores authentication) so that the credential path is exercised."""
    container = stack.container_id("mongodb")
    subprocess.run(["docker", "cp", str(FAKE_MONGODUMP), f"{container}:/usr/local/lib/fake-mongodump"],
                   check=True, capture_output=True, timeout=60)
    wrapper = ("printf '#!/bin/sh\\nFAKE_MONGODUMP_LIVE=1 exec /opt/nx/bin/python "
               "/usr/local/lib/fake-mongodump \"$@\"\\n' > /usr/local/bin/mongodump && "
               "chmod 755 /usr/local/bin/mongodump && rm -f /tmp/fake-mongodump.log")
    stack.compose("exec", "-T", "mongodb", "sh", "-c", wrapper)
    sentinel = f"mongo-sentinel-{secrets.token_hex(16)}"
    config, env_file = project / "backout.toml", project / ".env"
    original_config, original_env = config.read_text(), env_file.read_text()
    text, n = re.subn(r'(\[databases\.mongodb\]\n(?:.*\n)*?service = "mongodb"\n)',
                      r'\1user = "root"\npassword_env = "MONGO_TEST_PASSWORD"\n', original_config)
    assert n == 1, original_config
    try:
        config.write_text(text)
        env_file.write_text(original_env + f"\nMONGO_TEST_PASSWORD={sentinel}\n")
        yield sentinel
    finally:
        config.write_text(original_config)
        env_file.write_text(original_env)
        stack.compose("exec", "-T", "mongodb", "rm", "-f", "/usr/local/bin/mongodump",
                      "/usr/local/lib/fake-mongodump")


def test_mongodump_inside_the_container_is_used_when_it_exists(
        project: Path, stack: TestStack, fake_mongodump: str) -> None:
    sentinel = fake_mongodump
    stack.compose("stop", *WRITERS)  # still data while we compare
    try:
        before = mongo_snapshot(stack)
        watcher = CmdlineWatcher([sentinel.encode()], (b"backout-mongodump", b"fake-mongodump"))
        watcher.start()
        try:
            result = backout("backup", "mongodb", "--verbose", "--json", cwd=project)
        finally:
            watcher.stop.set()
            watcher.join(timeout=10)
        data = ok_json(result)
        assert watcher.hits == [], watcher.hits
        assert {b"backout-mongodump", b"fake-mongodump"} <= watcher.seen, watcher.seen
        assert sentinel not in result.stdout + result.stderr
        raw_manifest = (backup_dir(project) / data["set_id"] / "manifest.json").read_text()
        assert sentinel not in raw_manifest
        section = json.loads(raw_manifest)["databases"]["mongodb"]
        assert section["mode"] == "mongodump" and "fake" in section["tool_version"]
        assert section["databases"][DATABASE]["collections"] == \
            {c: len(docs) for c, docs in before.items()}

        # what the fake mongodump saw: the password only in its 0600 --config file
        runs = [json.loads(line) for line in stack.compose(
            "exec", "-T", "mongodb", "cat", "/tmp/fake-mongodump.log").stdout.splitlines()]
        assert len(runs) == 1
        assert runs[0]["password_sha256"] == hashlib.sha256(sentinel.encode()).hexdigest()
        assert runs[0]["config_mode"] == "0o600"
        assert not any(sentinel in a for a in runs[0]["argv"])
        leftovers = stack.compose("exec", "-T", "mongodb", "sh", "-c",
                                  "ls -d /tmp/backout-mongodump.* 2>/dev/null || true").stdout
        assert leftovers.strip() == ""

        # the artifact restores by hand to the same documents
        stack.mongo_eval("db.customers.update_one({'_id': 1}, {'$set': {'name': 'changed'}})")
        assert mongo_snapshot(stack) != before
        restore_mongo_by_hand(stack, artifact(project, data["set_id"], "mongodb"))
        assert mongo_snapshot(stack) == before
        ok_json(backout("backups", "verify", data["set_id"], "--json", cwd=project))
    finally:
        writers_up(stack)


def test_without_mongodump_the_driver_dumps(project: Path) -> None:
    data = ok_json(backout("backup", "mongodb", "--json", cwd=project))
    assert manifest(project, data["set_id"])["databases"]["mongodb"]["mode"] == "driver"
