"""Every step of the guarded deploy's plan, pure: its key (what results and resume
find it by), its action, when it runs (normally, only after a failure, always), the
parameters the actions read, and the facts its prose tells the operator."""

from __future__ import annotations

from pathlib import Path

from backout.config.model import Config, DatabaseConfig, RepositoryConfig, ServiceConfig
from backout.deploy import Preflight, plan_deploy
from backout.operations.plan import Plan, Step

HEAD, NEW = "a" * 40, "c" * 40


def _config(*, writers: bool = True, databases: tuple[str, ...] = ("mysql",)) -> Config:
    services = {"web": ServiceConfig("web", writes_to=databases if writers else ()),
                "worker": ServiceConfig("worker", writes_to=databases[:1] if writers else ()),
                "nginx": ServiceConfig("nginx", kind="proxy", writes_to=databases)}
    return Config(path=Path("/p/backout.toml"), project_dir=Path("/p"), services=services,
                  databases={d: DatabaseConfig(d, "mysql", d) for d in databases})


def _pf(*, dirty: bool = False, head: str | None = HEAD) -> Preflight:
    return Preflight(ref="v3", commit=NEW, head=head, dirty=dirty, running={"web": "sha256:1"})


def _by_key(plan: Plan) -> dict[str, Step]:
    return {s.key: s for s in plan.steps}


def test_the_whole_plan_with_a_checkpoint_and_saved_changes() -> None:
    plan = plan_deploy(_config(), _pf(dirty=True), watch_seconds=60, with_data=False)
    normal, on_failure, always = "", "on_failure", "always"
    table = [(s.key, s.action, on_failure if s.on_failure else always if s.always else normal)
             for s in plan.steps]
    assert table == [
        ("deploy:previous", "deploy.previous", normal),
        ("cleanup", "backup.cleanup", normal),
        ("dump:mysql", "backup.dump", normal),
        ("publish", "backup.publish", normal),
        ("discard", "backup.discard", always),
        ("record-checkpoint", "backup.record_checkpoint", normal),
        ("save-changes", "emergency.save_changes", normal),
        ("checkout", "emergency.checkout", normal),
        ("deploy:build", "deploy.build", normal),
        ("deploy:up", "deploy.up", normal),
        ("record-release", "deploy.record", normal),
        ("deploy:verify", "deploy.verify", normal),
        ("deploy:watch", "deploy.watch", normal),
        ("deploy:decide", "deploy.decide", on_failure),
        ("verify:mysql", "deploy.rollback_step", on_failure),
        ("stop-writers", "deploy.rollback_step", on_failure),
        ("safety:mysql", "deploy.rollback_step", on_failure),
        ("restore:mysql", "deploy.rollback_step", on_failure),
        ("undo:mysql", "deploy.rollback_step", on_failure),
        ("rollback:checkout", "deploy.rollback_step", on_failure),
        ("rollback:images", "deploy.rollback_step", on_failure),
        ("rollback:up", "deploy.rollback_step", on_failure),
        ("start-writers", "deploy.rollback_step", on_failure),
        ("rollback:verify", "deploy.rollback_step", on_failure),
        ("deploy:outcome", "deploy.outcome", always),
    ]
    set_id = plan.params["set_id"]
    assert set_id and plan.params == {"ref": "v3", "commit": NEW, "previous_commit": HEAD,
                                      "set_id": set_id, "with_data": False, "watch_seconds": 60}
    assert plan.kind == "deploy"
    step = _by_key(plan)
    assert step["deploy:previous"].params == {}
    assert step["dump:mysql"].params == {"database": "mysql", "set_id": set_id}
    publish = step["publish"].params
    assert (publish["quiesce"], publish["kind"], publish["label"]) == (
        False, "checkpoint", "before deploy of v3")
    assert step["save-changes"].params == {"target": "v3"}
    assert step["checkout"].params == {"commit": NEW}
    assert step["deploy:build"].params == {"from": HEAD, "to": NEW}
    assert step["deploy:up"].params == {}
    assert step["record-release"].params == {"ref": "v3"}
    assert step["deploy:verify"].params == {}
    assert step["deploy:watch"].params == {"seconds": 60}
    assert step["deploy:decide"].params == {"head": HEAD, "with_data": False}
    assert step["deploy:outcome"].params == {"ref": "v3"}


def test_the_rollback_steps_wrap_the_rollback_actions() -> None:
    plan = plan_deploy(_config(), _pf(), watch_seconds=60, with_data=True)
    set_id = plan.params["set_id"]
    step = _by_key(plan)
    wrapped = {k: (s.params["action"], s.params["fill"], s.params["data"],
                   s.params["after_data"]) for k, s in step.items()
               if s.action == "deploy.rollback_step"}
    assert wrapped == {
        "verify:mysql": ("rollback.db.verify", "backup", True, False),
        "stop-writers": ("compose.stop", None, True, False),
        "safety:mysql": ("rollback.db.safety", None, True, False),
        "restore:mysql": ("rollback.db.restore", "backup", True, False),
        "undo:mysql": ("rollback.db.undo", None, True, False),
        "rollback:checkout": ("emergency.checkout", None, False, True),
        "rollback:images": ("emergency.images", "images", False, True),
        "rollback:up": ("emergency.up", None, False, True),
        "start-writers": ("compose.start", None, True, False),
        "rollback:verify": ("emergency.verify", None, False, True),
    }
    inner = {k: step[k].params["params"] for k in wrapped}
    assert inner["verify:mysql"] == {"database": "mysql", "set_id": set_id}
    assert inner["stop-writers"] == {"services": ["web", "worker"]}  # app writers, no proxy
    assert inner["safety:mysql"]["set_id"] == f"{set_id}-safety-mysql"
    assert inner["restore:mysql"]["set_id"] == set_id
    assert inner["undo:mysql"]["set_id"] == f"{set_id}-safety-mysql"
    assert inner["rollback:checkout"] == {"commit": HEAD}
    assert inner["rollback:images"] == {"rebuild": []}
    assert inner["rollback:up"] == {}
    assert inner["start-writers"] == {"services": ["web", "worker"],
                                      "stop_step": "stop-writers"}
    assert inner["rollback:verify"] == {}
    # the names and reasons the operator reads are those of the wrapped steps
    assert step["rollback:checkout"].name == f"roll back: code to {HEAD[:12]}"
    assert step["start-writers"].name == "start writers: web, worker"
    assert plan.params["with_data"] is True
    assert step["deploy:decide"].params["with_data"] is True


def test_with_migration_the_data_steps_say_nothing_about_the_red_rule() -> None:
    with_data = _by_key(plan_deploy(_config(), _pf(), watch_seconds=60, with_data=True))
    code_only = _by_key(plan_deploy(_config(), _pf(), watch_seconds=60, with_data=False))
    clause = "(only if the RED rule's action is rollback-with-data)"
    for key in ("verify:mysql", "safety:mysql", "restore:mysql"):
        assert code_only[key].reason.endswith(f"'s {clause}" if key == "restore:mysql"
                                              else f") {clause}" if key == "verify:mysql"
                                              else f"damaged {clause}")
        assert with_data[key].reason.replace(with_data["publish"].params["set_id"], "S") == \
            code_only[key].reason.replace(code_only["publish"].params["set_id"], "S"
                                          ).removesuffix(f" {clause}")


def test_no_writers_no_stop_and_start_steps() -> None:
    plan = plan_deploy(_config(writers=False), _pf(), watch_seconds=60, with_data=True)
    keys = [s.key for s in plan.steps]
    assert "stop-writers" not in keys and "start-writers" not in keys
    assert keys[keys.index("deploy:decide"):] == [
        "deploy:decide", "verify:mysql", "safety:mysql", "restore:mysql", "undo:mysql",
        "rollback:checkout", "rollback:images", "rollback:up", "rollback:verify",
        "deploy:outcome"]


def test_two_databases_are_checkpointed_and_restored_together() -> None:
    plan = plan_deploy(_config(databases=("mysql", "redis")), _pf(), watch_seconds=60,
                       with_data=True)
    keys = [s.key for s in plan.steps]
    assert keys.index("dump:mysql") < keys.index("dump:redis") < keys.index("checkout")
    assert [k for k in keys if k.startswith("restore:")] == ["restore:mysql", "restore:redis"]
    assert _by_key(plan)["publish"].params["databases"] == ["mysql", "redis"]


def test_a_label_names_the_checkpoint() -> None:
    plan = plan_deploy(_config(), _pf(), watch_seconds=60, with_data=False, label="friday")
    assert _by_key(plan)["publish"].params["label"] == "friday"
    assert _by_key(plan)["record-checkpoint"].params["label"] == "friday"


def test_without_databases_there_is_no_checkpoint_and_no_data_step() -> None:
    plan = plan_deploy(_config(databases=()), _pf(), watch_seconds=0, with_data=True)
    keys = [s.key for s in plan.steps]
    assert keys == ["deploy:previous", "checkout", "deploy:build", "deploy:up",
                    "record-release", "deploy:verify", "deploy:watch", "deploy:decide",
                    "rollback:checkout", "rollback:images", "rollback:up", "rollback:verify",
                    "deploy:outcome"]
    assert plan.params["set_id"] is None
    assert plan.summary == f"deploy v3 ({NEW[:12]}), watched for 0s"
    assert _by_key(plan)["deploy:watch"].reason == "no watch period (--watch 0)"


def test_summary_downtime_and_reasons_carry_the_facts() -> None:
    plan = plan_deploy(_config(), _pf(), watch_seconds=90, with_data=False)
    assert plan.summary == f"deploy v3 ({NEW[:12]}), watched for 90s, checkpoint first"
    # no definition given: no switch is planned, and the downtime claims none
    assert "start-first" not in plan.downtime and "replaced one by one" in plan.downtime
    # the rollback path switches nothing start-first: it says so
    assert plan.downtime.endswith("if it is rolled back, the services whose image changes "
                                  "are replaced one by one, stop-first")  # no data
    with_data = plan_deploy(_config(), _pf(), watch_seconds=90, with_data=True)
    assert with_data.downtime.endswith("stop-first, with app services stopped while the databases "
                                       "are restored")
    step = _by_key(plan)
    assert step["checkout"].name == f"switch code to {NEW[:12]}"
    assert step["checkout"].reason == (f"HEAD {HEAD[:12]} -> {NEW[:12]} (v3; detached: no "
                                       "branch is moved)")
    assert step["deploy:watch"].reason.startswith("90s under the decision matrix")
    assert "RED means roll back" in step["deploy:watch"].reason
    assert "in dependency order" in step["deploy:up"].reason
    assert "--wait" in step["deploy:up"].reason


def test_no_head_commit_rolls_back_to_nothing_named() -> None:
    plan = plan_deploy(_config(databases=()), _pf(head=None), watch_seconds=0,
                       with_data=False)
    step = _by_key(plan)
    assert plan.params["previous_commit"] == ""
    assert step["deploy:build"].params["from"] == ""
    assert step["deploy:decide"].params["head"] == ""
    assert step["rollback:checkout"].params["params"] == {"commit": ""}


def test_a_definition_with_a_stateless_service_switches_it_before_up() -> None:
    config = Config(path=Path("/p/backout.toml"), project_dir=Path("/p"),
                    services={"web": ServiceConfig("web")})
    definition = {"name": "p", "services": {"web": {"image": "web:2", "healthcheck": {
        "test": ["CMD", "true"]}}}}
    plan = plan_deploy(config, _pf(), watch_seconds=0, with_data=False, definition=definition)
    keys = [s.key for s in plan.steps]
    switched = [k for k in keys if k.startswith("switch-")]
    assert switched and all(keys.index("deploy:build") < keys.index(k) < keys.index("deploy:up")
                            for k in switched)
    assert "(those switched start-first above are up to date)" in _by_key(plan)[
        "deploy:up"].reason


def test_an_off_site_copy_failure_does_not_stop_a_deploy() -> None:
    config = _config()
    config = Config(path=config.path, project_dir=config.project_dir, services=config.services,
                    databases=config.databases,
                    repositories={"offsite": RepositoryConfig("offsite", "/r")})
    plan = plan_deploy(config, _pf(), watch_seconds=60, with_data=False)
    copy = next(s for s in plan.steps if s.action == "backup.copy")
    assert copy.params["soft"] is True and copy.params["repositories"] == ["offsite"]
    keys = [s.key for s in plan.steps]
    assert keys.index("publish") < keys.index(copy.key) < keys.index("checkout")


def test_every_reason_tells_the_operator_the_fact_that_matters() -> None:
    step = _by_key(plan_deploy(_config(), _pf(dirty=True), watch_seconds=60, with_data=True))
    facts = {
        "deploy:previous": ["release to come back to", "backout's tags", "nothing can prune"],
        "save-changes": ["patch under .backout/saved", "git stash", "nothing is discarded"],
        "deploy:build": ["build context changed", "image is missing"],
        "deploy:up": ["docker compose up -d", "as its --wait would", "dependency order"],
        "record-release": ["image IDs", "retained"],
        "deploy:verify": ["post-deploy checks: containers", "health URLs", "logs", "databases"],
        "deploy:decide": ["whether anything changed", "the data too", "opens the incident"],
        "rollback:checkout": ["previous release's commit"],
        "rollback:images": ["retained images", "nothing rebuilt or pulled"],
        "rollback:up": ["at the previous commit", "no build, no pull"],
        "rollback:verify": ["post-rollback checks", "a human decides"],
        "deploy:outcome": ["release status", "incident timeline"],
    }
    for key, words in facts.items():
        for word in words:
            assert word in step[key].reason, (key, word)
    assert step["deploy:outcome"].name == "record the outcome"
    assert step["deploy:decide"].name == "decide the rollback"
    assert step["save-changes"].name == "save uncommitted changes"
    assert [step[k].name for k in ("deploy:previous", "deploy:build", "deploy:up",
                                    "record-release", "deploy:verify", "deploy:watch")] == [
        "record the release running now", "build images", "start the new release",
        "record the new release", "verify the new release", "watch the new release"]
    assert [step[k].name for k in ("rollback:images", "rollback:up", "rollback:verify")] == [
        "roll back: previous images", "roll back: start the previous release",
        "roll back: verify"]
