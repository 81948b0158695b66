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

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_clean_error, backout, ok, ok_json
from tests.support.dockerproxy import FreezingProxy
from tests.support.integrity import (
    AckWriter,
    check_window,
    index_of,
    live_tokens,
    prove,
    redis_overwritten,
    run_signalled,
    steps_of,
    tokens_in_artifact,
)
from tests.support.stack import TestStack, wait_for

pytestmark = pytest.mark.docker

ENGINES = ("mysql", "redis", "mongodb")
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
        out = {}
        for step in result["plan"]["steps"]:
            inner = step["params"] if step["action"] != "deploy.rollback_step" else \
                step["params"]["params"]
            action = step["action"] if step["action"] != "deploy.rollback_step" else \
                step["params"]["action"]
            if action == "rollback.db.safety":
                out[inner["database"]] = inner["set_id"]
        return out

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


@pytest.mark.parametrize("database", ENGINES)
def test_rollback_db_under_live_writes_loses_no_acknowledged_write(rig: Rig,
                                                                   database: str) -> None:
    with AckWriter(rig.stack) as writer:
        writer.wait_for(5)
        cp = rig.checkpoint()
        writer.wait_for(20)
        dry = rig.json("rollback", "db", database, cp["set_id"], "--dry-run")
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
