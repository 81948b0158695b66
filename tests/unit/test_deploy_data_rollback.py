"""A guarded deploy with a checkpoint, rolled back with and without its data, through
the real executor and the real backup, rollback and deploy actions: a FakeEngine
(the real zstd pipeline, no database), a FakePlatform, a real git repository. What
the engine and the platform are asked, in what order, and what is left alone when
the data cannot be restored."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from backout.config.load import parse_document
from backout.deploy import Preflight, plan_deploy
from backout.deploy.watch import RED_ACTIONS_FACT
from backout.operations.executor import Executor, OperationOutcome, RunContext
from backout.state import Store
from backout.verify import Check, VerifyResult
from tests.support.fakes import FakeEngine, FakePlatform, install_engine
from tests.support.gitrepo import commit, environment, new_repo, sh

CONFIG = """
[databases.app]
type = "mysql"
service = "db"

[services.web]
writes_to = ["app"]
"""


class Deploy:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = install_engine(monkeypatch, FakeEngine())
        self.repo = repo = new_repo(tmp_path / "project", {
            ".gitignore": ".backout/\n", "docker-compose.yml": "services: {web: {}}\n"})
        self.old = sh(repo, "rev-parse", "HEAD")
        self.new = commit(repo, {"docker-compose.yml": "services: {web: {image: web:1}}\n"})
        sh(repo, "checkout", "-q", self.old)
        self.config = parse_document("backout.toml", CONFIG, repo)
        self.store = Store(self.config.state_dir)
        self.platform = FakePlatform(
            repo, running={"web": "sha256:old", "db": "sha256:d"},
            definition={"name": "shop", "services": {"web": {"image": "web:1"},
                                                     "db": {"image": "mariadb:11"}}},
            images={"web:1": "sha256:new", "mariadb:11": "sha256:d", "keep": "sha256:old"})
        verdicts = {"deploy": [False], "rollback": [True]}
        for module, which in (("backout.deploy.operation", "deploy"),
                              ("backout.rollback.emergency", "rollback")):
            monkeypatch.setattr(importlib.import_module(module), "run_verify",
                                self._verify(verdicts[which]))

    @staticmethod
    def _verify(verdicts: list[bool]) -> Any:
        def run_verify(*_a: Any, **_kw: Any) -> VerifyResult:
            ok = verdicts.pop(0) if verdicts else True
            return VerifyResult([Check("container web", ok, "ok" if ok else "exited")])
        return run_verify

    def run(self, *, with_data: bool, red_actions: list[str] | None = None) -> OperationOutcome:
        pf = Preflight(ref="v2", commit=self.new, head=self.old, running={})
        plan = plan_deploy(self.config, pf, watch_seconds=0, with_data=with_data)
        ex = Executor(self.store, RunContext(environment(self.repo), self.config, self.store,
                                             self.platform))
        op = ex.start(plan)
        if red_actions is not None:  # what the watch records at a RED
            self.store.set_fact(RED_ACTIONS_FACT.format(op=op), red_actions)
        return ex.run(plan, op)

    def head(self) -> str:
        return sh(self.repo, "rev-parse", "HEAD")

    def stops_and_starts(self) -> list[tuple[Any, ...]]:
        return [c for c in self.platform.calls if c[0] in ("stop", "start")]


@pytest.fixture
def deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deploy:
    return Deploy(tmp_path, monkeypatch)


def _reports(outcome: OperationOutcome) -> dict[str, tuple[str, str | None]]:
    return {r.name: (r.status, r.reason) for r in outcome.steps}


def test_a_migration_is_rolled_back_with_its_checkpoint(deploy: Deploy) -> None:
    outcome = deploy.run(with_data=True)
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back", outcome
    # the checkpoint's dump; then, with the writers stopped, the safety dump and the restore
    assert deploy.engine.called("dump") == ["app", "app"]
    assert deploy.engine.called("restore") == ["app"]
    assert deploy.stops_and_starts() == [("stop", ("web",)), ("start", ("web",))]
    assert outcome.results["restore:app"]["counts"] == {"items": 3}
    assert deploy.head() == deploy.old
    assert deploy.platform.running_images()["web"] == "sha256:old"
    keys = list(outcome.results)
    assert keys.index("restore:app") < keys.index("rollback:checkout") < keys.index(
        "start-writers") < keys.index("rollback:verify")


def test_without_migration_only_the_code_goes_back(deploy: Deploy) -> None:
    outcome = deploy.run(with_data=False)
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"
    assert deploy.engine.called("dump") == ["app"]  # the checkpoint only
    assert deploy.engine.called("restore") == [] and deploy.stops_and_starts() == []
    reports = _reports(outcome)
    for name in ("verify app backup", "stop writers: web", "restore app", "start writers: web"):
        assert reports[name] == ("skipped", "code-only rollback: the data stays"), name
    assert deploy.head() == deploy.old


def test_a_red_rule_asking_for_the_data_brings_it_back(deploy: Deploy) -> None:
    outcome = deploy.run(with_data=False, red_actions=["rollback-with-data"])
    assert outcome.results["deploy:decide"]["with_data"] is True
    assert deploy.engine.called("restore") == ["app"]
    assert outcome.results["deploy:outcome"]["outcome"] == "rolled_back"


def test_data_that_cannot_be_restored_keeps_the_new_release_and_calls_a_human(
        deploy: Deploy) -> None:
    deploy.engine.restored = {"items": 1}  # the restore does not reproduce the counts
    outcome = deploy.run(with_data=True)
    assert outcome.results["deploy:outcome"]["outcome"] == "needs_human"
    # the safety backup went back, the writers run again, on the new release's code
    assert deploy.engine.called("restore") == ["app", "app"]
    assert deploy.stops_and_starts() == [("stop", ("web",)), ("start", ("web",))]
    assert deploy.head() == deploy.new
    reports = _reports(outcome)
    for name in (f"roll back: code to {deploy.old[:12]}", "roll back: previous images",
                 "roll back: start the previous release", "roll back: verify"):
        status, why = reports[name]
        assert status == "skipped" and why and "the data of app could not be restored" in why
    assert deploy.store.incidents()[0]["status"] == "escalated"
