"""Backup, checkpoint and database-rollback plans run in-process over the engine
interface: a FakeEngine (the real zstd pipeline, no database) and a FakePlatform
record what was called in what order; steps, always-flags and outcomes are
asserted, also when the engine fails in the middle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backout.backup.operation import plan_backup
from backout.config import Config
from backout.config.load import parse_document
from backout.errors import ExternalError
from backout.operations.executor import Executor
from backout.operations.plan import Plan
from backout.state import Store
from tests.support.fakes import FakeEngine, FakePlatform, install_engine, run_context

CONFIG = """
[databases.app]
type = "mysql"
service = "db"

[databases.cache]
type = "redis"
service = "redis"

[services.web]
writes_to = ["app", "cache"]

[services.worker]
writes_to = ["app"]
"""


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    return install_engine(monkeypatch, FakeEngine())


def _config(tmp_path: Path) -> Config:
    return parse_document("backout.toml", CONFIG, tmp_path)


def _run(tmp_path: Path, config: Config, plan: Plan,
         platform: FakePlatform) -> tuple[Any, Store]:
    store = Store(config.state_dir)
    ex = Executor(store, run_context(store, config=config, platform=platform))
    return ex.run(plan, ex.start(plan)), store


def _platform() -> FakePlatform:
    return FakePlatform(running={"web": "sha256:w", "worker": "sha256:k", "db": "sha256:d",
                                 "redis": "sha256:r"})


def test_a_quiesced_backup_stops_writers_dumps_each_database_then_starts_them(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["app", "cache"], quiesce=True, checkpoint=False, label=None)
    assert [(s.key, s.always) for s in plan.steps] == [
        ("cleanup", False), ("stop-writers", False), ("dump:app", False), ("dump:cache", False),
        ("start-writers", True), ("publish", False), ("discard", True)]
    platform = _platform()
    outcome, _ = _run(tmp_path, config, plan, platform)
    assert outcome.status == "succeeded", outcome
    assert engine.calls == [("dump", "app"), ("dump", "cache")]
    assert [c[0] for c in platform.calls if c[0] in ("stop", "start")] == ["stop", "start"]
    assert sorted(platform.called("stop")[0][0]) == ["web", "worker"]
    published = config.backup_dir / plan.params["set_id"] / "manifest.json"
    assert published.is_file()
    assert not (config.backup_dir / f".{plan.params['set_id']}.partial").exists()


def test_a_failed_dump_still_starts_the_writers_and_publishes_nothing(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    engine.fail_on("dump", "cache", ExternalError("cache: the server went away"))
    plan = plan_backup(config, which=["app", "cache"], quiesce=True, checkpoint=True, label="x")
    platform = _platform()
    outcome, _ = _run(tmp_path, config, plan, platform)
    assert outcome.status == "failed"
    assert engine.calls == [("dump", "app"), ("dump", "cache")]
    # the writers run again (always), nothing is published, no checkpoint recorded
    assert [c[0] for c in platform.calls if c[0] in ("stop", "start")] == ["stop", "start"]
    assert "start-writers" in outcome.results and "discard" in outcome.results
    assert "publish" not in outcome.results and "record-checkpoint" not in outcome.results
    assert not list(config.backup_dir.glob("*/manifest.json"))


def test_an_online_backup_touches_no_service(tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["app"], quiesce=False, checkpoint=False, label=None)
    assert [s.key for s in plan.steps] == ["cleanup", "dump:app", "publish", "discard"]
    platform = _platform()
    outcome, _ = _run(tmp_path, config, plan, platform)
    assert outcome.status == "succeeded"
    assert engine.calls == [("dump", "app")]
    assert not platform.called("stop") and not platform.called("start")


def test_the_engine_is_asked_for_the_artifact_name_and_the_plan_wording(
        tmp_path: Path, engine: FakeEngine) -> None:
    from backout.backup.engines import artifact_name

    config = _config(tmp_path)
    assert artifact_name(config.databases["app"]) == "app.fake"


def _backed_up(tmp_path: Path, config: Config, platform: FakePlatform) -> str:
    plan = plan_backup(config, which=["app"], quiesce=False, checkpoint=False, label=None)
    outcome, _ = _run(tmp_path, config, plan, platform)
    assert outcome.status == "succeeded"
    return str(plan.params["set_id"])


def _after_a_backup(tmp_path: Path, engine: FakeEngine) -> tuple[Config, FakePlatform, str]:
    """A published set of ``app``; the fakes' call records start afresh."""
    config = _config(tmp_path)
    platform = _platform()
    set_id = _backed_up(tmp_path, config, platform)
    engine.calls.clear()
    platform.calls.clear()
    return config, platform, set_id


def _rollback_db(tmp_path: Path, config: Config, platform: FakePlatform,
                 set_id: str) -> tuple[Plan, Any]:
    from backout.environment import Environment
    from backout.rollback import db as db_rollback

    store = Store(config.state_dir)
    plan = db_rollback.plan(Environment(), config, store, "app", set_id, platform=platform)
    outcome, _ = _run(tmp_path, config, plan, platform)
    return plan, outcome


def test_rollback_db_verifies_stops_writers_takes_a_safety_backup_then_restores(
        tmp_path: Path, engine: FakeEngine) -> None:
    config, platform, set_id = _after_a_backup(tmp_path, engine)
    plan, outcome = _rollback_db(tmp_path, config, platform, set_id)
    assert [(s.key, s.always) for s in plan.steps] == [
        ("verify:app", False), ("stop-writers", False), ("safety:app", False),
        ("restore:app", False), ("undo:app", True), ("start-writers", True)]
    assert "its fake tables are replaced" in plan.steps[3].reason
    # a restore runs (also on resume) only when everything before it is done
    assert plan.steps[3].params["requires"] == ["verify:app", "stop-writers", "safety:app"]
    assert outcome.status == "succeeded", outcome
    # the data-loss window at plan time; the safety dump; the window again with the
    # writers stopped (what the restore really discards); the restore
    assert engine.calls == [("data_loss", "app"), ("dump", "app"), ("data_loss", "app"),
                            ("restore", "app")]
    assert [c[0] for c in platform.calls if c[0] in ("stop", "start")] == ["stop", "start"]
    # the plan's window asks the live server; the restore's reads the safety backup
    # just taken with the writers stopped (it holds what the live data has)
    safety = json.loads((config.backup_dir / plan.params["safety_set"] / "manifest.json")
                        .read_text())["databases"]["app"]
    assert engine.loss_current == [None, safety]
    assert safety["counts"] == engine.counts


def test_without_writers_to_stop_the_restores_window_asks_the_server(
        tmp_path: Path, engine: FakeEngine) -> None:
    # nothing was stopped, so something may have written since the safety backup
    config = parse_document("backout.toml", CONFIG.split("[services.web]")[0], tmp_path)
    platform = _platform()
    set_id = _backed_up(tmp_path, config, platform)
    engine.calls.clear()
    plan, outcome = _rollback_db(tmp_path, config, platform, set_id)
    assert "stop-writers" not in [s.key for s in plan.steps]
    assert outcome.status == "succeeded", outcome
    assert engine.calls == [("data_loss", "app"), ("dump", "app"), ("data_loss", "app"),
                            ("restore", "app")]
    assert engine.loss_current == [None, None]


def test_a_restore_that_does_not_reproduce_the_counts_puts_the_safety_backup_back(
        tmp_path: Path, engine: FakeEngine) -> None:
    config, platform, set_id = _after_a_backup(tmp_path, engine)
    engine.restored = {"items": 2}  # the restore "loses" a row: counts differ
    _, outcome = _rollback_db(tmp_path, config, platform, set_id)
    assert outcome.status == "failed"
    # restore, then undo: the safety backup is restored (and must match again)
    assert engine.called("restore") == ["app", "app"]
    assert engine.calls.index(("dump", "app")) < engine.calls.index(("restore", "app"))
    assert [c[0] for c in platform.calls if c[0] in ("stop", "start")] == ["stop", "start"]


def test_a_failed_safety_backup_restores_nothing_and_starts_the_writers(
        tmp_path: Path, engine: FakeEngine) -> None:
    config, platform, set_id = _after_a_backup(tmp_path, engine)
    engine.fail_on("dump", "app", ExternalError("app: disk full"))
    _, outcome = _rollback_db(tmp_path, config, platform, set_id)
    assert outcome.status == "failed"
    assert engine.called("restore") == []
    assert [c[0] for c in platform.calls if c[0] in ("stop", "start")] == ["stop", "start"]


def _git_project(tmp_path: Path) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    (tmp_path / ".gitignore").write_text(".backout/\nbackups/\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")


def test_an_emergency_rollback_with_data_restores_before_touching_the_code(
        tmp_path: Path, engine: FakeEngine) -> None:
    from backout.environment import Environment
    from backout.rollback import emergency

    _git_project(tmp_path)
    config = _config(tmp_path)
    platform = _platform()
    checkpoint = plan_backup(config, which=["app"], quiesce=False, checkpoint=True, label="x")
    outcome, store = _run(tmp_path, config, checkpoint, platform)
    assert outcome.status == "succeeded", outcome
    engine.calls.clear()
    platform.calls.clear()
    plan = emergency.plan(Environment(), config, store, platform, "cp1", with_data=True)
    assert [(s.key, s.always) for s in plan.steps] == [
        ("save-changes", False), ("verify:app", False), ("stop-writers", False),
        ("safety:app", False), ("restore:app", False), ("undo:app", True),
        ("checkout", False), ("images", False), ("up", False), ("start-writers", True),
        ("verify-stack", False)]
    # a restore that does not reproduce the counts: the safety backup goes back, the
    # writers start, and the code, images and stack are left alone
    engine.restored = {"items": 0}
    outcome, _ = _run(tmp_path, config, plan, platform)
    assert outcome.status == "failed"
    assert engine.called("restore") == ["app", "app"]
    assert not {"checkout", "images", "up", "verify-stack"} & set(outcome.results)
    assert [c[0] for c in platform.calls if c[0] in ("stop", "start", "converge")] == \
        ["stop", "start"]
