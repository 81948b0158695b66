"""Writes the journals in this directory: plans and steps as backout before step keys
(commit d01ea83, state schema 4) journaled them when a kill interrupted them.

Run against THAT version's source, not this tree's (the point is to keep journals
the old code wrote), from the repository root:

    git archive d01ea83 src | tar -x -C /tmp/oldmain
    PYTHONPATH=/tmp/oldmain/src PYTHONDONTWRITEBYTECODE=1 \\
        uv run python tests/data/journals/generate.py

Each plan is made by the old planners and run by the old executor with stand-in
actions; the step named ``KILL_AT`` raises a BaseException, which leaves the
journal exactly as a ``kill -9`` inside that step does (step ``running``,
operation ``running``). tests/unit/test_step_keys.py resumes them.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from backout.backup.operation import plan_backup
from backout.config.model import Config, DatabaseConfig, ServiceConfig, VolumeConfig
from backout.deploy import Preflight, plan_deploy
from backout.operations import Executor, Plan
from backout.operations import executor as executor_mod
from backout.operations.plan import Step
from backout.rollback.db import data_steps, start_step
from backout.state import Store

HERE = Path(__file__).resolve().parent


class Killed(BaseException):
    pass


def config(tmp: Path) -> Config:
    return Config(
        path=tmp / "backout.toml", project_dir=tmp,
        services={"web": ServiceConfig("web", writes_to=("mysql", "redis")),
                  "worker": ServiceConfig("worker", writes_to=("mysql",)),
                  "backend": ServiceConfig("backend")},
        databases={"mysql": DatabaseConfig("mysql", "mysql", "mysql"),
                   "redis": DatabaseConfig("redis", "redis", "redis")},
        volumes={"uploads": VolumeConfig("uploads", "uploads", "backend", stop_service=True)})


def result_of(step: Step) -> Any:
    """What the old action returned, in the shape later steps read."""
    action = step.action
    params = step.params
    if action == "deploy.rollback_step":
        action, params = params["action"], params["params"]
    return {
        "compose.stop": {"stopped_at": 1000.0, "stopped": params.get("services", [])[:1]},
        "compose.start": {"started_at": 1010.0, "started": params.get("services", [])[:1]},
        "backup.dump": {"database": {"type": params.get("database"), "duration_s": 1.5},
                        "artifact": {"name": f"{params.get('database')}.zst", "bytes": 3,
                                     "sha256": "0" * 64}},
        "backup.volume": {"volume": {"volume": params.get("volume")},
                          "artifact": {"name": f"volume-{params.get('volume')}.tar.zst",
                                       "bytes": 3, "sha256": "1" * 64}},
        "rollback.db.verify": {"section": {"type": "mysql", "databases": {}},
                               "artifact": "/nonexistent/mysql.sql.zst"},
        "rollback.db.safety": {"set_id": params.get("set_id"), "not_dumped": [],
                               "absent": []},
        "deploy.previous": {"release_id": 1, "images": {"web": "sha256:1"}},
        "deploy.record": {"release_id": 2},
        "deploy.decide": {"needed": True, "reason": "watch the new release: RED",
                          "incident": None, "with_data": True, "to_release": 1},
        "backup.record_checkpoint": {"checkpoint_id": 1, "release_id": 1},
    }.get(action, {"ok": True})


def journal(name: str, plan: Plan, kill_at: str, fail_at: str | None = None) -> None:
    by_name = {s.name: s for s in plan.steps}

    def stand_in(ctx: Any, params: dict[str, Any], results: dict[str, Any]) -> Any:
        step = next(s for s in plan.steps if s.params is params)
        if step.name == kill_at:
            raise Killed(step.name)
        if step.name == fail_at:
            from backout.errors import ExternalError
            raise ExternalError("RED during the watch")
        return result_of(by_name[step.name])

    for s in plan.steps:
        executor_mod._ACTIONS[s.action] = stand_in
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        ex = Executor(store, {})
        op = ex.start(plan)
        try:
            ex.run(plan, op)
        except Killed:
            pass
        else:
            raise AssertionError(f"{name}: {kill_at!r} was never reached")
        db = sqlite3.connect(Path(tmp) / "state.db")
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM operations WHERE id = ?", (op,)).fetchone())
        steps = [dict(r) for r in db.execute(
            "SELECT seq, name, reason, status, started_at, finished_at, detail FROM steps"
            " WHERE operation_id = ? ORDER BY seq", (op,))]
        schema = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
        db.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    doc = {"written_by": f"backout before step keys (source d01ea83; generated at {commit})",
           "schema": schema, "killed_in": kill_at,
           "operation": {k: row[k] for k in ("kind", "params", "plan", "status", "created_at",
                                             "created_by")},
           "steps": steps}
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {name}.json: {len(steps)} steps, killed in {kill_at!r}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp))
        backup = plan_backup(cfg, which=["mysql", "redis", "uploads"], quiesce=True,
                             checkpoint=True, label="old")
        # Killed inside the second dump: the writers were stopped (only web ran), the
        # first dump and nothing else is done.
        journal("v4-checkpoint-quiesced", backup, kill_at="dump redis")

        targets = {"mysql": {"set_id": "20260101T000000Z-aaaa", "source": "backup x",
                             "section": {"type": "mysql"}, "sha256": "0" * 64,
                             "artifact": "/nonexistent/mysql.sql.zst"}}
        head, undo = data_steps(cfg, targets, {"mysql": "20260101T000000Z-safety"})
        restore = Plan("rollback.db", {"database": "mysql", "backup": "x",
                                       "safety_set": "20260101T000000Z-safety",
                                       "data_loss": []},
                       (*head, *undo, start_step(["web", "worker"])),
                       summary="restore mysql from backup x")
        journal("v4-rollback-db", restore, kill_at="restore mysql")

        pf = Preflight(ref="v3", commit="c" * 40, head="a" * 40, dirty=False,
                       running={"web": "sha256:1"})
        cfg_db = Config(path=cfg.path, project_dir=cfg.project_dir,
                        services={k: v for k, v in cfg.services.items() if k != "backend"},
                        databases={"mysql": cfg.databases["mysql"]})
        deploy = plan_deploy(cfg_db, pf, watch_seconds=60, with_data=True)
        # RED during the watch; killed inside the rollback's restore.
        journal("v4-deploy-rollback", deploy, kill_at="restore mysql",
                fail_at="watch the new release")


if __name__ == "__main__":
    sys.exit(main())
