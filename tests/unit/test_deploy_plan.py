"""The guarded deploy's plan, pure: what runs always, what only after a failure, and
that the rollback steps carry the names the rollback actions look results up by."""

from __future__ import annotations

from pathlib import Path

from backout.config.model import Config, DatabaseConfig, ServiceConfig
from backout.deploy import Preflight, plan_deploy


def _config(with_db: bool) -> Config:
    return Config(
        path=Path("/p/backout.toml"), project_dir=Path("/p"),
        services={"web": ServiceConfig("web", writes_to=("mysql",) if with_db else ())},
        databases={"mysql": DatabaseConfig("mysql", "mysql", "db")} if with_db else {})


def _pf() -> Preflight:
    return Preflight(ref="v3", commit="c" * 40, head="a" * 40, dirty=False,
                     running={"web": "sha256:1"})


def test_plan_checkpoints_switches_and_rolls_back_only_on_failure() -> None:
    plan = plan_deploy(_config(True), _pf(), watch_seconds=60, with_data=False)
    names = [s.name for s in plan.steps]
    assert names[0] == "record the release running now"
    assert names.index("dump mysql") < names.index(f"switch code to {'c' * 12}")
    assert names.index("watch the new release") < names.index("decide the rollback")
    assert names[-1] == "record the outcome" and plan.steps[-1].always
    tail = plan.steps[names.index("decide the rollback"):-1]
    assert tail and all(s.on_failure for s in tail)
    assert not any(s.on_failure for s in plan.steps[:names.index("decide the rollback")])
    # Without --migration the data steps are planned but act only if the RED rule's
    # action asks for the data back.
    restore = plan.steps[names.index("restore mysql")]
    assert restore.params["data"] and "rollback-with-data" in restore.reason
    assert plan.steps[names.index("decide the rollback")].params["with_data"] is False
    assert plan.params["previous_commit"] == "a" * 40


def test_migration_plan_restores_the_checkpoint_with_the_rollback_actions_names() -> None:
    plan = plan_deploy(_config(True), _pf(), watch_seconds=60, with_data=True)
    names = [s.name for s in plan.steps]
    for name in ("stop writers: web", "verify mysql backup", "safety backup of mysql",
                 "restore mysql", "put mysql's safety backup back if a restore failed"):
        assert name in names
    restore = plan.steps[names.index("restore mysql")]
    assert restore.params["action"] == "rollback.db.restore"
    assert restore.params["params"]["set_id"] == plan.params["set_id"]
    assert names.index("restore mysql") < names.index("roll back: start the previous release")


def test_no_databases_no_checkpoint_and_no_watch() -> None:
    plan = plan_deploy(_config(False), _pf(), watch_seconds=0, with_data=False)
    names = [s.name for s in plan.steps]
    assert not any(n.startswith("dump ") for n in names) and plan.params["set_id"] is None
    watch = plan.steps[names.index("watch the new release")]
    assert watch.params == {"seconds": 0} and "no watch" in watch.reason
