"""A whole guarded deploy through the real executor and the real deploy and
emergency actions, in-process: a real git repository, a real store, a FakePlatform
whose images change when it converges; only the post-deploy checks are scripted.
What runs, what is skipped and why, where the code and the images end up, and
what a resume after a crash in the rollback finishes."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config
from backout.deploy import Preflight, plan_deploy
from backout.operations import executor as executor_mod
from backout.operations.executor import NOT_NEEDED, Executor, OperationOutcome, RunContext
from backout.operations.plan import Plan
from backout.state import Store
from backout.verify import Check, VerifyResult
from tests.support.fakes import FakePlatform
from tests.support.gitrepo import commit, environment, new_repo, sh

DEPLOY = importlib.import_module("backout.deploy.operation")
EMERGENCY = importlib.import_module("backout.rollback.emergency")


class Stack:
    """A repository with two commits (HEAD at the first), a store, a platform running
    the old image, and scripted verifications."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.repo = repo = new_repo(tmp_path / "project", {
            ".gitignore": ".backout/\n", "docker-compose.yml": "services: {web: {image: web:1}}\n"})
        self.old = sh(repo, "rev-parse", "HEAD")
        self.new = commit(repo, {"docker-compose.yml": "services: {web: {image: web:2}}\n"})
        sh(repo, "checkout", "-q", self.old)
        self.config = Config(path=repo / "backout.toml", project_dir=repo)
        self.store = Store(self.config.state_dir)
        # converge runs web:1 -> sha256:new, the image the new release's build made
        self.platform = FakePlatform(repo, running={"web": "sha256:old"},
                                     definition={"name": "shop",
                                                 "services": {"web": {"image": "web:1"}}},
                                     images={"web:1": "sha256:new", "keep": "sha256:old"})
        self.verdicts: dict[str, list[bool]] = {"deploy": [], "rollback": []}
        for module, which in ((DEPLOY, "deploy"), (EMERGENCY, "rollback")):
            monkeypatch.setattr(module, "run_verify", self._verify(which))

    def _verify(self, which: str) -> Any:
        def run_verify(*_a: Any, **_kw: Any) -> VerifyResult:
            ok = self.verdicts[which].pop(0) if self.verdicts[which] else True
            return VerifyResult([Check("container web", ok, "running" if ok else "exited")])
        return run_verify

    def plan(self) -> Plan:
        pf = Preflight(ref="v2", commit=self.new, head=self.old, dirty=False,
                       running={"web": "sha256:old"})
        return plan_deploy(self.config, pf, watch_seconds=0, with_data=False)

    def executor(self) -> Executor:
        ctx = RunContext(environment(self.repo), self.config, self.store,
                         self.platform)
        return Executor(self.store, ctx)

    def run(self) -> tuple[OperationOutcome, Plan]:
        plan = self.plan()
        ex = self.executor()
        return ex.run(plan, ex.start(plan)), plan

    def head(self) -> str:
        return sh(self.repo, "rev-parse", "HEAD")


def _reports(outcome: OperationOutcome) -> dict[str, tuple[str, str | None]]:
    return {r.name: (r.status, r.reason) for r in outcome.steps}


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    return Stack(tmp_path, monkeypatch)


def test_a_healthy_deploy_switches_code_and_images_and_rolls_nothing_back(stack: Stack) -> None:
    outcome, plan = stack.run()
    assert outcome.status == "succeeded" and outcome.error is None
    assert outcome.results["deploy:outcome"]["outcome"] == "deployed"
    assert stack.head() == stack.new
    assert stack.platform.running_images() == {"web": "sha256:new"}
    reports = _reports(outcome)
    for step in plan.steps:
        if step.on_failure:
            assert reports[step.name] == ("skipped", NOT_NEEDED)
    assert reports["record the outcome"][0] == "done"
    new_release = outcome.results["record-release"]["release_id"]
    assert new_release == 2 and outcome.results["deploy:previous"]["release_id"] == 1
    assert stack.store.release(2)["status"] == "deployed"  # type: ignore[index]
    assert stack.store.release(1)["status"] == "recorded"  # type: ignore[index]
    assert stack.store.open_incidents() == []


def test_a_failed_verification_rolls_code_and_images_back(stack: Stack) -> None:
    stack.verdicts["deploy"] = [False]
    outcome, _plan = stack.run()
    assert outcome.status == "failed" and outcome.failed_step == "verify the new release"
    assert "container web: exited" in (outcome.error.message if outcome.error else "")
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"
    assert stack.head() == stack.old
    assert stack.platform.running_images() == {"web": "sha256:old"}
    reports = _reports(outcome)
    assert reports["watch the new release"][0] == "skipped"
    for name in ("decide the rollback", f"roll back: code to {stack.old[:12]}",
                 "roll back: previous images", "roll back: start the previous release",
                 "roll back: verify", "record the outcome"):
        assert reports[name] == ("done", None), name
    # the previous release's image is put back under the name the compose file uses
    assert ("sha256:old", "web:1") in stack.platform.called("tag")
    assert stack.platform.called("converge") == [(True,), (False,)]  # no pull on the way back
    assert stack.store.release(2)["status"] == "rolled_back"  # type: ignore[index]
    [incident] = stack.store.incidents()
    assert incident["status"] == "resolved" and incident["rule"] == "deploy"
    assert [e["kind"] for e in incident["timeline"]] == ["detected", "action", "verified",
                                                         "resolved"]


def test_a_rollback_that_does_not_verify_is_left_for_a_human(stack: Stack) -> None:
    stack.verdicts = {"deploy": [False], "rollback": [False]}
    outcome, _plan = stack.run()
    assert outcome.results["deploy:outcome"]["outcome"] == "needs_human"
    assert _reports(outcome)["roll back: verify"][0] == "failed"
    [incident] = stack.store.incidents()
    assert incident["status"] == "escalated"
    assert stack.store.release(2)["status"] == "failed"  # type: ignore[index]


def test_a_failure_before_anything_changed_undoes_nothing(stack: Stack) -> None:
    stack.platform.fail_on("ping")  # recording the running release fails
    outcome, plan = stack.run()
    assert outcome.failed_step == "record the release running now"
    assert outcome.results["deploy:decide"]["needed"] is False
    assert outcome.results["deploy:outcome"]["outcome"] == "failed"
    reports = _reports(outcome)
    for step in plan.steps:
        if step.action == "deploy.rollback_step":
            assert reports[step.name] == ("skipped", "nothing to roll back"), step.name
    assert reports[f"switch code to {stack.new[:12]}"] == (
        "skipped", "an earlier step failed (record the release running now)")
    assert stack.head() == stack.old and stack.platform.called("converge") == []
    assert stack.store.incidents() == []


def test_an_unhealthy_start_after_the_switch_is_rolled_back(stack: Stack) -> None:
    stack.platform.fail_on("converge")
    outcome, _plan = stack.run()
    assert outcome.failed_step == "start the new release"
    assert "did not come up healthy" in (outcome.error.message if outcome.error else "")
    assert outcome.results["deploy:decide"]["needed"] is True  # the code had moved
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"
    assert stack.head() == stack.old


def test_a_crash_in_the_rollback_is_finished_by_resume(stack: Stack,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stack.verdicts["deploy"] = [False]
    real_up = executor_mod.action("emergency.up")

    def crash(*_a: Any) -> Any:
        raise SystemExit("killed")  # as a kill -9 would leave it: the step journaled running
    monkeypatch.setitem(executor_mod._ACTIONS, "emergency.up", crash)
    plan = stack.plan()
    ex = stack.executor()
    op = ex.start(plan)
    with pytest.raises(SystemExit):
        ex.run(plan, op)
    assert stack.store.step_status(op, "rollback:up") == "running"
    assert stack.store.unfinished_operations()[0]["id"] == op
    monkeypatch.setitem(executor_mod._ACTIONS, "emergency.up", real_up)
    outcome = stack.executor().run(plan, op)
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"
    assert stack.platform.running_images() == {"web": "sha256:old"}
    reports = _reports(outcome)
    assert reports["decide the rollback"] == ("done", "in an earlier run")
    assert reports["verify the new release"] == ("failed", "in an earlier run")
    assert reports["roll back: start the previous release"] == ("done", None)
    assert len(stack.store.incidents()) == 1  # the incident of the first run, resolved
    assert stack.store.incidents()[0]["status"] == "resolved"
