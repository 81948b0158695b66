"""The rollback-service plan and the stop/start-writers actions, run by the real
executor on a real journal against an in-process FakePlatform: which platform calls
happen in which order, what a failure in the middle leaves, and that only what the
plan stopped is started again. No Docker."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from backout import engines
from backout.backup.operation import START_WRITERS, STOP_WRITERS
from backout.config import Config, DatabaseConfig, ServiceConfig
from backout.errors import ExternalError, NotFoundError, UnhealthyError
from backout.operations.executor import Executor, RunContext, register_action
from backout.operations.plan import Plan, Step
from backout.rollback import emergency
from backout.rollback import service as service_rollback
from backout.rollback.common import target_ref
from backout.state import Store
from backout.verify import EXPECTED_IMAGES
from tests.support.fakes import FakePlatform, run_context

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def stack(tmp: Path, **kw: Any) -> tuple[Config, Store, FakePlatform]:
    config = Config(path=tmp / "backout.toml", project_dir=tmp,
                    services={"web": ServiceConfig("web"), "worker": ServiceConfig("worker")})
    store = Store(config.state_dir)
    platform = FakePlatform(tmp, running={"web": NEW, "worker": NEW},
                            images={"web:latest": NEW, "web:v1": OLD}, **kw)
    store.add_release(git_commit="c1", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": OLD}, "worker": {"image_id": NEW}})
    return config, store, platform


def execute(store: Store, plan: Plan, ctx: RunContext) -> Any:
    ex = Executor(store, ctx)
    return ex.run(plan, ex.start(plan))


# ----------------------------------------------------------------------- rollback service


def test_the_service_plan_targets_the_newest_release_with_another_image(tmp_path: Path) -> None:
    _config, store, platform = stack(tmp_path)
    plan = service_rollback.plan(store, platform, "web", None, config=run_context(store).config,
                                 order="stop-first")
    assert [s.action for s in plan.steps] == ["rollback.service.recreate",  # --order stop-first
                                              "rollback.service.verify",
                                              "rollback.record_expected"]
    assert not any(s.always or s.on_failure for s in plan.steps)
    assert plan.params["image_id"] == OLD and plan.params["current"] == NEW
    assert plan.params["source"] == "release 1" and plan.params["project"] == tmp_path.name
    assert plan.steps[0].params == {"service": "web", "image_id": OLD, "project": tmp_path.name}
    assert "worker" not in plan.summary and OLD[7:19] in plan.summary


def test_a_release_whose_image_is_gone_is_no_candidate(tmp_path: Path) -> None:
    _config, store, platform = stack(tmp_path)
    del platform.images["web:v1"]  # retention removed the old image
    with pytest.raises(NotFoundError, match="no recorded release ran another image"):
        service_rollback.plan(store, platform, "web", None, config=_config)
    with pytest.raises(NotFoundError, match="no longer on this host"):
        service_rollback.plan(store, platform, "web", "r1", config=_config)


def test_a_version_tag_resolves_through_the_platform(tmp_path: Path) -> None:
    _config, store, platform = stack(tmp_path)
    assert service_rollback.plan(store, platform, "web", "v1", config=_config).params["image_id"] == OLD
    with pytest.raises(NotFoundError, match="no image web:v9"):
        service_rollback.plan(store, platform, "web", "v9", config=_config)


def test_the_service_rollback_replaces_one_service_then_verifies_and_records(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path)
    plan = service_rollback.plan(store, platform, "web", None, config=run_context(store).config,
                                 order="stop-first")
    platform.calls.clear()
    outcome = execute(store, plan, run_context(store, config, platform))
    assert outcome.status == "succeeded"
    ref = target_ref(tmp_path.name, "web", OLD)
    assert platform.calls == [("image", OLD), ("tag", OLD, ref), ("replace_service", "web", ref),
                              ("containers", "web")]
    assert platform.running_images() == {"web": OLD, "worker": NEW}  # worker untouched
    assert store.fact(EXPECTED_IMAGES) == {"web": OLD}
    assert outcome.results[plan.steps[0].key] == {"ref": ref}


def test_a_failed_replacement_stops_the_plan_before_anything_is_recorded(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path)
    plan = service_rollback.plan(store, platform, "web", None, config=run_context(store).config,
                                 order="stop-first")
    platform.calls.clear()
    platform.fail_on("replace_service", ExternalError("compose up failed"))
    outcome = execute(store, plan, run_context(store, config, platform))
    assert outcome.status == "failed" and outcome.failed_step == plan.steps[0].name
    assert [r.status for r in outcome.steps] == ["failed", "skipped", "skipped"]
    assert platform.called("containers") == [] and store.fact(EXPECTED_IMAGES) is None
    assert platform.running_images()["web"] == NEW


def test_an_unhealthy_replacement_fails_the_verify_step(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, health={"web": "unhealthy"})
    plan = service_rollback.plan(store, platform, "web", None, config=run_context(store).config,
                                 order="stop-first")
    outcome = execute(store, plan, run_context(store, config, platform))
    assert outcome.status == "failed" and outcome.failed_step == "verify web"
    assert isinstance(outcome.error, UnhealthyError) and "unhealthy" in outcome.error.message
    assert store.fact(EXPECTED_IMAGES) is None


def test_drift_compares_running_images_with_the_definition(tmp_path: Path) -> None:
    _config, _store, platform = stack(tmp_path)
    assert service_rollback.drift(platform) == {}
    platform.container_image["web"] = OLD  # rolled back: the compose files still name NEW
    assert service_rollback.drift(platform) == {
        "web": {"running": OLD, "compose_file": NEW, "compose_image": "web:latest"}}


def test_emergency_up_says_what_the_platform_said(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path)
    platform.fail_on("converge", UnhealthyError("container web is unhealthy"))
    plan = Plan("rollback.emergency", {}, (Step("up", "emergency.up", "r"),))
    outcome = execute(store, plan, run_context(store, config, platform))
    assert outcome.error is not None and outcome.error.message == (
        "the stack did not become healthy at the target: container web is unhealthy")
    assert platform.called("converge") == [(False,)]  # never pulls
    assert store.fact(EXPECTED_IMAGES) is None
    assert emergency  # the module registers the action


@pytest.mark.parametrize("action", ["emergency.up", "deploy.up"])
def test_the_stack_comes_up_while_the_database_drivers_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    """The verify after it would otherwise wait for pymongo's import (0.3 s)."""
    config, store, platform = stack(tmp_path)
    config = dataclasses.replace(config, databases={
        "docs": DatabaseConfig("docs", "mongodb", "mongo"),
        "app": DatabaseConfig("app", "mysql", "db")})
    order: list[Any] = []
    monkeypatch.setattr(engines, "load_drivers_meanwhile",
                        lambda kinds: order.append(("drivers", sorted(kinds))))
    monkeypatch.setattr(platform, "converge", lambda *, pull: order.append("converge"))
    plan = Plan("test", {}, (Step("up", action, "r"),))
    outcome = execute(store, plan, run_context(store, config, platform))
    assert outcome.error is None
    assert order == [("drivers", ["mongodb", "mysql"]), "converge"]


def test_drivers_load_in_the_background_and_a_failure_stays_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    class Engine:
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def load_driver(self) -> None:
            loaded.append(self.kind)
            if self.kind == "mongodb":
                raise ImportError("no pymongo")

    monkeypatch.setattr(engines, "get", Engine)
    engines.load_drivers_meanwhile(["redis", "mongodb", "mongodb"])  # raises nothing here
    for thread in threading.enumerate():
        if thread.name == "backout-load-drivers":
            thread.join(10)
    assert not any(t.name == "backout-load-drivers" for t in threading.enumerate())
    assert loaded == ["mongodb", "redis"]  # once each, in name order, past a failure


# ---------------------------------------------------------------- stop and start writers


@register_action("test.platform-fail")
def _fail(_ctx: RunContext, _params: dict[str, Any], _r: dict[str, Any]) -> Any:
    raise ExternalError("the dump failed")


def writers_plan(fail_between: bool) -> Plan:
    steps = [Step("stop writers: web, worker", "compose.stop", "r",
                  {"services": ["web", "worker"]}, key=STOP_WRITERS)]
    if fail_between:
        steps.append(Step("dump", "test.platform-fail", "r"))
    steps.append(Step("start writers: web, worker", "compose.start", "r",
                      {"services": ["web", "worker"], "stop_step": STOP_WRITERS},
                      always=True, key=START_WRITERS))
    return Plan("backup", {}, tuple(steps))


@pytest.mark.parametrize("fail_between", [False, True])
def test_only_the_running_writers_are_stopped_and_only_they_are_started(
        tmp_path: Path, fail_between: bool) -> None:
    config, store, _ = stack(tmp_path)
    platform = FakePlatform(tmp_path, running={"web": NEW}, stopped={"worker": NEW})
    outcome = execute(store, writers_plan(fail_between), run_context(store, config, platform))
    assert outcome.status == ("failed" if fail_between else "succeeded")
    assert platform.calls == [("stop", ("web", "worker")), ("start", ("web",))]
    assert outcome.results[STOP_WRITERS]["stopped"] == ["web"]
    assert outcome.results[START_WRITERS]["started"] == ["web"]
    assert platform.state == {"web": "running", "worker": "exited"}  # stopped on purpose


def test_nothing_stopped_means_nothing_started(tmp_path: Path) -> None:
    config, store, _ = stack(tmp_path)
    platform = FakePlatform(tmp_path, stopped={"web": NEW, "worker": NEW})
    outcome = execute(store, writers_plan(False), run_context(store, config, platform))
    assert outcome.results[START_WRITERS]["started"] == []
    assert platform.calls == [("stop", ("web", "worker"))]


def test_a_stop_that_failed_midway_starts_them_all(tmp_path: Path) -> None:
    """No record of what the stop did (it failed inside): uptime wins, all are started."""
    config, store, _ = stack(tmp_path)
    platform = FakePlatform(tmp_path, running={"web": NEW, "worker": NEW})
    platform.fail_on("stop", ExternalError("docker compose stop timed out"))
    outcome = execute(store, writers_plan(False), run_context(store, config, platform))
    assert outcome.status == "failed"
    assert platform.calls == [("stop", ("web", "worker")), ("start", ("web", "worker"))]


def test_a_start_that_fails_fails_the_operation(tmp_path: Path) -> None:
    config, store, _ = stack(tmp_path)
    platform = FakePlatform(tmp_path, running={"web": NEW, "worker": NEW})
    platform.fail_on("start", ExternalError("docker compose up failed"))
    outcome = execute(store, writers_plan(False), run_context(store, config, platform))
    assert outcome.status == "failed" and outcome.failed_step == "start writers: web, worker"
    assert platform.state == {"web": "exited", "worker": "exited"}
