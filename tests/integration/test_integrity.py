"""Issue 10: nothing acknowledged is lost. Every data-changing command runs while a
client keeps writing and logs each acknowledged write (tests/support/integrity.py);
then the test proves where each one ended up: in the live data or in the safety
backup, and the ones missing from the live data exactly those the checkpoint lacks,
as many as backout reported in the data-loss window before it restored.

Also here: interrupts (SIGINT to the process group, as a terminal's Ctrl-C; SIGKILL
then `backout resume`), restores of every shape the runbook means (a dropped table
under views, triggers, foreign keys, routines and events; TRUNCATE; DROP DATABASE; a
half-applied migration; Redis FLUSHALL with AOF and a password; a dropped MongoDB
collection with its indexes), a full disk under the safety backup and a Docker
Engine that stops answering in the middle of a restore (a socket proxy of ours;
dockerd is never touched).

One stack for the module, with Redis' AOF on and the backend's own background writer
paused, so the only writes are the ones the test logs. MongoDB is the nx-27017
stand-in, not MongoDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_clean_error, backout, clean_env, ok, ok_json
from tests.support.dockerproxy import FreezingProxy
from tests.support.integrity import (
    AckWriter,
    check_window,
    index_of,
    journal_step_started,
    journal_steps,
    last_operation_id,
    last_plan,
    live_tokens,
    prove,
    redis_overwritten,
    run_signalled,
    safety_sets_of,
    steps_of,
    tokens_in_artifact,
)
from tests.support.snapshots import mongo_snapshot, mysql_objects, mysql_snapshot, redis_snapshot
from tests.support.stack import TestStack, wait_for

pytestmark = pytest.mark.docker

ENGINES = ("mysql", "redis", "mongodb", "postgresql")
APPS = ("backend", "frontend", "model-server")


class Rig:
    def __init__(self, stack: TestStack) -> None:
        self.stack = stack
        self.project = stack.project_dir
        self.backups = self.project / ".backout" / "backups"

    def run(self, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
        return backout(*args, cwd=self.project, timeout=timeout, **env)

    def json(self, *args: str, **env: str) -> dict[str, Any]:
        return ok_json(self.run(*args, "--json", **env))

    def checkpoint(self) -> dict[str, Any]:
        return self.json("checkpoint")

    def running(self) -> dict[str, str]:
        """service -> state of every project container."""
        out = self.stack.compose("ps", "-a", "--format", "{{.Service}} {{.State}}",
                                 timeout=60).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def wait_apps_up(self) -> None:
        wait_for(lambda: all(self.running().get(s) == "running" for s in APPS), timeout=120,
                 message="app services running")
        wait_for(lambda: self.stack.health("backend") == "healthy", timeout=120,
                 message="backend healthy")

    def safety_sets(self, result: dict[str, Any]) -> dict[str, str]:
        """database -> the safety set id a rollback's plan wrote."""
        return safety_sets_of(result["plan"])

    def unfinished(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.json("status")["interrupted"]
        return found


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    stack = TestStack.create(tmp_path_factory.mktemp("integrity"),
                             env={"REDIS_APPENDONLY": "yes", "WRITE_INTERVAL": "0"})
    try:
        stack.build_images()
        stack.up()
        stack.seed()
        ok(backout("init", cwd=stack.project_dir))
        toml = stack.project_dir / "backout.toml"
        toml.write_text(toml.read_text() + "\n[verify]\nsettle_seconds = 2\n")
        assert stack.redis_cmd("CONFIG", "GET", "appendonly").splitlines()[-1] == "yes"
        yield Rig(stack)
    finally:
        stack.down()


def final_window(result: dict[str, Any], database: str) -> dict[str, Any]:
    """The data-loss window backout recorded for ``database`` right before restoring."""
    found = [w for w in result["data_loss"] if w["database"] == database]
    assert len(found) == 1, result["data_loss"]
    return found[0]


# --------------------------------------------------------------------------- live writes


# PostgreSQL's case runs in the soak (default-suite budget); its rollback db is in the
# default suite through test_postgresql.py and the emergency/deploy cases below.
@pytest.mark.parametrize("database", [
    *(e for e in ENGINES if e != "postgresql"), pytest.param("postgresql", marks=pytest.mark.soak)])
def test_rollback_db_under_live_writes_loses_no_acknowledged_write(rig: Rig,
                                                                   database: str) -> None:
    with AckWriter(rig.stack) as writer:
        writer.wait_for(5)
        cp = rig.checkpoint()
        writer.wait_for(20)
        dry = rig.json("rollback", "db", database, cp["set_id"], "--dry-run")
        shown = ok(rig.run("rollback", "db", database, cp["set_id"], "--dry-run")).stdout
        assert "data loss:" in shown and f"{database}: backup taken" in shown, shown
        [planned] = dry["data_loss"]
        assert planned["taken_at"] and planned["age_seconds"] is not None
        assert planned["changes"] > 0, planned
        names = [s["action"] for s in dry["plan"]["steps"]]
        assert names.index("compose.stop") < names.index("rollback.db.safety") \
            < names.index("rollback.db.restore")
        started = time.time()
        result = rig.json("rollback", "db", database, cp["set_id"], "--yes")
        finished = time.time()
        rig.wait_apps_up()
        writer.wait_for(10)
    window = final_window(result, database)
    safety = rig.safety_sets(result)[database]
    proof = prove(writer, live_tokens(rig.stack, database),
                  tokens_in_artifact(rig.backups, cp["set_id"], database),
                  tokens_in_artifact(rig.backups, safety, database), database,
                  started=started, finished=finished)
    print(f"{database}: {proof}; window: {window['summary']}")
    assert proof.lost > 0, "the test must restore over acknowledged writes"
    check_window(window, proof, rig.backups, cp["set_id"], safety)


def test_sigint_during_a_restore_winds_down_without_resume(rig: Rig) -> None:
    """Ctrl-C (SIGINT to the process group) while the restore runs: the restore is
    stopped, the safety backup put back, the writers started; exit 130 naming the
    state and the next command; `backout status` says the same; no write is lost."""
    with AckWriter(rig.stack) as writer:
        writer.wait_for(5)
        cp = rig.checkpoint()
        writer.wait_for(10)
        steps = steps_of(rig.json("rollback", "db", "mysql", cp["set_id"], "--dry-run"))
        restore = index_of(steps, "rollback.db.restore")
        result = run_signalled(rig.project, ["rollback", "db", "mysql", cp["set_id"], "--yes"],
                               step=restore, sig=signal.SIGINT)
        stopped = time.time()
        assert result.returncode == 130, (result.stdout, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
        line = [x for x in result.stderr.splitlines() if x.startswith("backout: error:")][-1]
        for needle in ("interrupted by SIGINT", "restore mysql",
                       "mysql: as before the restore", "running again", "nothing to resume",
                       f"backout rollback db mysql {cp['set_id']}"):
            assert needle in line, (needle, line)
        # Writers running again without `backout resume`.
        assert rig.unfinished() == []
        rig.wait_apps_up()
        status = rig.json("status")["last_operation"]
        assert status["status"] == "interrupted"
        assert status["state"]["data"] == ["mysql: as before the restore (its safety backup "
                                           "was put back)"]
        assert all("running again" in s for s in status["state"]["services"])
        writer.wait_for(10)
    live = live_tokens(rig.stack, "mysql")
    assert writer.tokens() <= live, "an acknowledged write is missing after the interrupt"
    assert writer.tokens(after=stopped) <= live


def test_emergency_with_data_under_live_writes(rig: Rig) -> None:
    with AckWriter(rig.stack) as writer:
        writer.wait_for(5)
        cp = rig.checkpoint()
        writer.wait_for(20)
        target = f"cp{cp['checkpoint_id']}"
        dry = rig.json("rollback", "emergency", target, "--with-data", "--dry-run")
        assert {w["database"] for w in dry["data_loss"]} == set(ENGINES)
        actions = [s["action"] for s in dry["plan"]["steps"]]
        # Data first, writers stopped before any safety backup, started after the stack.
        assert actions.index("compose.stop") < actions.index("rollback.db.safety")
        assert max(i for i, a in enumerate(actions) if a == "rollback.db.restore") \
            < actions.index("emergency.checkout")
        assert actions.index("emergency.up") < actions.index("compose.start")
        started = time.time()
        result = rig.json("rollback", "emergency", target, "--with-data", "--yes")
        finished = time.time()
        rig.wait_apps_up()
        writer.wait_for(10)
    safety = rig.safety_sets(result)
    for database in ENGINES:
        proof = prove_restored(rig, writer, database, cp["set_id"], safety[database],
                               started=started, finished=finished)
        window = final_window(result, database)
        print(f"emergency {database}: {proof}; window: {window['summary']}")
        assert proof.lost > 0
        check_window(window, proof, rig.backups, cp["set_id"], safety[database])


def prove_restored(rig: Rig, writer: AckWriter, database: str, checkpoint: str, safety: str,
                   *, started: float, finished: float) -> Any:
    """prove() for one database of a restore of several (see redis_overwritten)."""
    live = live_tokens(rig.stack, database)
    cp_tokens = tokens_in_artifact(rig.backups, checkpoint, database)
    overwritten = redis_overwritten(rig.stack, writer, cp_tokens, live, started) \
        if database == "redis" else set()
    return prove(writer, live, cp_tokens, tokens_in_artifact(rig.backups, safety, database),
                 database, started=started, finished=finished, overwritten=overwritten)


def branch_with(stack: TestStack, name: str, mode: str) -> str:
    """A commit on a new branch with the backend at ``mode``; HEAD stays where it was."""
    stack._git("checkout", "-q", "-b", name)
    sha = stack.set_image_tag("backend", mode)
    stack._git("checkout", "-q", "-")
    return sha


def branch_with_notes(stack: TestStack, name: str) -> str:
    """A commit on a new branch that changes no image (release notes only); HEAD stays."""
    stack._git("checkout", "-q", "-b", name)
    (stack.project_dir / "RELEASE-NOTES").write_text(f"{name}\n")
    stack._git("add", "RELEASE-NOTES")
    stack._git("commit", "-q", "-m", f"{name}: release notes only")
    sha = stack.head()
    stack._git("checkout", "-q", "-")
    return sha


def test_deploy_migration_rolled_back_under_live_writes(rig: Rig) -> None:
    """`deploy --migration` of a release whose backend never turns healthy: the deploy
    checkpoints (the writer writing), fails at `up --wait`, and rolls code and data
    back; the writes acknowledged by the bad release are in the safety backups."""
    bad = branch_with(rig.stack, "integrity-unhealthy", "unhealthy")
    with AckWriter(rig.stack) as writer:
        writer.wait_for(5)
        started = time.time()
        result = rig.run("deploy", bad, "--watch", "0", "--migration", "--json")
        finished = time.time()
        assert result.returncode == 8, (result.stdout[-2000:], result.stderr[-3000:])
        report = json.loads(result.stdout)
        assert report["outcome"] == "rolled_back"
        rig.wait_apps_up()
        writer.wait_for(10)
    assert "unhealthy" not in rig.stack.inspect("backend")["Config"]["Image"]
    for database in ENGINES:
        safety = report["safety_sets"][database]
        proof = prove_restored(rig, writer, database, report["set_id"], safety,
                               started=started, finished=finished)
        window = final_window(report, database)
        print(f"deploy {database}: {proof}; window: {window['summary']}")
        check_window(window, proof, rig.backups, report["set_id"], safety)


# --------------------------------------------------------------------------- shapes of restores

EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS item_tags (
    id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    item_id BIGINT NOT NULL,
    tag VARCHAR(32) NOT NULL,
    CONSTRAINT fk_item_tags_item FOREIGN KEY (item_id) REFERENCES items (id)
) ENGINE=InnoDB;
INSERT INTO item_tags (item_id, tag) SELECT id, 'seeded' FROM items ORDER BY id LIMIT 7;
CREATE OR REPLACE VIEW item_names AS SELECT id, name FROM items;
CREATE OR REPLACE VIEW tagged_items AS
    SELECT i.id, i.name, t.tag FROM items i JOIN item_tags t ON t.item_id = i.id;
CREATE TRIGGER items_tag_new AFTER INSERT ON items FOR EACH ROW
    INSERT INTO item_tags (item_id, tag) VALUES (NEW.id, 'new');
CREATE PROCEDURE count_items() SELECT COUNT(*) FROM items;
CREATE FUNCTION item_label(i BIGINT) RETURNS VARCHAR(300) DETERMINISTIC
    RETURN (SELECT CONCAT('#', id, ' ', name) FROM items WHERE id = i);
CREATE EVENT purge_untagged ON SCHEDULE EVERY 1 DAY DO
    DELETE FROM item_tags WHERE tag = 'none';
"""
DROP_EXTRA_SCHEMA = """
DROP EVENT IF EXISTS purge_untagged; DROP FUNCTION IF EXISTS item_label;
DROP PROCEDURE IF EXISTS count_items; DROP TRIGGER IF EXISTS items_tag_new;
DROP VIEW IF EXISTS tagged_items; DROP VIEW IF EXISTS item_names; DROP TABLE IF EXISTS item_tags;
"""
MONGO_CATALOG = """
db.catalog.drop()
db.catalog.insert_many([{'_id': i, 'sku': f'SKU-{i:04d}', 'price': i * 7, 'shelf': i % 5}
                        for i in range(1, 201)])
db.catalog.create_index('sku', unique=True, name='sku_unique')
db.catalog.create_index([('shelf', 1), ('price', -1)], name='shelf_price')
result = True
"""


def mongo_collection(stack: TestStack, name: str) -> dict[str, Any]:
    return stack.mongo_eval(
        f"c = db[{name!r}]\n"
        "result = {'docs': sorted(c.find(), key=lambda d: d['_id']),"
        " 'indexes': sorted((i['name'], sorted(i['key'].items()), bool(i.get('unique')))"
        " for i in c.list_indexes())}")


@pytest.fixture(scope="class")
def shaped(rig: Rig) -> Iterator[dict[str, Any]]:
    """The app database with views, a trigger, a foreign key, routines and an event,
    a MongoDB collection with indexes; snapshots of everything, and a checkpoint of it
    (the data is still: no writer runs in these tests). Removed after the class, so
    the trigger and the foreign key do not reach the other tests."""
    stack = rig.stack
    stack.mysql_query(EXTRA_SCHEMA)
    stack.mongo_eval(MONGO_CATALOG)
    before = {"mysql": mysql_snapshot(stack), "objects": mysql_objects(stack),
              "redis": redis_snapshot(stack, volatile=False),
              "catalog": mongo_collection(stack, "catalog"), "mongodb": mongo_snapshot(stack)}
    assert [o for o in before["objects"] if o[0] in ("view", "trigger", "routine", "event")]
    cp = rig.checkpoint()
    try:
        yield {"cp": cp, **before}
    finally:
        stack.mysql_query(DROP_EXTRA_SCHEMA)
        stack.mongo_eval("db.catalog.drop()\nresult = True")


MYSQL_DAMAGE = {
    # The case: a view reads the dropped table, so a plain safety dump fails;
    # and a view whose definer does not exist (error 1449 when it is queried).
    "drop-table-with-dependents": "SET FOREIGN_KEY_CHECKS = 0; DROP TABLE items;"
                                  " SET FOREIGN_KEY_CHECKS = 1; CREATE DEFINER = 'ghost'@'%'"
                                  " SQL SECURITY DEFINER VIEW ghost_customers AS"
                                  " SELECT id FROM customers;",
    "truncate": "TRUNCATE TABLE item_tags; TRUNCATE TABLE customers;",
    "drop-database": "DROP DATABASE backout_app;",
    # A migration that stopped halfway: a column added and filled, a table created,
    # then the next statement failed (the rest never ran).
    "half-applied-migration": "ALTER TABLE customers ADD COLUMN loyalty INT NOT NULL DEFAULT 0;"
                              " UPDATE customers SET loyalty = id * 10 WHERE id <= 10;"
                              " CREATE TABLE loyalty_tiers (id INT PRIMARY KEY, name TEXT);"
                              " DELETE FROM order_lines WHERE id % 3 = 0;",
}


class TestRestoreShapes:
    """Each shape restored from one checkpoint of `shaped`, compared exactly."""

    @pytest.mark.parametrize("shape", list(MYSQL_DAMAGE))
    def test_mysql_restore_of_every_shape_is_exact(self, rig: Rig, shaped: dict[str, Any],
                                                   shape: str) -> None:
        stack = rig.stack
        stack.mysql_query(MYSQL_DAMAGE[shape], database=None if shape == "drop-database"
                          else "backout_app")
        result = rig.json("rollback", "db", "mysql", f"cp{shaped['cp']['checkpoint_id']}", "--yes")
        assert mysql_snapshot(stack) == shaped["mysql"], f"{shape}: rows differ after the restore"
        assert mysql_objects(stack) == shaped["objects"], f"{shape}: schema objects differ"
        safety = rig.safety_sets(result)["mysql"]
        manifest = json.loads((rig.backups / safety / "manifest.json").read_text())
        section = manifest["databases"]["mysql"]
        if shape == "drop-table-with-dependents":
            # The safety backup left out what cannot be dumped (or restored), and says why.
            skipped = {item["object"]: item for item in section["not_dumped"]}
            assert set(skipped) == {"backout_app.item_names", "backout_app.tagged_items"}, \
                skipped
            assert all("1356" in item["why"] and "CREATE" in item["definition"]
                       for item in skipped.values())
            # A view whose definer does not exist still opens for the dump: it is kept.
            dumped = subprocess.run(["zstd", "-dc", str(rig.backups / safety / "mysql.sql.zst")],
                                    capture_output=True, check=True, timeout=60).stdout
            assert b"`ghost`@`%`" in dumped and b"ghost_customers" in dumped
        if shape == "drop-database":
            assert section["absent"] == ["backout_app"] and section["databases"] == {}
        rig.wait_apps_up()

    def test_rollback_of_the_rollback_after_drop_database_drops_it_again(
            self, rig: Rig, shaped: dict[str, Any]) -> None:
        """The safety backup of a dropped database records it as absent: putting that
        safety backup back reproduces the state before the restore exactly (no database)."""
        stack = rig.stack
        stack.mysql_query("DROP DATABASE backout_app;", database=None)
        first = rig.json("rollback", "db", "mysql", f"cp{shaped['cp']['checkpoint_id']}", "--yes")
        assert mysql_snapshot(stack) == shaped["mysql"]
        rig.json("rollback", "db", "mysql", rig.safety_sets(first)["mysql"], "--yes")
        assert "backout_app" not in {r[0] for r in stack.mysql_query("SHOW DATABASES", database=None)}
        rig.json("rollback", "db", "mysql", f"cp{shaped['cp']['checkpoint_id']}", "--yes")
        assert mysql_snapshot(stack) == shaped["mysql"]
        rig.wait_apps_up()

    def test_redis_flushall_with_aof_and_a_password(self, rig: Rig,
                                                    shaped: dict[str, Any]) -> None:
        stack = rig.stack
        stack.redis_cmd("FLUSHALL")
        assert stack.redis_cmd("DBSIZE") == "0"
        rig.json("rollback", "db", "redis", f"cp{shaped['cp']['checkpoint_id']}", "--yes")
        assert redis_snapshot(stack, volatile=False) == shaped["redis"]
        # The data is in the AOF, not only in memory: a restart loads the same keyspace.
        assert stack.redis_cmd("CONFIG", "GET", "appendonly").splitlines()[-1] == "yes"
        stack.compose("restart", "redis", timeout=120)
        wait_for(lambda: stack.health("redis") == "healthy", timeout=60, message="redis healthy")
        assert redis_snapshot(stack, volatile=False) == shaped["redis"]
        rig.wait_apps_up()

    def test_mongodb_dropped_collection_with_indexes(self, rig: Rig,
                                                     shaped: dict[str, Any]) -> None:
        stack = rig.stack
        stack.mongo_eval("db.catalog.drop()\nresult = True")
        assert mongo_collection(stack, "catalog")["docs"] == []
        rig.json("rollback", "db", "mongodb", f"cp{shaped['cp']['checkpoint_id']}", "--yes")
        assert mongo_collection(stack, "catalog") == shaped["catalog"]
        assert mongo_snapshot(stack) == shaped["mongodb"]
        rig.wait_apps_up()


# --------------------------------------------------------------------------- failures around a restore


@contextlib.contextmanager
def backups_setting(rig: Rig, **values: Any) -> Iterator[None]:
    """Set keys of [backups] in backout.toml for the duration."""
    toml = rig.project / "backout.toml"
    original = toml.read_text()
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    keys = tuple(f"{k} =" for k in values)
    text = "\n".join(line for line in original.splitlines() if not line.startswith(keys))
    toml.write_text(text.replace("[backups]\n", "[backups]\n" + "\n".join(lines) + "\n", 1)
                    + "\n")
    try:
        yield
    finally:
        toml.write_text(original)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def test_disk_full_during_the_safety_backup(rig: Rig, tmp_path: Path) -> None:
    """The backup disk fills up while the safety backup is written: nothing is restored,
    the partial set is removed (the disk is not left full), the writers run again, and
    the one error line names the cause and the explicit override."""
    stack = rig.stack
    cp = rig.checkpoint()
    with small_disk(tmp_path / "backups", "1m") as disk, backups_setting(rig, dir=str(disk)):
        shutil.copytree(rig.backups / cp["set_id"], disk / cp["set_id"])
        artifact = disk / cp["set_id"] / "mysql.sql.zst"
        free = shutil.disk_usage(disk).free
        filler = free - artifact.stat().st_size // 2  # room for half a dump
        (disk / "filler").write_bytes(b"\0" * max(0, filler))
        free_before = shutil.disk_usage(disk).free
        before = mysql_snapshot(stack)
        stack.mysql_query("DELETE FROM customers WHERE id > 18")  # differs from the backup
        changed = mysql_snapshot(stack)
        assert changed != before
        result = rig.run("rollback", "db", "mysql", cp["set_id"], "--yes")
        line = assert_clean_error(result, 6, "no space left", "nothing was restored",
                                  "--no-safety-backup")
        print(line)
        assert mysql_snapshot(stack) == changed, "data changed although nothing was restored"
        assert not list(disk.glob(".partial-*")), "the partial safety set was left behind"
        assert shutil.disk_usage(disk).free == free_before
        assert rig.unfinished() == []
        rig.wait_apps_up()
        # The override needs a human at a terminal, even with --yes ...
        override = ["rollback", "db", "mysql", cp["set_id"], "--yes", "--no-safety-backup"]
        assert_clean_error(rig.run(*override), 2, "typed on a terminal")
        assert mysql_snapshot(stack) == changed
        # ... who types the database's name (anything else changes nothing) ...
        code, shown = on_a_terminal(rig.project, override, "Type 'mysql' to confirm", "nope")
        assert code == 2 and "not confirmed" in shown, shown[-2000:]
        assert mysql_snapshot(stack) == changed
        code, shown = on_a_terminal(rig.project, override, "Type 'mysql' to confirm", "mysql")
        assert code == 0, shown[-3000:]
        assert "WITHOUT a safety backup" in shown
        assert mysql_snapshot(stack) == before
        assert not list(disk.glob(".partial-*"))
    # ... and the audit log keeps who overrode what.
    actions = [e["action"] for e in rig.json("events", "--limit", "20")["events"]]
    assert "rollback.db.no_safety_backup_confirmed" in actions
    assert "restore.without_safety_backup" in actions
    rig.wait_apps_up()


def on_a_terminal(project: Path, args: list[str], prompt: str, answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin and stderr; type ``answer`` when
    ``prompt`` appears. Returns the exit code and what the terminal showed."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "backout", *args], cwd=project,
                            env=clean_env(), stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    typed = False
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                shown += chunk
            if not typed and prompt.encode() in shown:
                os.write(master, f"{answer}\n".encode())
                typed = True
            if proc.poll() is not None and not ready:
                break
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=60)
    print(f"[terminal] backout {' '.join(args)} (typed {answer!r}) -> {proc.returncode}")
    return proc.returncode, shown.decode(errors="replace") + out.decode(errors="replace")


def test_docker_engine_stops_answering_mid_restore(rig: Rig, tmp_path: Path) -> None:
    """The engine freezes while the restore streams into MySQL (a proxy of ours between
    backout and the engine): backout notices the stream stalled, finds the engine gone,
    leaves the cleanup (safety backup back, writers started) for `backout resume` and
    says so; once the engine answers, `resume` makes the data whole."""
    stack = rig.stack
    # Enough rows that the restore stream is still flowing when the proxy freezes.
    stack.mysql_query("INSERT INTO items (name) SELECT CONCAT('bulk-', seq, '-', REPEAT('x', 180))"
                      " FROM seq_1_to_4000")
    cp = rig.checkpoint()
    stack.mysql_query("DELETE FROM items WHERE name LIKE 'bulk-%' AND id % 2 = 0")
    before = mysql_snapshot(stack)
    steps = steps_of(rig.json("rollback", "db", "mysql", cp["set_id"], "--dry-run"))
    restore = index_of(steps, "rollback.db.restore")
    with backups_setting(rig, stall_seconds=5), \
            FreezingProxy(tmp_path / "docker.sock") as proxy:
        since = last_operation_id(rig.project)
        proc = subprocess.Popen(
            [sys.executable, "-m", "backout", "rollback", "db", "mysql", cp["set_id"], "--yes"],
            cwd=rig.project, env=clean_env(DOCKER_HOST=proxy.docker_host,
                                           BACKOUT_FAULT_INJECT=f"step-{restore}-started=sleep:1"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: journal_step_started(rig.project, restore, since), timeout=300,
                 interval=0.1, message="restore started")
        proxy.arm(after_bytes=150_000)
        start = time.monotonic()
        _out, err = proc.communicate(timeout=300)
        took = time.monotonic() - start
        print(f"exit {proc.returncode} after {took:.0f}s (froze at {proxy.froze_at_bytes} bytes)")
        assert proxy.froze_at_bytes is not None, "the restore stream never reached the proxy"
        errors = [x for x in err.splitlines() if x.startswith("backout: error:")]
        assert proc.returncode == 6 and len(errors) == 1, (proc.returncode, err[-3000:])
        for needle in ("Docker Engine stopped answering", "left unfinished", "backout resume",
                       "MAY BE HALF-RESTORED", "STOPPED"):
            assert needle in errors[0], (needle, errors[0])
        assert "Traceback" not in err
    # The real engine again (the proxy is gone): status agrees, resume finishes.
    status = rig.json("status")
    assert [op["kind"] for op in status["interrupted"]] == ["rollback.db"]
    assert status["last_operation"]["state"]["data"][0].startswith("mysql: MAY BE HALF-RESTORED")
    resumed = rig.run("resume")
    assert resumed.returncode == 6, (resumed.stdout, resumed.stderr[-2000:])  # the restore failed
    assert "mysql: as before the restore" in resumed.stderr, resumed.stderr[-2000:]
    assert rig.unfinished() == []
    assert mysql_snapshot(stack) == before
    rig.wait_apps_up()
    stack.mysql_query("DELETE FROM items WHERE name LIKE 'bulk-%'")


def test_partial_sets_are_removed_by_prune_and_resume(rig: Rig) -> None:
    for name in (".partial-20000101T000000Z-dead", ".partial-20000101T000001Z-beef"):
        (rig.backups / name).mkdir()
        (rig.backups / name / "mysql.sql.zst").write_bytes(b"\0" * 4096)
    dry = rig.json("backups", "prune", "--dry-run")
    assert set(dry["removed_partial_sets"]) == {".partial-20000101T000000Z-dead",
                                                ".partial-20000101T000001Z-beef"}
    assert (rig.backups / ".partial-20000101T000000Z-dead").is_dir()  # a dry run
    rig.json("backups", "prune")
    assert not list(rig.backups.glob(".partial-*"))
    (rig.backups / ".partial-20000101T000002Z-cafe").mkdir()
    assert rig.json("resume")["removed_partial_sets"] == [".partial-20000101T000002Z-cafe"]
    assert not list(rig.backups.glob(".partial-*"))


def test_backups_list_tells_verified_from_sized_and_hides_a_failed_set(rig: Rig) -> None:
    cp = rig.checkpoint()
    flipped = f"{cp['set_id']}-flipped"
    shutil.copytree(rig.backups / cp["set_id"], rig.backups / flipped)
    artifact = rig.backups / flipped / "mysql.sql.zst"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a full read can tell
    artifact.write_bytes(bytes(data))
    try:
        listed = {b["id"]: b for b in rig.json("backups", "list")["backups"]}
        assert listed[cp["set_id"]]["usable"] and listed[cp["set_id"]]["verified"]["ok"]
        assert listed[flipped]["usable"] and listed[flipped]["verified"] is None
        assert "never (sizes only)" in rig.run("backups", "list").stdout
        assert rig.run("backups", "verify", flipped).returncode == 5
        listed = {b["id"]: b for b in rig.json("backups", "list")["backups"]}
        assert flipped not in listed
        shown = {b["id"]: b for b in rig.json("backups", "list", "--all")["backups"]}
        assert shown[flipped]["usable"] is False
        assert "failed verification" in shown[flipped]["problem"]
        assert_clean_error(rig.run("rollback", "db", "mysql", flipped, "--yes"), 5, flipped)
    finally:
        shutil.rmtree(rig.backups / flipped, ignore_errors=True)


# --------------------------------------------------------------------------- soak: every step


def soak_only(request: pytest.FixtureRequest) -> None:
    """pyproject deselects soak tests (`-m 'not soak'`); this keeps them out of a run
    selected by another marker expression too."""
    if "soak" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("every-step signal sweep: run with `-m soak`")


SWEEPS = {
    "db-mysql": ["mysql"], "db-redis": ["redis"], "db-mongodb": ["mongodb"],
    "db-postgresql": ["postgresql"],
    "emergency": list(ENGINES), "deploy": list(ENGINES),
}


def sweep_command(rig: Rig, name: str, cp: dict[str, Any] | None, bad: str | None) -> list[str]:
    if name.startswith("db-"):
        assert cp is not None
        return ["rollback", "db", name[3:], cp["set_id"], "--yes"]
    if name == "emergency":
        assert cp is not None
        return ["rollback", "emergency", f"cp{cp['checkpoint_id']}", "--with-data", "--yes"]
    assert bad is not None
    return ["deploy", bad, "--watch", "0", "--migration"]


def whole(rig: Rig, writer: AckWriter, databases: list[str], *, started: float,
          finished: float, label: str) -> dict[str, str]:
    """Data whole after an interrupt: per database, as `backout status` tells it, either
    everything acknowledged is live (not restored, or put back), or the restore's proof
    holds (restored from the checkpoint, the rest in the safety backup)."""
    state = rig.json("status")["last_operation"]["state"]
    plan = last_plan(rig.project)
    safety = safety_sets_of(plan)
    params = plan["params"]
    checkpoint = params["backup"] if plan["kind"] == "rollback.db" else params["set_id"]
    told = {}
    for database in databases:
        line = next(x for x in state["data"] if x.startswith(f"{database}:"))
        told[database] = line
        assert "HALF" not in line, (label, line)
        if "restored from" in line:
            prove_restored(rig, writer, database, checkpoint, safety[database],
                           started=started, finished=finished)
        else:
            assert writer.tokens() <= live_tokens(rig.stack, database), (label, line)
    return told


# The deploy's main-path steps after `up --wait` (see test_signal_at_every_step).
AFTER_UP = ("deploy.record", "deploy.verify", "deploy.watch")


@pytest.mark.soak
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("name", list(SWEEPS))
def test_signal_at_every_step(request: pytest.FixtureRequest, rig: Rig, name: str,
                              sig: int) -> None:
    """SIGINT to the process group at every journaled step (held there 2 s): the
    command winds down by itself, writers running and data whole, no resume. SIGKILL
    at every step (as it starts, and as it ends): `backout resume` reaches an end
    state that is whole and has every acknowledged write."""
    soak_only(request)
    databases = SWEEPS[name]
    cp = rig.checkpoint() if name != "deploy" else None
    bad = branch_with(rig.stack, f"sweep-{name}-{signal.Signals(sig).name}", "crashloop") \
        if name == "deploy" else None
    dry = rig.json(*[a for a in sweep_command(rig, name, cp, bad) if a != "--yes"], "--dry-run")
    # The deploy's steps between `up` and the rollback run only when the crash-looping
    # release passes `up --wait`, which it does or not by timing: those points are swept
    # on a release that changes no image, which runs them every time.
    # Each such point gets a commit of its own on top of what runs, so it is a real
    # deploy (another commit; the previous release the one before) every time.
    sig_name = signal.Signals(sig).name
    if name == "deploy":
        notes = branch_with_notes(rig.stack, f"sweep-notes-{sig_name}-plan")
        also = rig.json("deploy", notes, "--watch", "0", "--migration", "--dry-run")
        assert [s["action"] for s in also["plan"]["steps"]] == \
            [s["action"] for s in dry["plan"]["steps"]]
    # SIGKILL also as a step ends (journaled done, the next not started), except in
    # the deploy's long plan where the next step's start is the same point.
    ends = ("started", "done") if sig == signal.SIGKILL and name != "deploy" else ("started",)
    # a subset, when debugging: step indexes or actions, e.g. "3,7" or "deploy.watch"
    only = (os.environ.get("BACKOUT_SWEEP_STEPS") or "").split(",")
    points = [(i, when) for i, s in enumerate(dry["plan"]["steps"]) for when in ends
              if only == [""] or str(i) in only or s["action"] in only]
    outcomes: dict[str, int] = {}
    for step, when in points:
        label = f"{name} {signal.Signals(sig).name} at step {step} ({when})"
        for attempt in range(3):
            with AckWriter(rig.stack) as writer:
                writer.wait_for(3)
                started = time.time()
                since = last_operation_id(rig.project)
                command = sweep_command(rig, name, cp, bad)
                action = dry["plan"]["steps"][step]["action"]
                if name == "deploy" and action in AFTER_UP:
                    notes = branch_with_notes(rig.stack, f"sweep-notes-{sig_name}-{step}-{attempt}")
                    assert notes != rig.stack.head()
                    # a watch long enough to be interrupted inside (the plan's steps
                    # are the same whatever its length)
                    command = ["deploy", notes, "--watch",
                               "5" if action == "deploy.watch" else "0", "--migration"]
                result = run_signalled(rig.project, command,
                                       step=step, sig=sig, when=when, hold=2.0)
                assert "Traceback" not in result.stderr, (label, result.stderr[-3000:])
                # A point must have been reached: the signal went out in it (SIGINT: the
                # deploy's sweep proves it too; the other sweeps' plans do not branch)
                reached = (sig != signal.SIGKILL and name != "deploy") or \
                    result.returncode in (-9, 137) or \
                    journal_step_started(rig.project, step, since)
                if not reached:
                    # Only the deploy's path varies: its crash-looping release fails
                    # `up --wait` on some runs instead of the verify after it (timing),
                    # and a rollback step may then not be planned to run; it must still
                    # be rolled back.
                    assert name == "deploy" and result.returncode == 8, (
                        label, "not reached", result.returncode, result.stderr[-3000:])
                elif sig == signal.SIGKILL:
                    assert result.returncode in (-9, 137), (label, result.returncode)
                    result = rig.run("resume")
                if result.returncode not in (0, 8, 130):
                    # The whole story, not pytest's shortened assertion: what each step did.
                    print(label, result.returncode, result.stdout, result.stderr,
                          rig.run("history", "--limit", "1", "--json").stdout, sep="\n")
                assert result.returncode in (0, 8, 130), (label, result.returncode,
                                                          result.stderr[-3000:])
                outcomes[f"{step}-{when}"] = result.returncode
                finished = time.time()
                assert rig.unfinished() == [], label
                rig.wait_apps_up()
                writer.wait_for(5)
            # every run is proven whole, the unreached ones too, against its own plan
            whole(rig, writer, databases, started=started, finished=finished, label=label)
            if reached:
                break
            print(f"{label}: not reached (the release failed at `up` this time), again")
        else:
            pytest.fail(f"{label}: not reached in 3 runs")
    print(f"{name} {signal.Signals(sig).name}: {len(points)} points, exit codes {outcomes}")


@pytest.mark.soak
def test_ctrl_c_during_a_500mb_mysql_restore(request: pytest.FixtureRequest, rig: Rig) -> None:
    """The acceptance case: 500 MB in MySQL, Ctrl-C in the middle of loading it. The
    command returns with exit 130, the writers running, the data exactly as before the
    restore (its safety backup put back), and names the next step."""
    soak_only(request)
    stack = rig.stack
    stack.up("mysql")  # whatever an earlier sweep in this module left behind
    stack.mysql_query("CREATE TABLE big (id INT NOT NULL PRIMARY KEY, payload TEXT NOT NULL)"
                      " ENGINE=InnoDB", timeout=120)
    for part in range(5):  # 5 x 100k rows of 1 KiB: about 500 MB of dump
        stack.mysql_query(f"INSERT INTO big SELECT seq, REPEAT(MD5(seq), 32) FROM "
                          f"seq_{part * 100_000 + 1}_to_{(part + 1) * 100_000}", timeout=900)
    try:
        t0 = time.monotonic()
        cp = rig.checkpoint()
        took_cp = time.monotonic() - t0
        raw = json.loads((rig.backups / cp["set_id"] / "manifest.json").read_text())[
            "artifacts"]["mysql.sql.zst"]["raw_bytes"]
        stack.mysql_query("DELETE FROM big WHERE id % 10 = 0; UPDATE customers SET email ="
                          " 'changed@example.test' WHERE id = 1", timeout=300)
        checksum = stack.mysql_query("CHECKSUM TABLE big, customers, items", timeout=600)
        steps = steps_of(rig.json("rollback", "db", "mysql", cp["set_id"], "--dry-run"))
        restore = index_of(steps, "rollback.db.restore")
        with AckWriter(rig.stack) as writer:
            writer.wait_for(3)
            t1 = time.monotonic()
            # Ctrl-C 4 s into the restore step: past its data-loss count and the DROP
            # DATABASE, in the middle of loading the rows.
            result = run_signalled(rig.project, ["rollback", "db", "mysql", cp["set_id"], "--yes"],
                                   step=restore, sig=signal.SIGINT, hold=0, delay=4,
                                   timeout=3600)
            took = time.monotonic() - t1
            assert result.returncode == 130, (result.returncode, result.stderr[-3000:])
            line = [x for x in result.stderr.splitlines() if x.startswith("backout: error:")][-1]
            for needle in ("interrupted by SIGINT", "mysql: as before the restore",
                           "running again", "to try again"):
                assert needle in line, (needle, line)
            assert rig.unfinished() == []
            assert all(rig.running().get(s) == "running" for s in APPS)
            rig.wait_apps_up()
            writer.wait_for(5)
        assert stack.mysql_query("CHECKSUM TABLE big, customers, items",
                                 timeout=600)[:2] == checksum[:2]
        assert writer.tokens() <= live_tokens(stack, "mysql")
        steps = {r[0]: r for r in journal_steps(rig.project)}
        assert steps["restore mysql"][1] == "failed", steps  # cut short, not finished
        assert steps["put mysql's safety backup back if a restore failed"][1] == "done"
        print(f"500 MB case: dump {raw / 1e6:.0f} MB raw, checkpoint {took_cp:.0f}s, "
              f"rollback with Ctrl-C 4 s into the restore returned after {took:.0f}s; "
              f"steps: {steps}")
    finally:
        stack.mysql_query("DROP TABLE IF EXISTS big", timeout=300)
