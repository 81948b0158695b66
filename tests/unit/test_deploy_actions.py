"""The deploy's actions one by one, in-process: a real git repository on tmp_path, a
real store, a FakePlatform. What each one calls, returns and writes to the store,
and what it decides (build or not, roll back or not, which outcome)."""

from __future__ import annotations

import dataclasses
import importlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config, DatabaseConfig, VerifyConfig
from backout.deploy.watch import INCIDENT_FACT, RED_ACTIONS_FACT
from backout.errors import UnhealthyError, VerificationFailedError
from backout.operations import executor as executor_mod
from backout.operations.executor import RunContext, load_actions
from backout.state import Store
from backout.verify import EXPECTED_IMAGES, Check, VerifyResult
from tests.support.fakes import FakePlatform
from tests.support.gitrepo import commit, environment, new_repo, sh

load_actions()
# the module (backout.deploy re-exports names that hide it as an attribute)
OP_MODULE = importlib.import_module("backout.deploy.operation")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "project", {
        "docker-compose.yml": "services: {}\n", ".env": "A=1\n", "README": "r\n",
        "web/app.py": "1\n", "api/app.py": "1\n"})


def _config(repo: Path, **kw: Any) -> Config:
    return Config(path=repo / "backout.toml", project_dir=repo, **kw)


def _ctx(repo: Path, platform: FakePlatform, config: Config | None = None,
         store: Store | None = None, op_id: int = 0, **kw: Any) -> RunContext:
    config = config or _config(repo)
    return RunContext(environment(repo), config,
                      store or Store(config.state_dir), platform, operation_id=op_id, **kw)


# -- deploy.build --------------------------------------------------------------------

def _build_platform(repo: Path, missing: tuple[str, ...] = ()) -> FakePlatform:
    definition = {"name": "shop", "services": {
        "web": {"image": "shop/web:dev", "build": {"context": str(repo / "web")}},
        "api": {"build": {"context": str(repo / "api")}},  # image: shop-api
        "root": {"image": "root:1", "build": {"context": str(repo)}},
        "ext": {"image": "ext:1", "build": {"context": "/elsewhere/ext"}},
        "db": {"image": "mariadb:11"}}}
    images = {"shop/web:dev": "sha256:w", "shop-api": "sha256:a", "root:1": "sha256:r",
              "ext:1": "sha256:e", "mariadb:11": "sha256:m"}
    return FakePlatform(repo, definition=definition,
                        images={r: i for r, i in images.items() if r not in missing})


def _build(repo: Path, old: str, new: str, platform: FakePlatform) -> Any:
    return executor_mod.action("deploy.build")(_ctx(repo, platform), {"from": old, "to": new}, {})


def test_without_a_previous_commit_every_built_service_is_built(repo: Path) -> None:
    platform = _build_platform(repo)
    assert _build(repo, "", "HEAD", platform) == {"built": ["api", "ext", "root", "web"]}
    assert platform.called("build") == [(("api", "ext", "root", "web"),)]


def test_a_change_in_a_build_context_builds_that_service(repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    new = commit(repo, {"web/app.py": "2\n"})
    platform = _build_platform(repo)
    # root's context is the whole repository; ext's is outside it: git cannot tell
    assert _build(repo, old, new, platform) == {"built": ["ext", "root", "web"]}


def test_a_change_in_the_deployment_settings_alone_builds_nothing_git_can_tell(
        repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    new = commit(repo, {"docker-compose.yml": "services: {web: {}}\n", ".env": "A=2\n",
                        "backout.toml": "[deploy]\n", ".backout/notes": "x\n"})
    assert _build(repo, old, new, _build_platform(repo)) == {"built": ["ext"]}


def test_a_file_merely_named_like_backouts_own_is_build_input(repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    new = commit(repo, {".backout.md": "notes\n"})
    assert _build(repo, old, new, _build_platform(repo)) == {"built": ["ext", "root"]}


def test_a_missing_image_is_built_even_when_nothing_changed(repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    new = commit(repo, {"README": "2\n"})
    platform = _build_platform(repo, missing=("shop-api",))
    assert _build(repo, old, new, platform) == {"built": ["api", "ext", "root"]}
    assert ("shop-api",) in platform.called("image")


def test_a_platform_that_builds_no_image_skips_the_build_and_says_why(repo: Path) -> None:
    platform = _build_platform(repo)
    platform.builds_images = False  # type: ignore[misc]
    platform.kind = "swarm"  # type: ignore[misc]
    result = _build(repo, "", "HEAD", platform)
    assert result == {"skipped": "swarm builds no image: api, ext, root, web must be in the "
                                 "registry already (pushed with the commit)"}
    assert platform.called("build") == []


def test_nothing_to_build_calls_no_build(tmp_path: Path, repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    platform = FakePlatform(repo, definition={"services": {"db": {"image": "mariadb:11"}}})
    assert _build(repo, old, old, platform) == {"built": []}
    assert platform.called("build") == []


# -- deploy.previous, deploy.up, deploy.record ----------------------------------------

def _stack(repo: Path, image_id: str = "sha256:w") -> FakePlatform:
    return FakePlatform(repo, running={"web": image_id},
                        definition={"name": "shop", "services": {"web": {"image": "web:1"}}},
                        images={"web:1": image_id})


def test_previous_records_what_runs_once_and_reuses_it(repo: Path) -> None:
    platform = _stack(repo)
    ctx = _ctx(repo, platform)
    first = executor_mod.action("deploy.previous")(ctx, {}, {})
    assert first == {"release_id": 1, "images": {"web": "sha256:w"}}
    assert ctx.store.release(1)["note"] == "recorded by checkpoint"  # type: ignore[index]
    assert executor_mod.action("deploy.previous")(ctx, {}, {}) == first
    platform.container_image["web"] = "sha256:other"
    platform.images["web:1"] = "sha256:other"
    assert executor_mod.action("deploy.previous")(ctx, {}, {}) == {"release_id": 2,
                                                       "images": {"web": "sha256:other"}}


def test_up_converges_pulling_and_says_when_it_started(repo: Path) -> None:
    platform = _stack(repo)
    before = datetime.now(UTC)
    result = executor_mod.action("deploy.up")(_ctx(repo, platform), {}, {})
    started = datetime.fromisoformat(result["started_at"])
    assert before <= started <= datetime.now(UTC)
    assert platform.called("converge") == [(True,)]


def test_up_that_is_not_healthy_names_the_new_release(repo: Path) -> None:
    platform = _stack(repo)
    platform.fail_on("converge", UnhealthyError("web is unhealthy"))
    with pytest.raises(UnhealthyError) as info:
        executor_mod.action("deploy.up")(_ctx(repo, platform), {}, {})
    assert info.value.message == "the new release did not come up healthy: web is unhealthy"
    assert isinstance(info.value.__cause__, UnhealthyError)


def test_record_stores_the_release_and_the_images_verify_expects(repo: Path) -> None:
    ctx = _ctx(repo, _stack(repo, "sha256:new"))
    assert executor_mod.action("deploy.record")(ctx, {"ref": "v3"}, {}) == {"release_id": 1}
    release = ctx.store.release(1)
    assert release is not None and release["note"] == "deploy of v3"
    assert release["git_commit"] == sh(repo, "rev-parse", "HEAD")
    assert ctx.store.fact(EXPECTED_IMAGES) == {"web": "sha256:new"}


# -- deploy.verify, deploy.watch -------------------------------------------------------

def _verify_with(monkeypatch: pytest.MonkeyPatch, checks: list[Check]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def run_verify(env: Any, config: Any, store: Any, platform: Any, **kw: Any) -> VerifyResult:
        seen.append(kw)
        return VerifyResult(list(checks))
    monkeypatch.setattr(OP_MODULE, "run_verify", run_verify)
    return seen


@pytest.mark.parametrize(("settle", "used"), [(30, 10), (3, 3)])
def test_verify_settles_at_most_ten_seconds_and_reads_logs_from_now(
        repo: Path, monkeypatch: pytest.MonkeyPatch, settle: int, used: int) -> None:
    seen = _verify_with(monkeypatch, [Check("container web", True, "running")])
    config = _config(repo, verify=VerifyConfig(settle_seconds=settle))
    before = datetime.now(UTC)
    result = executor_mod.action("deploy.verify")(_ctx(repo, _stack(repo), config), {}, {})
    assert result == {"ok": True, "checks": [{"name": "container web", "ok": True,
                                              "detail": "running"}], "failed": []}
    [kw] = seen
    assert kw["settle"] == used and before <= kw["since"] <= datetime.now(UTC)


def test_a_failed_verification_names_every_failed_check(repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _verify_with(monkeypatch, [Check("container web", False, "exited"),
                               Check("health web", True, "200"),
                               Check("logs web", False, "3 errors")])
    with pytest.raises(VerificationFailedError) as info:
        executor_mod.action("deploy.verify")(_ctx(repo, _stack(repo)), {}, {})
    assert info.value.message == ("the new release failed verification: container web: exited; "
                                  "logs web: 3 errors")


def test_watch_is_given_the_seconds_the_operation_and_the_listener(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []

    def watch(env: Any, config: Any, store: Any, platform: Any, seconds: float, op_id: int,
              *, on_decision: Any) -> dict[str, Any]:
        seen.append((seconds, op_id, on_decision))
        return {"watched_s": seconds}

    def listener(decision: Any, elapsed: float) -> None:
        pass
    monkeypatch.setattr(OP_MODULE, "watch", watch)
    ctx = _ctx(repo, _stack(repo), op_id=42, on_decision=listener)
    assert executor_mod.action("deploy.watch")(ctx, {"seconds": 45}, {}) == {"watched_s": 45.0}
    assert seen == [(45.0, 42, listener)] and isinstance(seen[0][0], float)


# -- deploy.decide ---------------------------------------------------------------------

def _operation(store: Store, failed: str | None = "deploy:verify",
               detail: Any = None) -> int:
    keys = ["deploy:up", "deploy:verify", "deploy:decide"]
    op = store.create_operation("deploy", {}, {}, [(k, f"step {k}", "") for k in keys])
    if failed is not None:
        store.mark_step(op, keys.index(failed), "failed",
                        {"error": "container web: exited"} if detail is None else detail)
    return op


def _decide(repo: Path, platform: FakePlatform, *, head: str, results: dict[str, Any],
            store: Store | None = None, op_id: int | None = None,
            with_data: bool = False) -> tuple[Any, Store, int]:
    config = _config(repo)
    store = store or Store(config.state_dir)
    op = op_id if op_id is not None else _operation(store)
    result = executor_mod.action("deploy.decide")(_ctx(repo, platform, config, store, op),
                                      {"head": head, "with_data": with_data}, results)
    return result, store, op


PREVIOUS = {"deploy:previous": {"release_id": 4, "images": {"web": "sha256:w"}}}


def test_nothing_changed_nothing_to_roll_back(repo: Path) -> None:
    head = sh(repo, "rev-parse", "HEAD")
    result, store, _op = _decide(repo, _stack(repo), head=head, results=PREVIOUS)
    assert result == {"needed": False, "reason": "step deploy:verify: container web: exited"}
    assert store.open_incidents() == []


def test_the_reason_without_a_failed_step_or_without_its_error(repo: Path) -> None:
    head = sh(repo, "rev-parse", "HEAD")
    store = Store(_config(repo).state_dir)
    result, _s, _o = _decide(repo, _stack(repo), head=head, results=PREVIOUS, store=store,
                             op_id=_operation(store, failed=None))
    assert result["reason"] == "an earlier step failed"
    result, _s, _o = _decide(repo, _stack(repo), head=head, results=PREVIOUS, store=store,
                             op_id=_operation(store, detail={"other": 1}))
    assert result["reason"] == "step deploy:verify: failed"
    result, _s, _o = _decide(repo, _stack(repo), head=head, results=PREVIOUS, store=store,
                             op_id=_operation(store, detail=["not", "a", "dict"]))
    assert result["reason"] == "step deploy:verify: failed"


def test_a_moved_head_is_rolled_back_and_opens_an_incident(repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    commit(repo, {"README": "2\n"})
    result, store, op = _decide(repo, _stack(repo), head=old, results=PREVIOUS)
    reason = "step deploy:verify: container web: exited"
    [incident] = store.incidents()
    assert result == {"needed": True, "reason": reason, "incident": incident["id"],
                      "with_data": False, "to_release": 4}
    assert (incident["rule"], incident["level"], incident["severity"], incident["reason"]) == (
        "deploy", "RED", "SEV-1", reason)
    assert incident["timeline"][0]["detail"]["values"] == {"operation": op}
    assert incident["timeline"][-1]["kind"] == "action"
    assert incident["timeline"][-1]["detail"] == {"rollback": "previous release 4",
                                                  "automatic": True, "reason": reason}
    assert store.fact(INCIDENT_FACT.format(op=op)) == incident["id"]


def test_a_changed_running_image_is_rolled_back(repo: Path) -> None:
    head = sh(repo, "rev-parse", "HEAD")
    result, _store, _op = _decide(repo, _stack(repo, "sha256:new"), head=head,
                                  results=PREVIOUS)
    assert result["needed"] is True
    # no previous commit to compare: only the images tell
    result, _store, _op = _decide(repo, _stack(repo, "sha256:new"), head="", results=PREVIOUS)
    assert result["needed"] is True
    result, _store, _op = _decide(repo, _stack(repo), head="", results=PREVIOUS)
    assert result["needed"] is False


def test_without_the_previous_release_it_never_guesses(repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    commit(repo, {"README": "2\n"})
    result, store, _op = _decide(repo, _stack(repo), head=old, results={})
    assert result == {"needed": False, "reason": "step deploy:verify: container web: exited",
                      "problem": "no previous release recorded"}
    assert store.open_incidents() == []


def test_the_watchs_incident_is_reused_and_its_red_actions_decide_the_data(repo: Path) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    commit(repo, {"README": "2\n"})
    store = Store(_config(repo).state_dir)
    op = _operation(store)
    iid = store.open_incident(rule="red-errors", level="RED", severity="SEV-1", reason="x",
                              values={})
    store.set_fact(INCIDENT_FACT.format(op=op), iid)
    store.set_fact(RED_ACTIONS_FACT.format(op=op), ["rollback", "rollback-with-data"])
    result, _s, _o = _decide(repo, _stack(repo), head=old, results=PREVIOUS, store=store,
                             op_id=op)
    assert result["incident"] == iid and result["with_data"] is True
    assert len(store.incidents()) == 1
    assert [e["kind"] for e in store.incidents()[0]["timeline"]] == ["detected", "action"]


@pytest.mark.parametrize(("red", "flag", "with_data"), [
    (["rollback"], False, False), (["rollback"], True, True), (None, True, True),
    (["rollback-with-data"], False, True)])
def test_with_data_from_the_flag_or_the_red_rule(repo: Path, red: list[str] | None, flag: bool,
                                                 with_data: bool) -> None:
    old = sh(repo, "rev-parse", "HEAD")
    commit(repo, {"README": "2\n"})
    store = Store(_config(repo).state_dir)
    op = _operation(store)
    if red is not None:
        store.set_fact(RED_ACTIONS_FACT.format(op=op), red)
    result, _s, _o = _decide(repo, _stack(repo), head=old, results=PREVIOUS, store=store,
                             op_id=op, with_data=flag)
    assert result["with_data"] is with_data


# -- deploy.rollback_step --------------------------------------------------------------

class Inner:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []
        monkeypatch.setitem(executor_mod._ACTIONS, "test.inner", self)

    def __call__(self, ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
        self.calls.append((params, results))
        return {"inner": params}


def _step(repo: Path, results: dict[str, Any], *, fill: str | None = None, data: bool = False,
          after_data: bool = False, params: dict[str, Any] | None = None,
          config: Config | None = None) -> Any:
    step_params = {"action": "test.inner", "params": params or {"x": 1}, "fill": fill,
                   "data": data, "after_data": after_data}
    return executor_mod.action("deploy.rollback_step")(_ctx(repo, _stack(repo), config), step_params,
                                           results)


NEEDED = {"needed": True, "with_data": False, "reason": "r", "to_release": 4}


def test_no_rollback_decided_no_rollback_step(repo: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(monkeypatch)
    assert _step(repo, {}) == {"skipped": "nothing to roll back"}
    assert _step(repo, {"deploy:decide": {"needed": False}}) == {"skipped": "nothing to roll back"}
    assert inner.calls == []


def test_a_code_only_rollback_skips_the_data_steps(repo: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(monkeypatch)
    results = {"deploy:decide": NEEDED}
    assert _step(repo, results, data=True) == {"skipped": "code-only rollback: the data stays"}
    assert inner.calls == []
    assert _step(repo, results, after_data=True) == {"inner": {"x": 1}}
    assert inner.calls == [({"x": 1}, results)]


def test_with_data_the_data_steps_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(monkeypatch)
    assert _step(repo, {"deploy:decide": {**NEEDED, "with_data": True}},
                 data=True) == {"inner": {"x": 1}}
    assert len(inner.calls) == 1


def test_the_previous_release_is_not_started_on_unrestored_data(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(monkeypatch)
    config = _config(repo, databases={"mysql": DatabaseConfig("mysql", "mysql", "db"),
                                      "redis": DatabaseConfig("redis", "redis", "cache")})
    decision = {"deploy:decide": {**NEEDED, "with_data": True}}
    restored = {"counts": {}}
    cases = [({}, "mysql, redis"),
             ({"restore:mysql": restored}, "redis"),
             ({"restore:mysql": restored, "restore:redis": {"skipped": "refused"}}, "redis")]
    for results, names in cases:
        result = _step(repo, {**decision, **results}, after_data=True, config=config)
        assert result["skipped"].startswith(f"the data of {names} could not be restored")
        assert "a human decides" in result["skipped"]
    assert inner.calls == []
    done = {**decision, "restore:mysql": restored, "restore:redis": restored}
    assert _step(repo, done, after_data=True, config=config) == {"inner": {"x": 1}}
    # a data step itself (the writers' start) runs whatever the restores did
    assert _step(repo, decision, data=True, config=config) == {"inner": {"x": 1}}


def test_the_previous_images_are_filled_in(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(monkeypatch)
    params = {"rebuild": []}
    _step(repo, {"deploy:decide": NEEDED, **PREVIOUS}, fill="images", params=params)
    assert inner.calls[0][0] == {"rebuild": [], "images": {"web": "sha256:w"}}
    assert params == {"rebuild": []}  # the journaled plan's params are not changed


def test_the_backup_is_resolved_for_the_database(repo: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Inner(monkeypatch)
    seen: list[tuple[str, str]] = []

    def resolve(env: Any, config: Any, store: Any, db: DatabaseConfig, ref: str) -> Any:
        seen.append((db.name, ref))
        return {"artifact": "/b/mysql.sql.zst", "section": {"type": "mysql"}}
    monkeypatch.setattr(OP_MODULE, "resolve_backup", resolve)
    config = _config(repo, databases={"mysql": DatabaseConfig("mysql", "mysql", "db")})
    _step(repo, {"deploy:decide": {**NEEDED, "with_data": True}}, fill="backup", data=True,
          params={"database": "mysql", "set_id": "S1"}, config=config)
    assert seen == [("mysql", "S1")]
    assert inner.calls[0][0] == {"database": "mysql", "set_id": "S1",
                                 "artifact": "/b/mysql.sql.zst", "section": {"type": "mysql"}}


# -- deploy.outcome --------------------------------------------------------------------

def _outcome(repo: Path, results: dict[str, Any], *, decide_status: str | None = None,
             incident: bool = False) -> tuple[Any, Store, int | None]:
    config = _config(repo)
    store = Store(config.state_dir)
    op = store.create_operation("deploy", {}, {}, [("deploy:decide", "decide", "")])
    if decide_status is not None:
        store.mark_step(op, 0, decide_status, None)
    iid = None
    if incident:
        iid = store.open_incident(rule="deploy", level="RED", severity="SEV-1", reason="x",
                                  values={})
        store.set_fact(INCIDENT_FACT.format(op=op), iid)
    for _ in range(2):
        store.add_release(git_commit=None, git_dirty=False, diff_path=None,
                          compose_config={}, services={})
    ctx = dataclasses.replace(_ctx(repo, _stack(repo), config, store), operation_id=op)
    return executor_mod.action("deploy.outcome")(ctx, {"ref": "v3"}, results), store, iid


def _status(store: Store, release_id: int) -> str:
    release = store.release(release_id)
    assert release is not None
    return str(release["status"])


def test_a_watched_release_is_deployed(repo: Path) -> None:
    before = time.time()
    result, store, _iid = _outcome(repo, {"record-release": {"release_id": 2},
                                          "deploy:watch": {"watched_s": 0}})
    assert result["outcome"] == "deployed" and result["release_id"] == 2
    assert result["incident"] is None and result["reason"] is None
    assert before <= result["finished_at"] <= time.time()
    assert _status(store, 2) == "deployed" and _status(store, 1) == "recorded"
    [event] = [e for e in store.events(5) if e["action"].startswith("deploy.")]
    assert event["action"] == "deploy.deployed" and event["target"] == "deploy of v3"
    assert event["detail"] == {"release_id": 2, "incident": None}


def test_a_decision_that_could_not_be_made_needs_a_human(repo: Path) -> None:
    result, store, _iid = _outcome(repo, {"record-release": {"release_id": 2}},
                                   decide_status="failed")
    assert result["outcome"] == "needs_human" and _status(store, 2) == "failed"


def test_a_failure_before_anything_changed_is_failed(repo: Path) -> None:
    result, store, _iid = _outcome(repo, {}, decide_status="skipped")
    assert result["outcome"] == "failed" and result["release_id"] is None
    assert _status(store, 1) == "recorded" and _status(store, 2) == "recorded"
    result, store, _iid = _outcome(repo, {"deploy:decide": {"needed": False, "reason": "why"},
                                          "record-release": {"release_id": 2}})
    assert result["outcome"] == "failed" and result["reason"] == "why"
    assert _status(store, 2) == "failed"
    event = next(e for e in store.events(5) if e["action"] == "deploy.failed")  # newest
    assert event["reason"] == "why"


def test_a_verified_rollback_is_rolled_back_and_resolves_the_incident(repo: Path) -> None:
    decision = {"needed": True, "reason": "RED", "to_release": 1}
    result, store, iid = _outcome(repo, {
        "record-release": {"release_id": 2}, "deploy:decide": decision,
        "rollback:verify": {"ok": True, "checks": [{}, {}, {}]}}, incident=True)
    assert result == {"outcome": "rolled_back", "release_id": 2, "incident": iid,
                      "reason": "RED", "finished_at": result["finished_at"]}
    assert _status(store, 2) == "rolled_back"
    [incident] = store.incidents()
    assert incident["status"] == "resolved"
    assert [(e["kind"], e["detail"]) for e in incident["timeline"][1:]] == [
        ("verified", {"checks": 3}), ("resolved", {"reason": "rolled back to release 1"})]
    [event] = [e for e in store.events(5) if e["action"] == "deploy.rolled_back"]
    assert event["detail"] == {"release_id": 2, "incident": iid} and event["reason"] == "RED"


@pytest.mark.parametrize("verify", [None, {"skipped": "the data of mysql could not be "
                                                      "restored"}])
def test_a_rollback_that_did_not_verify_is_escalated(repo: Path,
                                                     verify: dict[str, Any] | None) -> None:
    results: dict[str, Any] = {"record-release": {"release_id": 2},
                               "deploy:decide": {"needed": True, "reason": "RED"}}
    if verify is not None:
        results["rollback:verify"] = verify
    result, store, _iid = _outcome(repo, results, incident=True)
    assert result["outcome"] == "needs_human" and _status(store, 2) == "failed"
    [incident] = store.incidents()
    assert incident["status"] == "escalated"
    assert incident["timeline"][-1]["kind"] == "escalated"
    assert incident["timeline"][-1]["detail"] == {"error": "the rollback did not verify"}
