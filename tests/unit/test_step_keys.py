"""Steps are joined by stable keys, never by their prose names, and journals written
before keys existed still resume.

The journals in tests/data/journals were written by backout before step keys (see
generate.py there): a quiesced checkpoint, a database restore and a deploy's
rollback, each killed inside a step. They are resumed here by today's executor with
the real actions that join steps (starting what a stop stopped, the restore's
guard, the deploy's rollback and outcome) and stand-ins for the ones that need
Docker."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from backout.backup.operation import plan_backup
from backout.config.model import Config, DatabaseConfig, ServiceConfig, VolumeConfig
from backout.deploy import Preflight, plan_deploy
from backout.operations import executor as executor_mod
from backout.operations import summary
from backout.operations.executor import Executor, RunContext, load_actions, load_plan
from backout.operations.plan import Plan, legacy_key
from backout.rollback import db as db_rollback
from backout.state import Store
from tests.support.fakes import FakePlatform, run_context

JOURNALS = Path(__file__).resolve().parents[1] / "data" / "journals"
KEY = re.compile(r"^[a-z][a-z0-9-]*(:[A-Za-z0-9_.-]+)?$")


def make_config(tmp: Path, volumes: bool = True) -> Config:
    """The configuration the old journals were written with (generate.py)."""
    return Config(
        path=tmp / "backout.toml", project_dir=tmp,
        services={"web": ServiceConfig("web", writes_to=("mysql", "redis")),
                  "worker": ServiceConfig("worker", writes_to=("mysql",)),
                  **({"backend": ServiceConfig("backend")} if volumes else {})},
        databases={"mysql": DatabaseConfig("mysql", "mysql", "mysql"),
                   **({"redis": DatabaseConfig("redis", "redis", "redis")} if volumes else {})},
        volumes={"uploads": VolumeConfig("uploads", "uploads", "backend", stop_service=True)}
        if volumes else {})


def _pf() -> Preflight:
    return Preflight(ref="v3", commit="c" * 40, head="a" * 40, dirty=False,
                     running={"web": "sha256:1"})


def todays_plans(tmp: Path) -> dict[str, Plan]:
    cfg = make_config(tmp)
    targets = {"mysql": {"set_id": "s1"}, "redis": {"set_id": "s1"}}
    head, undo = db_rollback.data_steps(cfg, targets, {"mysql": "s-m", "redis": "s-r"})
    return {
        "checkpoint": plan_backup(cfg, which=["mysql", "redis", "uploads"], quiesce=True,
                                  checkpoint=True, label=None),
        "restore": Plan("rollback.db", {}, (*head, *undo,
                                            db_rollback.start_step(["web", "worker"]))),
        "deploy": plan_deploy(make_config(tmp, volumes=False), _pf(), watch_seconds=60,
                              with_data=True),
        "deploy-dirty": plan_deploy(make_config(tmp, volumes=False),
                                    Preflight(ref="v3", commit="c" * 40, head="a" * 40,
                                              dirty=True, running={}),
                                    watch_seconds=0, with_data=False),
    }


def _as_journaled_before_keys(plan: Plan) -> dict[str, Any]:
    """The plan's JSON as backout before keys wrote it: no keys, references by name."""
    names = {s.key: s.name for s in plan.steps}

    def by_name(params: dict[str, Any]) -> dict[str, Any]:
        out = dict(params)
        for ref in ("stop_step", "verify_step"):
            if ref in out:
                out[ref] = names[out[ref]]
        if "requires" in out:
            out["requires"] = [names[r] for r in out["requires"]]
        if isinstance(out.get("params"), dict):
            out["params"] = by_name(out["params"])
        return out

    data = plan.to_json()
    for step in data["steps"]:
        del step["key"]
        step["params"] = by_name(step["params"])
    return data


def test_every_step_of_every_plan_has_a_unique_stable_key(tmp_path: Path) -> None:
    for kind, plan in todays_plans(tmp_path).items():
        keys = [s.key for s in plan.steps]
        assert len(set(keys)) == len(keys), kind
        assert all(KEY.match(k) for k in keys), (kind, keys)
        # every reference to another step names a key of the plan
        for step in plan.steps:
            params = step.params.get("params", step.params)
            refs = [params.get("stop_step"), params.get("verify_step"),
                    *params.get("requires", [])]
            assert {r for r in refs if r} <= set(keys), (kind, step.key)


def test_a_plan_journaled_before_keys_reads_with_todays_keys(tmp_path: Path) -> None:
    """The compatibility read agrees with every planner: an old journal of today's plan
    gets the keys (and key references) the planner gives it now."""
    for kind, plan in todays_plans(tmp_path).items():
        old = Plan.from_json(_as_journaled_before_keys(plan))
        for then, now in zip(old.steps, plan.steps, strict=True):
            if then.action in ("compose.stop", "compose.start") and "volume" in then.name:
                # Found only through the start step's stop_step: keeps its name as key.
                assert then.key == then.name
                continue
            assert (then.key, then.params) == (now.key, now.params), (kind, then.name)
        assert Plan.from_json(plan.to_json()) == plan  # a keyed plan round-trips


def test_legacy_keys_of_an_unknown_step_are_its_name() -> None:
    assert legacy_key("do a thing", "some.action", {}) == "do a thing"
    assert legacy_key("stop backend", "compose.stop", {"services": ["web"]}) == "stop backend"
    assert legacy_key("stop writers: web", "compose.stop", {"services": ["web"]}) == \
        "stop-writers"


def test_the_executor_refuses_a_plan_with_a_key_twice(tmp_path: Path) -> None:
    load_actions()
    from backout.operations.plan import Step

    plan = Plan("x", {}, (Step("a", "backup.cleanup", "r", key="k"),
                          Step("b", "backup.cleanup", "r", key="k")))
    with pytest.raises(RuntimeError, match="key twice"):
        Executor(Store(tmp_path), {}).start(plan)


# --------------------------------------------------------------------------- old journals


def load_journal(store: Store, name: str) -> tuple[int, dict[str, Any]]:
    """Put an old journal into a store as backout before keys left it (no key column
    values: the migration adds the column empty)."""
    doc = json.loads((JOURNALS / f"{name}.json").read_text())
    assert doc["schema"] == 4 and all("key" not in s for s in json.loads(
        doc["operation"]["plan"])["steps"])
    op = doc["operation"]
    cur = store.db.execute("INSERT INTO operations (kind, params, plan, status, created_at,"
                           " created_by) VALUES (?, ?, ?, ?, ?, ?)",
                           (op["kind"], op["params"], op["plan"], op["status"],
                            op["created_at"], op["created_by"]))
    op_id = int(cur.lastrowid or 0)
    for s in doc["steps"]:
        store.db.execute("INSERT INTO steps (operation_id, seq, name, reason, status, started_at,"
                         " finished_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (op_id, s["seq"], s["name"], s["reason"], s["status"],
                          s["started_at"], s["finished_at"], s["detail"]))
    return op_id, doc


class StandIns:
    """Stand-ins under the real action names for actions that need Docker; every
    call is recorded with the results it was handed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        load_actions()
        self.calls: list[str] = []
        self.seen: dict[str, dict[str, Any]] = {}
        self.monkeypatch = monkeypatch

    def __call__(self, action: str, result: Any = None) -> None:
        def run(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
            name = f"{action}:{params.get('database') or params.get('volume') or ''}".rstrip(":")
            self.calls.append(name)
            self.seen[name] = dict(results)
            return result if result is not None else {"ok": True}

        self.monkeypatch.setitem(executor_mod._ACTIONS, action, run)


def old_journal(tmp: Path, name: str, volumes: bool = True
                ) -> tuple[Config, Store, int, dict[str, Any]]:
    """A store holding the old journal ``name``, and what `backout status` says of it."""
    config = make_config(tmp, volumes)
    store = Store(config.state_dir)
    op_id, _doc = load_journal(store, name)
    return config, store, op_id, summary.describe(store, op_id)


def resume(store: Store, op_id: int, config: Config, platform: FakePlatform) -> Any:
    plan = load_plan(store, op_id)
    return Executor(store, run_context(store, config, platform)).run(plan, op_id)


def test_an_old_quiesced_checkpoint_resumes(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, op_id, before = old_journal(tmp_path, "v4-checkpoint-quiesced")
    assert before["services"] == ["web: STOPPED (started again by `backout resume`)"]
    fake = StandIns(monkeypatch)
    for action in ("backup.cleanup", "backup.dump", "backup.volume", "backup.publish",
                   "backup.discard", "backup.record_checkpoint"):
        fake(action)
    platform = FakePlatform(running={"backend": "sha256:b"}, stopped={"web": "sha256:w"})
    outcome = resume(store, op_id, config, platform)
    assert outcome.status == "succeeded", outcome.error
    # The dump killed midway runs again; nothing done before runs twice.
    assert fake.calls == ["backup.dump:redis", "backup.volume:uploads", "backup.publish",
                          "backup.discard", "backup.record_checkpoint"]
    # Only what the old run's stop stopped (web, not worker) is started: the start
    # step found the stop's journaled result through its old stop_step.
    assert [c for c in platform.calls if c[0] in ("stop", "start")] == [
        ("stop", ("backend",)), ("start", ("backend",)), ("start", ("web",))]
    # The publish step reads the dumps and the writers' pause by key.
    seen = fake.seen["backup.publish"]
    assert seen["dump:mysql"]["database"]["duration_s"] == 1.5  # from the old run
    assert {"dump:redis", "volume:uploads", "stop-writers", "start-writers"} <= set(seen)
    keys = [s["key"] for s in store.operation_steps(op_id)]
    assert keys[:4] == ["cleanup", "stop-writers", "dump:mysql", "dump:redis"]
    assert keys[-4:] == ["start-writers", "publish", "discard", "record-checkpoint"]
    after = summary.describe(store, op_id)
    assert after["services"] == ["web: running again", "backend: running again"]


def test_an_old_restore_killed_inside_the_restore_resumes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, op_id, before = old_journal(tmp_path, "v4-rollback-db")
    assert before["data"] == ["mysql: MAY BE HALF-RESTORED: its safety backup has not been "
                              "put back yet (`backout resume` does it)"]
    restored: list[str] = []
    monkeypatch.setattr(db_rollback, "_restore",
                        lambda env, access, artifact, section: restored.append(str(artifact))
                        or {"counts": {"app": 3}})
    monkeypatch.setattr(db_rollback.data_loss, "window", lambda *a, **k: {"summary": "none"})
    platform = FakePlatform(stopped={"web": "sha256:w"})
    outcome = resume(store, op_id, config, platform)
    assert outcome.status == "succeeded", outcome.error
    # The real restore found what it requires (old names in the journal) and the
    # verified artifact by its old verify_step.
    assert restored == ["/nonexistent/mysql.sql.zst"]
    assert outcome.results["restore:mysql"]["counts"] == {"app": 3}
    assert outcome.results["undo:mysql"] == {"undone": False}
    assert [c for c in platform.calls if c[0] in ("stop", "start")] == [("start", ("web",))]
    after = summary.describe(store, op_id)
    assert after["data"] == ["mysql: restored from backup x"]
    assert after["services"] == ["web: running again"]


def test_an_old_deploy_killed_in_its_rollback_resumes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from backout.deploy import operation as deploy_op

    config, store, op_id, before = old_journal(tmp_path, "v4-deploy-rollback", volumes=False)
    assert before["data"] == ["mysql: MAY BE HALF-RESTORED: its safety backup has not been "
                              "put back yet (`backout resume` does it)"]
    fake = StandIns(monkeypatch)
    for action in ("rollback.db.restore", "emergency.checkout", "emergency.images",
                   "emergency.up"):
        fake(action)
    fake("rollback.db.undo", {"undone": False})
    fake("emergency.verify", {"checks": [{"name": "web", "ok": True}]})
    monkeypatch.setattr(deploy_op, "resolve_backup", lambda *a: {"source": "checkpoint"})
    platform = FakePlatform(stopped={"web": "sha256:w"})
    outcome = resume(store, op_id, config, platform)
    # The rollback's real steps read the old decision, previous release and restore
    # by key: the data came back, then the code and images, the writers, the verify.
    assert fake.calls == ["rollback.db.restore:mysql", "rollback.db.undo:mysql",
                          "emergency.checkout", "emergency.images", "emergency.up",
                          "emergency.verify"]
    assert fake.seen["emergency.images"]["deploy:previous"]["images"] == {"web": "sha256:1"}
    assert [c for c in platform.calls if c[0] in ("stop", "start")] == [("start", ("web",))]
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"
    assert outcome.results["deploy:outcome"]["release_id"] == 2
    assert outcome.status == "failed"  # a deploy that rolled back
