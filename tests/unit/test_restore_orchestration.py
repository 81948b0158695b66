"""The orchestration of every data-changing plan, in-process with fake actions on a
real journal: what runs in which order, what runs after a failure or an interrupt,
what a restore refuses to do, and what the deploy reports. These are the properties
a mutation of the plans must not get past (issue 10): writers stopped before the
safety backup and restarted whatever happens, the restored counts and the backup's
sha256 compared, a deploy rolled back only when its rollback verified."""

from __future__ import annotations

import dataclasses
import importlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config, DatabaseConfig, ServiceConfig
from backout.deploy import Preflight, plan_deploy
from backout.deploy.watch import RedDuringWatch
from backout.engines.formats import MySQLDumpChecker
from backout.environment import Environment
from backout.errors import DockerUnavailableError, ExternalError, InterruptedOperation
from backout.operations import executor as executor_mod
from backout.operations import interrupt, summary
from backout.operations.executor import Executor, RunContext, load_actions, load_plan
from backout.operations.plan import Plan
from backout.rollback import db as db_rollback
from backout.state import Store
from backout.storage import sets
from backout.storage.pipeline import IntegrityError, Stall, StalledError, scan
from tests.support.fakes import FakePlatform, run_context

DUMP = b"""-- MariaDB dump 10.19
USE `app`;
CREATE TABLE `items` (
  `id` int NOT NULL
);
INSERT INTO `items` VALUES (1),(2),(3);
-- Dump completed on 2026-12-01 10:00:00
"""


def make_config(tmp: Path, databases: tuple[str, ...] = ("mysql",)) -> Config:
    types = {"mysql": "mysql", "redis": "redis", "mongodb": "mongodb"}
    return Config(
        path=tmp / "backout.toml", project_dir=tmp,
        services={"web": ServiceConfig("web", writes_to=databases),
                  "worker": ServiceConfig("worker", writes_to=databases[:1]),
                  "nginx": ServiceConfig("nginx", kind="proxy")},
        databases={d: DatabaseConfig(d, types[d], d) for d in databases})


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True,
                          timeout=30).stdout


def make_set(config: Config, set_id: str | None = None, dump: bytes = DUMP) -> str:
    """A published backup set holding one MySQL artifact, as backout writes one."""
    set_id = set_id or sets.new_set_id()
    writer = sets.SetWriter(config.backup_dir, set_id).open()
    path = writer.dir / "mysql.sql.zst"
    path.write_bytes(zstd(dump))
    scanned = scan(Environment(), path, MySQLDumpChecker(["app"], "t"), what="t")
    section = {"type": "mysql", "service": "mysql", "databases": scanned.checks["databases"],
               "artifacts": ["mysql.sql.zst"], "binlog": None, "duration_s": 2.0}
    writer.publish({"format": sets.FORMAT, "format_version": sets.FORMAT_VERSION, "id": set_id,
                    "kind": "checkpoint", "created_at": "2026-12-01T10:00:00Z",
                    "completed_at": "2026-12-01T10:00:02Z", "databases": {"mysql": section},
                    "artifacts": {"mysql.sql.zst": {"sha256": scanned.sha256,
                                                     "bytes": scanned.bytes,
                                                     "database": "mysql"}}})
    return set_id


class Fakes:
    """Fake actions under the real names; ``calls`` is what ran, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        load_actions()
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.monkeypatch = monkeypatch

    def fake(self, action: str, result: Any = None) -> None:
        def run(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
            name = f"{action}:{params.get('database', '')}".rstrip(":")
            self.calls.append(name)
            if name in self.fail:
                raise self.fail[name]
            return result(params, results) if callable(result) else (result or {"ok": True})

        self.monkeypatch.setitem(executor_mod._ACTIONS, action, run)

    def data_actions(self) -> None:
        self.fake("rollback.db.verify", lambda p, r: {"section": p.get("section"),
                                                      "artifact": p.get("artifact")})
        self.fake("compose.stop", lambda p, r: {"stopped": p["services"], "stopped_at": 0})
        self.fake("rollback.db.safety", lambda p, r: {"set_id": p["set_id"]})
        self.fake("rollback.db.restore", lambda p, r: {"counts": {}, "data_loss": {}})
        self.fake("rollback.db.undo", lambda p, r: {"undone": "rollback.db.restore:" +
                                                    p["database"] in self.fail})
        self.fake("compose.start", lambda p, r: {"started": p["services"]})


def run(store: Store, plan: Plan, config: Config | None = None) -> Any:
    ex = Executor(store, run_context(store, config))
    return ex.run(plan, ex.start(plan))


# --------------------------------------------------------------------------- rollback db


def db_plan(tmp: Path, **kw: Any) -> tuple[Config, Store, Plan]:
    config = make_config(tmp)
    store = Store(config.state_dir)
    set_id = make_set(config)
    return config, store, db_rollback.plan(Environment(), config, store, "mysql", set_id, **kw)


def test_rollback_db_plan_stops_writers_before_the_safety_backup(tmp_path: Path) -> None:
    _config, _store, plan = db_plan(tmp_path)
    actions = [s.action for s in plan.steps]
    assert actions == ["rollback.db.verify", "compose.stop", "rollback.db.safety",
                       "rollback.db.restore", "rollback.db.undo", "compose.start"]
    by_action = {s.action: s for s in plan.steps}
    assert by_action["compose.stop"].params["services"] == ["web", "worker"]
    assert by_action["rollback.db.undo"].always and by_action["compose.start"].always
    assert not any(s.always for s in plan.steps[:4])
    restore = by_action["rollback.db.restore"].params
    assert restore["requires"] == ["verify:mysql", "stop-writers", "safety:mysql"]
    assert [s.key for s in plan.steps if s.key in restore["requires"]] == restore["requires"]
    assert by_action["compose.start"].params["stop_step"] == "stop-writers"
    assert by_action["compose.stop"].key == "stop-writers"
    assert "safety" in plan.downtime and "every acknowledged write" in plan.downtime


@pytest.mark.parametrize("failing", ["rollback.db.safety:mysql", "rollback.db.restore:mysql",
                                     "compose.stop"])
def test_a_failure_anywhere_still_restarts_the_writers(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       failing: str) -> None:
    _config, store, plan = db_plan(tmp_path)
    fakes = Fakes(monkeypatch)
    fakes.data_actions()
    fakes.fail[failing] = ExternalError("boom")
    outcome = run(store, plan)
    assert outcome.status == "failed"
    assert fakes.calls[-2:] == ["rollback.db.undo:mysql", "compose.start"]
    done = fakes.calls[:fakes.calls.index(failing) + 1]
    expected = ["rollback.db.verify:mysql", "compose.stop", "rollback.db.safety:mysql",
                "rollback.db.restore:mysql"]
    assert done == expected[:len(done)]


def test_the_writers_run_in_the_order_integrity_needs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _config, store, plan = db_plan(tmp_path)
    fakes = Fakes(monkeypatch)
    fakes.data_actions()
    assert run(store, plan).status == "succeeded"
    assert fakes.calls == ["rollback.db.verify:mysql", "compose.stop", "rollback.db.safety:mysql",
                           "rollback.db.restore:mysql", "rollback.db.undo:mysql",
                           "compose.start"]


def test_no_safety_backup_plan_says_so_and_has_no_undo(tmp_path: Path) -> None:
    _config, _store, plan = db_plan(tmp_path, no_safety_backup=True)
    actions = [s.action for s in plan.steps]
    assert "rollback.db.safety" not in actions and "rollback.db.undo" not in actions
    assert "WITHOUT a safety backup" in plan.summary
    restore = next(s for s in plan.steps if s.action == "rollback.db.restore")
    assert restore.params["no_safety"] is True
    assert actions.index("compose.stop") < actions.index("rollback.db.restore")


# --------------------------------------------------------------------------- the actions


def ctx_for(config: Config, store: Store, op_id: int = 1) -> RunContext:
    return dataclasses.replace(run_context(store, config), operation_id=op_id)


def test_verify_compares_the_sha256_before_a_restore(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = Store(config.state_dir)
    target = db_rollback.resolve_backup(Environment(), config, store,
                                        config.databases["mysql"], make_set(config))
    verify = executor_mod.action("rollback.db.verify")
    assert verify(ctx_for(config, store), {"database": "mysql", **target}, {})["section"]
    # A valid artifact of the same format whose bytes are not the ones recorded.
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        verify(ctx_for(config, store), {"database": "mysql", **target,
                                        "sha256": "0" * 64}, {})
    # Counts in the manifest that the artifact does not have: refused too.
    section = json.loads(json.dumps(target["section"]))
    section["databases"]["app"]["tables"]["items"] = 4
    with pytest.raises(IntegrityError, match="counts"):
        verify(ctx_for(config, store), {"database": "mysql", **target, "section": section}, {})


COUNTED = {  # engine -> (its manifest section, the restore function)
    "mysql": ({"type": "mysql", "databases": {"app": {"tables": {"items": 3}}}}, "restore_mysql"),
    "redis": ({"type": "redis", "keys": {"db0": 3}}, "restore_redis"),
    "mongodb": ({"type": "mongodb", "databases": {"app": {"collections": {"items": 3}}}},
                "restore_mongodb"),
}


@pytest.mark.parametrize(("engine", "restored", "ok"), [
    ("mysql", {"app": {"items": 3}}, True), ("mysql", {"app": {"items": 2}}, False),
    ("mysql", {"app": {}}, False),
    ("redis", {"db0": 3}, True), ("redis", {"db0": 2}, False),
    ("redis", {}, False),
    ("mongodb", {"app": {"items": 3}}, True), ("mongodb", {"app": {"items": 4}}, False),
    ("mongodb", {"app": {}}, False)])
def test_restored_counts_are_compared_with_the_backups(monkeypatch: pytest.MonkeyPatch,
                                                       engine: str, restored: dict[str, Any],
                                                       ok: bool) -> None:
    section, function = COUNTED[engine]
    access = type("A", (), {"db": DatabaseConfig(engine, engine, engine)})()
    monkeypatch.setattr(importlib.import_module(f"backout.engines.{engine}"), function,
                        lambda *a: {"counts": restored})
    if ok:
        assert db_rollback._restore(Environment(), access, Path("x"), section)  # type: ignore[arg-type]
    else:
        with pytest.raises(IntegrityError, match="restored counts differ"):
            db_rollback._restore(Environment(), access, Path("x"), section)  # type: ignore[arg-type]


def test_a_restore_never_runs_without_what_it_requires(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    store = Store(config.state_dir)
    called: list[str] = []
    monkeypatch.setattr(db_rollback, "_restore", lambda *a: called.append("restore") or {})
    restore = executor_mod.action("rollback.db.restore")
    params = {"database": "mysql", "requires": ["verify:mysql", "safety:mysql"],
              "verify_step": "verify:mysql", "source": "t"}
    assert "skipped" in restore(ctx_for(config, store), params,
                                {"verify:mysql": {"section": None, "artifact": "x"}})
    assert "skipped" in restore(ctx_for(config, store), params,
                                {"verify:mysql": {"section": None, "artifact": "x"},
                                 "safety:mysql": {"skipped": "not with data"}})
    assert called == []


@pytest.mark.parametrize(("started", "done", "failed", "undone"), [
    (False, False, None, False),  # never started: nothing to put back
    (True, True, None, False),  # restored fine: keep it
    (True, False, "mysql", True),  # failed midway: back to the safety backup
    (True, False, None, True),  # started, never finished (an interrupt): back
    (True, True, "redis", True),  # restored, but another database's restore failed
])
def test_undo_puts_the_safety_backup_back_exactly_when_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: bool, done: bool,
        failed: str | None, undone: bool) -> None:
    config = make_config(tmp_path)
    store = Store(config.state_dir)
    safety = make_set(config)
    if started:
        store.set_fact("op1.restore_started.mysql", True)
    if failed:
        store.set_fact("op1.restore_failed", failed)
    put_back: list[str] = []
    monkeypatch.setattr(db_rollback, "_restore", lambda env, access, artifact, section:
                        put_back.append(artifact.name))
    results = {"restore:mysql": {"counts": {}}} if done else {}
    out = executor_mod.action("rollback.db.undo")(
        ctx_for(config, store), {"database": "mysql", "set_id": safety}, results)
    assert out["undone"] is undone
    assert put_back == (["mysql.sql.zst"] if undone else [])


def test_undo_with_the_engine_gone_is_left_for_resume(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    store = Store(config.state_dir)
    store.set_fact("op1.restore_started.mysql", True)

    platform = FakePlatform(config.project_dir)
    platform.fail_on("ping", DockerUnavailableError("Docker Engine does not answer"))
    ctx = dataclasses.replace(run_context(store, config, platform), operation_id=1)
    with pytest.raises(DockerUnavailableError) as info:
        executor_mod.action("rollback.db.undo")(ctx, {"database": "mysql", "set_id": "x"}, {})
    assert platform.calls == [("ping",)]
    assert info.value.retry_on_resume


# --------------------------------------------------------------------------- interrupts


def test_an_interrupt_skips_the_rest_and_runs_the_cleanup(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _config, store, plan = db_plan(tmp_path)
    fakes = Fakes(monkeypatch)
    fakes.data_actions()

    def safety(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
        fakes.calls.append("rollback.db.safety:mysql")
        assert interrupt.current().abortable  # a normal step may be cut short
        interrupt.current().request("SIGINT")  # Ctrl-C while it runs; it finishes
        return {"set_id": params["set_id"]}

    def start(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
        fakes.calls.append("compose.start")
        assert not interrupt.current().abortable  # cleanup is never cut short
        return {"started": params["services"]}

    monkeypatch.setitem(executor_mod._ACTIONS, "rollback.db.safety", safety)
    monkeypatch.setitem(executor_mod._ACTIONS, "compose.start", start)
    interrupt.reset()
    outcome = run(store, plan)
    assert outcome.status == "interrupted" and outcome.signal == "SIGINT"
    assert fakes.calls == ["rollback.db.verify:mysql", "compose.stop", "rollback.db.safety:mysql",
                           "rollback.db.undo:mysql", "compose.start"]
    assert outcome.failed_step == "restore mysql"
    assert store.unfinished_operations() == []
    state = summary.describe(store, outcome.operation_id)
    assert state["data"] == ["mysql: unchanged (not restored)"]
    assert state["services"] == ["web, worker: running again"]
    assert state["next"].startswith("backout rollback db mysql ")
    interrupt.reset()


def test_an_interrupted_child_is_stopped_and_the_step_fails_as_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _config, store, plan = db_plan(tmp_path)
    fakes = Fakes(monkeypatch)
    fakes.data_actions()
    children: list[subprocess.Popen[bytes]] = []

    def restore(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        children.append(child)
        interrupt.current().request("SIGTERM")
        return interrupt.current().wait(child, 30, "restore mysql")

    monkeypatch.setitem(executor_mod._ACTIONS, "rollback.db.restore", restore)
    interrupt.reset()
    start = time.monotonic()
    outcome = run(store, plan)
    assert time.monotonic() - start < 10
    assert children[0].returncode is not None  # the child was stopped, not waited out
    assert outcome.status == "interrupted" and isinstance(outcome.error, InterruptedOperation)
    assert fakes.calls[-2:] == ["rollback.db.undo:mysql", "compose.start"]
    interrupt.reset()


def test_a_cleanup_the_engine_cannot_run_is_left_for_resume(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _config, store, plan = db_plan(tmp_path)
    fakes = Fakes(monkeypatch)
    fakes.data_actions()
    fakes.fail["rollback.db.restore:mysql"] = ExternalError("stalled")
    fakes.fail["rollback.db.undo:mysql"] = DockerUnavailableError("engine gone")
    outcome = run(store, plan)
    assert outcome.status == "unfinished" and outcome.deferred_step.startswith("put mysql")
    assert fakes.calls[-1] == "rollback.db.undo:mysql"  # start writers left pending too
    [op] = store.unfinished_operations()
    state = summary.describe(store, op["id"])
    assert state["data"][0].startswith("mysql: MAY BE HALF-RESTORED")
    assert state["services"] == ["web, worker: STOPPED (started again by `backout resume`)"]
    assert state["next"] == "backout resume"
    # The engine answers again: resume runs the cleanup, the operation ends failed.
    del fakes.fail["rollback.db.undo:mysql"]
    fakes.calls.clear()
    again = Executor(store, run_context(store)).run(load_plan(store, op["id"]), op["id"])
    assert fakes.calls == ["rollback.db.undo:mysql", "compose.start"]
    assert again.status == "failed" and store.unfinished_operations() == []


def test_interrupt_wait_stops_a_child_only_when_the_step_may_be_cut_short() -> None:
    intr = interrupt.reset()
    intr.enter((1, "t"), "a cleanup step", abortable=False)
    intr.request("SIGINT")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert intr.wait(child, 30, "cleanup") == 0  # waited out: cleanup is never cut
    intr.enter((1, "t"), "restore", abortable=True)
    child = subprocess.Popen(["sleep", "60"])
    with pytest.raises(InterruptedOperation, match="stopped by SIGINT"):
        intr.wait(child, 30, "restore")
    assert child.returncode == -signal.SIGKILL
    interrupt.reset()


def test_a_stream_that_stops_moving_is_reported_stalled() -> None:
    child = subprocess.Popen(["sleep", "60"])
    stall = Stall(0.5, lambda: 42, "restore mysql", child.kill)
    start = time.monotonic()
    with pytest.raises(StalledError, match="no data moved"):
        interrupt.reset().wait(child, 30, "restore mysql", tick=stall)
    assert time.monotonic() - start < 5 and child.wait(5) == -signal.SIGKILL
    moving = iter(range(10**9))
    Stall(0.01, lambda: next(moving), "x", child.kill)()  # progress: never stalled


# --------------------------------------------------------------------------- the deploy


def _pf() -> Preflight:
    return Preflight(ref="v3", commit="c" * 40, head="a" * 40, dirty=False,
                     running={"web": "sha256:1"})


def test_deploy_rollback_plan_order(tmp_path: Path) -> None:
    plan = plan_deploy(make_config(tmp_path, ("mysql", "redis")), _pf(), watch_seconds=60,
                       with_data=True)
    names = [s.name for s in plan.steps]
    tail = names[names.index("decide the rollback"):]
    order = ["verify mysql backup", "verify redis backup", "stop writers: web, worker",
             "safety backup of mysql", "safety backup of redis", "restore mysql",
             "restore redis", "put mysql's safety backup back if a restore failed",
             f"roll back: code to {'a' * 12}", "roll back: start the previous release",
             "start writers: web, worker", "roll back: verify", "record the outcome"]
    assert [n for n in tail if n in order] == order


def deploy_fakes(fakes: Fakes, config: Config, plan: Plan) -> None:
    make_set(config, plan.params["set_id"])
    for action in ("backup.cleanup", "backup.dump", "backup.publish", "backup.discard",
                   "emergency.checkout", "deploy.build", "deploy.up", "deploy.verify",
                   "emergency.images", "emergency.up", "emergency.verify"):
        fakes.fake(action)
    fakes.fake("deploy.previous", {"release_id": 1, "images": {"web": "sha256:1"}})
    fakes.fake("backup.record_checkpoint", {"checkpoint_id": 1, "release_id": 1})
    fakes.fake("deploy.record", {"release_id": 2})
    fakes.fake("deploy.decide", {"needed": True, "with_data": True, "reason": "RED",
                                 "to_release": 1})
    fakes.fail["deploy.watch"] = RedDuringWatch("RED after 10s")
    fakes.fake("deploy.watch")
    fakes.data_actions()


def run_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               fail: dict[str, BaseException], real_restore: bool = False
               ) -> tuple[Any, Fakes, Store]:
    config = make_config(tmp_path)
    store = Store(config.state_dir)
    plan = plan_deploy(config, _pf(), watch_seconds=60, with_data=True)
    fakes = Fakes(monkeypatch)
    deploy_fakes(fakes, config, plan)
    fakes.fail.update(fail)
    if real_restore:  # its own guard: never without verify, stopped writers, safety backup
        monkeypatch.setitem(executor_mod._ACTIONS, "rollback.db.restore",
                            db_rollback._restore_action)
    outcome = run(store, plan, config)
    return outcome, fakes, store


def test_deploy_rolled_back_with_data_reports_rolled_back(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, fakes, _store = run_deploy(tmp_path, monkeypatch, {})
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"
    rollback = fakes.calls[fakes.calls.index("deploy.decide"):]
    assert rollback == ["deploy.decide", "rollback.db.verify:mysql", "compose.stop",
                        "rollback.db.safety:mysql", "rollback.db.restore:mysql",
                        "rollback.db.undo:mysql", "emergency.checkout", "emergency.images",
                        "emergency.up", "compose.start", "emergency.verify"]


def test_deploy_whose_rollback_did_not_verify_is_not_rolled_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, _fakes, store = run_deploy(
        tmp_path, monkeypatch, {"emergency.verify": ExternalError("verification failed")})
    assert outcome.results["deploy:outcome"]["outcome"] == "needs_human"
    assert "deploy.needs_human" in [e["action"] for e in store.events(5)]


def test_deploy_whose_data_could_not_be_restored_restarts_writers_and_calls_a_human(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, fakes, _store = run_deploy(
        tmp_path, monkeypatch, {"rollback.db.safety:mysql": ExternalError("disk full")},
        real_restore=True)
    assert outcome.results["deploy:outcome"]["outcome"] == "needs_human"
    assert "rollback.db.restore:mysql" not in fakes.calls  # the real action refuses too
    # The previous release is not started on data that was not restored; the writers
    # of what ran (stopped for the safety backup) are started again.
    rollback = fakes.calls[fakes.calls.index("deploy.decide"):]
    assert "emergency.up" not in rollback and "emergency.checkout" not in rollback
    assert rollback[-1] == "compose.start"
    skipped = outcome.results["rollback:up"]["skipped"]
    assert "could not be restored" in skipped


# --------------------------------------------------------------------------- emergency --with-data


def test_emergency_with_data_restores_before_touching_code_and_restarts_writers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backout.rollback import emergency

    config = make_config(tmp_path, ("mysql",))
    env = Environment(project_dir=tmp_path)
    for args in (["init", "-q"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                                  "--allow-empty", "-m", "one"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.strip()
    store = Store(config.state_dir)
    release = store.add_release(git_commit=head, git_dirty=False, diff_path=None,
                                compose_config={}, services={})
    set_id = make_set(config)
    store.db.execute("INSERT INTO checkpoints (created_at, created_by, release_id, path, status)"
                     " VALUES ('t', 't', ?, ?, 'complete')", (release, set_id))
    monkeypatch.setattr(emergency.data_loss, "window", lambda *a, **k: {"summary": "s"})
    plan = emergency.plan(env, config, store, FakePlatform(tmp_path, definition={}), "cp1", True)
    actions = [s.action for s in plan.steps]
    assert actions == ["emergency.save_changes", "rollback.db.verify", "compose.stop",
                       "rollback.db.safety", "rollback.db.restore", "rollback.db.undo",
                       "emergency.checkout", "emergency.images", "emergency.up",
                       "compose.start", "emergency.verify"]
    assert [s.action for s in plan.steps if s.always] == ["rollback.db.undo", "compose.start"]
    # A failed restore: the code is not switched, the safety backup goes back, the
    # writers run again.
    fakes = Fakes(monkeypatch)
    fakes.data_actions()
    for action in ("emergency.save_changes", "emergency.checkout", "emergency.images",
                   "emergency.up", "emergency.verify"):
        fakes.fake(action)
    fakes.fail["rollback.db.restore:mysql"] = ExternalError("boom")
    outcome = run(store, plan)
    assert outcome.status == "failed"
    assert fakes.calls[fakes.calls.index("rollback.db.restore:mysql"):] == [
        "rollback.db.restore:mysql", "rollback.db.undo:mysql", "compose.start"]


# --------------------------------------------------------------------------- the Redis file swap


@pytest.mark.parametrize("mode", ["multipart", "none"])
def test_redis_files_are_swapped_only_when_the_whole_rdb_arrived(tmp_path: Path,
                                                                 mode: str) -> None:
    """The script the one-off container runs, here under the local sh: a stream cut
    short (an interrupt, a stalled engine) leaves the data directory as it was."""
    from backout.engines.redis import PUT_RDB_SCRIPT

    data = tmp_path / "data"
    (data / "appendonlydir").mkdir(parents=True)
    (data / "appendonlydir" / "appendonly.aof.1.base.rdb").write_bytes(b"old aof")
    (data / "dump.rdb").write_bytes(b"old rdb")
    before = sorted(p.name for p in data.rglob("*"))
    rdb = b"REDIS0011" + b"x" * 1000

    def swap(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["sh", "-c", PUT_RDB_SCRIPT, "sh", str(data), "dump.rdb", "S1",
                               mode, "appendonlydir", "appendonly.aof", str(len(rdb))],
                              input=stdin, capture_output=True, timeout=30, check=False)

    cut = swap(rdb[:500])
    assert cut.returncode == 3 and b"incomplete RDB: 500 of 1009" in cut.stderr
    assert sorted(p.name for p in data.rglob("*")) == before  # nothing moved, nothing left
    assert (data / "dump.rdb").read_bytes() == b"old rdb"
    if mode == "multipart":  # what a kill in the middle of the preparation leaves
        (data / ".appendonlydir.backout-new").mkdir()
        (data / ".appendonlydir.backout-new" / "half").write_bytes(b"x")
    whole = swap(rdb)
    assert whole.returncode == 0, whole.stderr
    assert (data / "dump.rdb").read_bytes() == rdb
    assert not [p for p in data.iterdir() if ".backout-new" in p.name or "incoming" in p.name]
    if mode == "multipart":
        aof = data / "appendonlydir"
        assert sorted(x.name for x in aof.iterdir()) == ["appendonly.aof.1.base.rdb",
                                                          "appendonly.aof.manifest"]
        assert (aof / "appendonly.aof.1.base.rdb").read_bytes() == rdb
        assert (aof / "appendonly.aof.manifest").read_text() == \
            "file appendonly.aof.1.base.rdb seq 1 type b\n"
        assert (data / "appendonlydir.backout-aside-S1" / "appendonly.aof.1.base.rdb"
                ).read_bytes() == b"old aof"
