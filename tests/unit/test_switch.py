"""The start-first switch (issue 14): the pure choice of order with its reasons, and
the switch steps run by the real executor on a real journal against an in-process
platform that can hold two containers of a service. What runs in which order, what a
never-ready release leaves (the old container, untouched), and that a crash at any
step, then resume, ends with exactly one container on the target image."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from backout import proc
from backout import switch as switching
from backout.config import Config, DatabaseConfig, ServiceConfig
from backout.errors import ExternalError, UnhealthyError, UsageError
from backout.operations import executor as executor_module
from backout.operations import interrupt
from backout.operations.executor import Executor
from backout.operations.plan import Plan
from backout.platforms import base as platform_base
from backout.policy import switch as policy
from backout.rollback import service as service_rollback
from backout.rollback.common import target_ref
from backout.state import Store
from backout.verify import EXPECTED_IMAGES
from tests.support.fakes import run_context
from tests.support.switchfake import SwitchFakePlatform

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64

# ------------------------------------------------------------------ the order, pure


def test_a_plain_stateless_service_switches_start_first() -> None:
    chosen = policy.choose("web", {"image": "web:1", "ports": [{"target": 80}]})
    assert chosen.order == policy.START_FIRST and chosen.reasons == ()
    assert chosen.describe() == "start-first"


@pytest.mark.parametrize(("spec", "database", "reason"), [
    ({"ports": [{"target": 80, "published": "8080", "host_ip": "127.0.0.1"}]}, False,
     "a fixed host port (8080)"),
    ({"container_name": "web"}, False, "container_name web"),
    ({"deploy": {"replicas": 3}}, False, "3 replicas"),
    ({}, True, "a database"),
    ({"volumes": [{"type": "volume", "source": "data", "target": "/data"}]}, False,
     "volume data mounted read-write"),
    ({"deploy": {"update_config": {"order": "stop-first"}}}, False,
     "deploy.update_config.order is stop-first"),
])
def test_each_reason_for_stop_first_is_named(spec: dict[str, Any], database: bool,
                                             reason: str) -> None:
    chosen = policy.choose("web", spec, database_services={"web"} if database else ())
    assert chosen.order == policy.STOP_FIRST
    assert len(chosen.reasons) == 1 and chosen.reasons[0].startswith(reason)


def test_what_does_not_block_start_first() -> None:
    spec = {"ports": [{"target": 80}],  # an ephemeral host port: each container its own
            "volumes": [{"type": "volume", "source": "cache", "target": "/c", "read_only": True},
                        {"type": "bind", "source": "/etc/app", "target": "/etc/app"}],
            "deploy": {"update_config": {"order": "start-first"}}}
    assert policy.choose("web", spec, database_services={"db"}).order == policy.START_FIRST


def test_order_flag_beats_the_config_which_beats_the_default() -> None:
    soft = {"volumes": [{"type": "volume", "source": "data", "target": "/data"}]}
    assert policy.choose("web", {}, configured="stop-first").order == policy.STOP_FIRST
    assert policy.choose("web", {}, configured="stop-first",
                         requested="start-first").source == "--order"
    forced = policy.choose("web", soft, configured="start-first")
    assert forced.order == policy.START_FIRST and forced.source == "backout.toml"
    assert forced.reasons[0].startswith("overrides: volume data")


def test_start_first_over_a_fixed_port_is_refused_with_the_fix() -> None:
    spec = {"ports": [{"target": 80, "published": "8080"}]}
    with pytest.raises(UsageError) as err:
        policy.choose("web", spec, requested="start-first")
    assert "web cannot switch start-first: a fixed host port (8080)" in err.value.message
    assert err.value.fix is not None and "--order" in err.value.fix


@pytest.mark.parametrize(("value", "seconds"), [
    ("20s", 20.0), ("1m30s", 90.0), ("500ms", 0.5), (7, 7.0), (None, 10.0), ("soon", 10.0)])
def test_compose_durations(value: Any, seconds: float) -> None:
    assert policy.duration_seconds(value, 10.0) == seconds


def test_ready_timeout_follows_the_healthcheck() -> None:
    spec = {"healthcheck": {"interval": "2s", "timeout": "10s", "retries": 3,
                            "start_period": "60s"}}
    assert policy.ready_timeout(spec) == 60 + 4 * 12 + 10
    assert policy.ready_timeout({}) == 4 * 60 + 10  # Docker's defaults: 30 s + 30 s
    assert policy.ready_timeout(spec, configured=15) == 15


NGINX_STATIC = "server {\n  location / { proxy_pass http://app:8080; }\n}\n"
NGINX_RESOLVER = ("server {\n  resolver 127.0.0.11 valid=2s ipv6=off;\n"
                  "  set $u app:8080;\n  location / { proxy_pass http://$u; }\n}\n")


@pytest.mark.parametrize(("text", "seconds"), [
    (NGINX_RESOLVER, 60.0),  # nginx's default
    ("proxy_connect_timeout 5s;\n", 5.0),
    ("proxy_connect_timeout 500ms;\n", 0.5),
    ("proxy_connect_timeout 2;\n  proxy_connect_timeout 1m;\n", 60.0),  # the longest
    ("# proxy_connect_timeout 1s;\n", 60.0),  # a comment sets nothing
    ("  proxy_connect_timeout   3s ;\n", 3.0),
    ("location / { proxy_connect_timeout 1s; proxy_pass http://$u; }\n", 1.0),  # one line
    ("proxy_pass http://a; proxy_connect_timeout 1m30s;\n", 90.0),
    ("proxy_connect_timeout 1h;\n", 3600.0),
    ("proxy_connect_timeout 5x;\n", 60.0),  # not nginx time: as if unset
])
def test_nginx_connect_timeout(text: str, seconds: float) -> None:
    assert policy.nginx_connect_timeout(text) == seconds


def test_nginx_configurations_are_told_apart() -> None:
    assert policy.nginx_mode(NGINX_STATIC, "app") == ("nginx-reload", 0.0)
    assert policy.nginx_mode(NGINX_RESOLVER, "app") == ("nginx-resolver", 2.0)
    assert policy.nginx_mode(NGINX_RESOLVER.replace("valid=2s", "valid=1m"), "app")[1] == 60
    assert policy.nginx_mode(NGINX_STATIC, "api") is None
    assert policy.nginx_mode("# proxy_pass http://app:8080;\n", "app") is None
    assert policy.nginx_mode(NGINX_STATIC.replace("app:", "my-app:"), "app") is None


# ------------------------------------------------------------------ the switch, run


def stack(tmp: Path, *, proxy: str | None = None, new_health: list[str | None] | None = None,
          spec: dict[str, Any] | None = None) -> tuple[Config, Store, SwitchFakePlatform]:
    services = {"web": ServiceConfig("web"), "worker": ServiceConfig("worker")}
    if proxy:
        services["nginx"] = ServiceConfig("nginx", kind="proxy", proxy=proxy,
                                          proxy_dns_valid_seconds=5)
    config = Config(path=tmp / "backout.toml", project_dir=tmp, services=services,
                    databases={"db": DatabaseConfig("db", "mysql", "db")})
    store = Store(config.state_dir)
    definition = {"name": tmp.name, "services": {
        "web": {"image": "web:latest", "stop_grace_period": "20s", **(spec or {})},
        "worker": {"image": "worker:latest"}, "nginx": {"image": "nginx"},
        "db": {"image": "mariadb"}}}
    platform = SwitchFakePlatform(tmp, running={"web": NEW, "worker": NEW, "nginx": "sha256:n"},
                                  images={"web:latest": NEW, "web:v1": OLD},
                                  definition=definition,
                                  new_health={"web": new_health or ["starting", "healthy"]})
    store.add_release(git_commit="c1", git_dirty=False, diff_path=None, compose_config={},
                      services={"web": {"image_id": OLD}, "worker": {"image_id": NEW}})
    return config, store, platform


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """No real sleeps; exec'd proxy reloads are recorded, not run."""
    monkeypatch.setattr(switching, "POLL", 0.0)
    monkeypatch.setattr(switching, "READY_POLL", 0.0)
    monkeypatch.setattr(switching, "WORKERS_POLL", 0.0)
    monkeypatch.setattr(switching, "RELOAD_SETTLE", 0.0)
    execs: list[list[str]] = []

    def fake_run(_env: Any, argv: list[str], **_kw: Any) -> proc.Result:
        execs.append(list(argv))
        return proc.Result(list(argv), 0, "", "", 0.0)

    monkeypatch.setattr(switching.proc, "run", fake_run)
    interrupt.reset()
    return execs


def run(store: Store, plan: Plan, config: Config, platform: SwitchFakePlatform,
        op_id: int | None = None) -> Any:
    ex = Executor(store, run_context(store, config, platform))
    return ex.run(plan, ex.start(plan) if op_id is None else op_id)


def test_the_rollback_plan_is_start_first_with_its_reasons(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert [s.key for s in plan.steps] == [
        "switch-start:web", "switch-ready:web", "switch-proxies:web", "switch-drain:web",
        "switch-abort:web", "verify-service:web", "record-expected"]
    assert [s.key for s in plan.steps if s.on_failure] == ["switch-abort:web"]
    assert not any(s.always for s in plan.steps)
    assert plan.params["switch"] == {"order": "start-first", "reasons": [], "source": "default"}
    assert "start-first" in plan.summary and plan.downtime.startswith("none expected")
    assert "reload nginx" in plan.steps[2].reason
    assert "stop_grace_period (20s)" in plan.steps[3].reason
    assert plan.steps[0].params["ref"] == target_ref(tmp_path.name, "web", OLD)


def test_a_blocked_service_gets_the_stop_first_plan_saying_why(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, spec={"container_name": "the-web"})
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert plan.steps[0].action == "rollback.service.recreate"
    assert "stop-first: container_name the-web" in plan.steps[0].reason
    assert plan.params["switch"]["order"] == "stop-first"
    with pytest.raises(UsageError, match="container_name"):
        service_rollback.plan(store, platform, "web", None, config=config, order="start-first")


def test_a_platform_that_switches_itself_gets_one_replace_step(tmp_path: Path) -> None:
    """Swarm orders its own updates (update_config.order): no beside-steps, and the
    plan says whose order it is instead of claiming backout's start-first."""
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    platform.switches_itself = True
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert [s.key for s in plan.steps] == ["recreate:web", "verify-service:web",
                                           "record-expected"]
    assert plan.steps[0].reason.startswith(f"by {platform.kind} itself")
    assert "own update order" in plan.summary and "start-first" not in plan.summary
    assert "update_config" in plan.downtime
    assert plan.params["switch"]["source"] == platform.kind
    # Compose's rules do not apply: a container_name (a hard blocker on Compose) with
    # start-first configured plans, and --order is refused in one line naming the fix
    config.services["web"] = ServiceConfig("web", switch="start-first")
    platform.stack["services"]["web"]["container_name"] = "the-web"
    assert service_rollback.plan(store, platform, "web", None, config=config).steps[0].key \
        == "recreate:web"
    with pytest.raises(UsageError, match="--order does not apply") as raised:
        service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")
    assert "update_config.order" in (raised.value.fix or "")


def test_start_first_starts_waits_reloads_then_drains(tmp_path: Path,
                                                     _quick: list[list[str]]) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    platform.calls.clear()
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    ref = target_ref(tmp_path.name, "web", OLD)
    # the order of what changes: tag, start beside, (ready), reload, retire old, reload
    changes = [c for c in platform.calls if c[0] in ("tag", "start_beside", "retire")]
    assert changes == [("tag", OLD, ref), ("start_beside", "web", ref),
                       ("retire", ("c-web-1",), 20.0)]
    assert _quick == [["fake-exec", "c-nginx-1", "nginx", "-s", "reload"]] * 2
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", OLD)]
    assert [(b.id, b.image_id) for b in platform.of("worker")] == [("c-worker-1", NEW)]
    assert store.fact(EXPECTED_IMAGES) == {"web": OLD}
    assert outcome.results["switch-ready:web"] == {"ready": "c-web-2", "health": "healthy"}


def test_the_reload_happens_only_once_the_new_container_is_healthy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _quick: list[list[str]]) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload",
                                    new_health=["starting", "starting", "healthy"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    seen: list[str | None] = []
    real_run_reloads = switching._run_reloads

    def watch(ctx: Any, reloads: Any, before: Any, **kw: Any) -> Any:
        seen.append(platform._look(platform.of("web")[-1])[1])
        return real_run_reloads(ctx, reloads, before, **kw)

    monkeypatch.setattr(switching, "_run_reloads", watch)
    assert run(store, plan, config, platform).status == "succeeded"
    assert seen[0] == "healthy" and platform.looks["c-web-2"] >= 3


def test_a_resolver_proxy_is_reloaded_instead_of_waited_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _quick: list[list[str]]) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert "reload nginx so it asks Docker's DNS afresh at once instead of after its " \
           "resolver's valid=5s" in plan.steps[2].reason
    slept: list[float] = []
    monkeypatch.setattr(switching.time, "time", lambda: 2001.0)  # 1 s after it started
    monkeypatch.setattr(interrupt.Interrupt, "sleep",
                        lambda _self, s: slept.append(s) if s else None)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    assert slept == []  # no resolver validity waited out
    proxies = outcome.results["switch-proxies:web"]
    assert proxies["reloaded"] == ["nginx"] and "reload_failed" not in proxies
    # reloaded once the new one is ready, again once the old one is gone: no worker
    # keeps its cached address
    assert _quick == [["fake-exec", "c-nginx-1", "nginx", "-s", "reload"]] * 2
    assert outcome.results["switch-drain:web"]["reloaded"] == ["nginx"]


def test_a_resolver_proxy_that_cannot_reload_is_waited_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    slept: list[float] = []
    monkeypatch.setattr(switching.time, "time", lambda: 2001.0)  # 1 s after it started
    monkeypatch.setattr(interrupt.Interrupt, "sleep",
                        lambda _self, s: slept.append(s) if s else None)

    def refused(_env: Any, argv: list[str], **kw: Any) -> proc.Result:
        assert kw["check"] is False  # a resolver's failed reload is not fatal
        return proc.Result(tuple(argv), 1, "", "nginx: [emerg] ...", 0.0)

    monkeypatch.setattr(switching.proc, "run", refused)
    label = switching.fence_label(1)
    fenced_while: list[set[tuple[str, str]]] = []
    monkeypatch.setattr(interrupt.Interrupt, "sleep", lambda _self, s: (
        slept.append(s), fenced_while.append(set(platform.fences.get(label, set()))))
        if s else None)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    # the proxies step: valid 5 s + 0.5 s margin, 1 s already gone; the drain: its
    # fence stays up until nginx's cached answer (the old address) has expired
    assert slept == [pytest.approx(4.5), pytest.approx(5.5, abs=0.2)]
    assert fenced_while == [set(), {("c-nginx-1", "c-web-1")}]
    assert platform.fences[label] == set()
    proxies = outcome.results["switch-proxies:web"]
    assert proxies["reloaded"] == [] and proxies["reload_failed"] == ["nginx"]
    drain = outcome.results["switch-drain:web"]
    assert drain["reloaded"] == [] and drain["reload_failed"] == ["nginx"]
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", OLD)]


def test_a_static_proxy_that_cannot_reload_fails_the_switch_and_the_old_one_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nginx -s reload` tests the configuration first and exits 1 on an error: the
    same outcome and words as a reload that never takes."""
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)

    def refused(_env: Any, argv: list[str], **kw: Any) -> proc.Result:
        if kw["check"]:
            raise ExternalError("reload nginx failed (exit 1): nginx: [emerg] unknown directive")
        return proc.Result(tuple(argv), 1, "", "nginx: [emerg] unknown directive", 0.0)

    monkeypatch.setattr(switching.proc, "run", refused)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "failed" and outcome.failed_step == "let the proxies see the new web"
    assert isinstance(outcome.error, UnhealthyError)
    assert "could not reload" in outcome.error.message and "[emerg]" in outcome.error.message
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-1", NEW)]
    abort = outcome.results["switch-abort:web"]  # a cleanup: its failed reload is reported
    assert abort["said"] == "the old release kept serving" and abort["removed"] == ["c-web-2"]
    assert abort["reload_failed"] == ["nginx"]


def test_a_release_that_never_gets_ready_is_removed_and_the_old_one_kept(
        tmp_path: Path, _quick: list[list[str]]) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload",
                                    new_health=["starting", "unhealthy"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "failed" and outcome.failed_step == "wait until the new web is ready"
    assert isinstance(outcome.error, UnhealthyError)
    assert "the old release kept serving" in outcome.error.message
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-1", NEW)]
    assert platform.called("retire") == [(("c-web-2",), 20.0)]  # only ever the new one
    assert [r.status for r in outcome.steps] == ["done", "failed", "skipped", "skipped", "done",
                                                 "skipped", "skipped"]
    assert store.fact(EXPECTED_IMAGES) is None
    assert _quick == [["fake-exec", "c-nginx-1", "nginx", "-s", "reload"]]  # forget the new IP


def test_ready_times_out(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, new_health=["starting"])
    config.services["web"] = ServiceConfig("web", ready_timeout_seconds=1)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    switching.READY_POLL = 0.05
    outcome = run(store, plan, config, platform)
    assert outcome.error is not None and "did not become ready in 1s" in outcome.error.message
    assert [b.id for b in platform.of("web")] == ["c-web-1"]


def test_without_a_healthcheck_the_new_one_must_keep_running_a_while(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image that dies at once is running at the first look: the switch must not
    take it as ready, move traffic to it and drain the old one."""
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 0.2)
    config, store, platform = stack(tmp_path, new_health=[None, "exited"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "failed" and outcome.failed_step == "wait until the new web is ready"
    assert outcome.error is not None and "is exited/None" in outcome.error.message
    assert platform.called("retire") == [(("c-web-2",), 20.0)]  # the old one never stopped
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-1", NEW)]


def test_without_a_healthcheck_running_a_while_is_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 0.1)
    monkeypatch.setattr(switching, "READY_POLL", 0.02)
    config, store, platform = stack(tmp_path, new_health=[None])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert platform.looks["c-web-2"] >= 2  # looked at until it had run 0.1 s, not once
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", OLD)]


def test_a_readiness_url_is_probed_at_the_new_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = stack(tmp_path)
    config.services["web"] = ServiceConfig("web", readiness_url="http://:8080/ready")
    asked: list[str] = []
    answers = iter([503, 200])

    def get(_env: Any, url: str, **_kw: Any) -> Any:
        asked.append(url)
        return type("P", (), {"status": next(answers)})()

    monkeypatch.setattr(switching.http, "get", get)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert run(store, plan, config, platform).status == "succeeded"
    assert asked == ["http://10.9.0.7:8080/ready"] * 2


def test_sigint_while_waiting_keeps_the_old_container(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, new_health=["starting"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    real = platform.containers

    def containers(*services: str) -> Any:
        if interrupt.current().step == plan.steps[1].name:
            interrupt.current().request("SIGINT")
        return real(*services)

    platform.containers = containers  # type: ignore[method-assign]
    outcome = run(store, plan, config, platform)
    assert outcome.status == "interrupted"
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-1", NEW)]


class Crash(BaseException):
    """What SIGKILL does to the executor: it stops where it is, the journal as it was."""


@pytest.mark.parametrize("point", [f"step-{i}-{when}" for i in range(4)
                                   for when in ("started", "done")])
def test_a_crash_at_any_switch_step_then_resume_ends_with_one_target_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)

    def hit(name: str) -> None:
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(executor_module.faults, "hit", hit)
    ex = Executor(store, run_context(store, config, platform))
    op_id = ex.start(plan)
    with pytest.raises(Crash):
        ex.run(plan, op_id)
    monkeypatch.setattr(executor_module.faults, "hit", lambda _n: None)
    resumed = run(store, plan, config, platform, op_id)
    assert resumed.status == "succeeded", resumed.error
    web = platform.of("web")
    assert [(b.image_id, b.state) for b in web] == [(OLD, "running")], web
    assert all(c[1] != (web[0].id,) for c in platform.called("retire"))  # never the new one
    assert not any(platform.fences.values())  # no fence left up
    assert store.fact(EXPECTED_IMAGES) == {"web": OLD}


def test_a_crash_while_compose_starts_the_new_container_finds_it_on_resume(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    platform.tag(OLD, plan.steps[0].params["ref"])
    platform.start_beside("web", plan.steps[0].params["ref"], operation_id=0)  # left behind
    ex = Executor(store, run_context(store, config, platform))
    op_id = ex.start(plan)
    assert ex.run(plan, op_id).status == "succeeded"
    assert [b.id for b in platform.of("web")] == ["c-web-2"]


def test_the_drain_fences_the_old_address_from_before_its_stop_until_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx's new connections to the old container are refused at once from before
    it is told to stop until the workers from before the last reload are gone."""
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert "nginx's new connections to it are refused at once" in plan.steps[3].reason
    label = switching.fence_label(1)
    fenced_at: list[tuple[str, set[tuple[str, str]]]] = []
    real_retire, real_gone = platform.retire, switching._old_workers_gone

    def retire(ids: Any, *, grace_seconds: float, after_stop: Any = None) -> list[str]:
        fenced_at.append(("retire", set(platform.fences.get(label, set()))))
        return real_retire(ids, grace_seconds=grace_seconds, after_stop=after_stop)

    def gone(ctx: Any, reloaded: Any, limit: float, first_poll: float) -> Any:
        fenced_at.append((f"workers {limit:g}", set(platform.fences.get(label, set()))))
        return real_gone(ctx, reloaded, limit, first_poll)

    platform.retire = retire  # type: ignore[method-assign]
    monkeypatch.setattr(switching, "_old_workers_gone", gone)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    up = {("c-nginx-1", "c-web-1")}
    assert fenced_at == [("workers 0", set()), ("retire", up),
                         (f"workers {switching.OLD_WORKERS_LIMIT:g}", up)]
    assert platform.fences[label] == set()
    # the first: the new one held off while it started (test_the_start_holds_...)
    assert platform.called("fence") == [(("c-nginx-1",), ("c-web-2",), f"{label}-new"),
                                        (("c-nginx-1",), ("c-web-1",), label)]
    assert outcome.results["switch-drain:web"]["fenced"] == ["nginx"]


def test_without_a_fence_the_drain_says_why(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    platform.cannot_fence = "backout is not running as root"
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    drain = outcome.results["switch-drain:web"]
    assert drain["not_fenced"] == "backout is not running as root" and "fenced" not in drain
    assert platform.called("fence") == [] and platform.called("unfence") == []


def test_a_fence_half_put_up_is_reported_and_taken_down(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    real_fence = platform.fence

    def half(proxies: Any, old: Any, *, label: str, addresses: Any = None) -> str | None:
        real_fence(proxies, old, label=label)
        raise ExternalError("iptables: Chain 'OUTPUT' does not exist")

    platform.fence = half  # type: ignore[method-assign]
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["switch-drain:web"]["not_fenced"] == \
        "iptables: Chain 'OUTPUT' does not exist"
    assert platform.fences[switching.fence_label(1)] == set()
    assert store.fact(switching._fence_fact(switching.fence_label(1))) is None


def killed_with_the_fence_up(store: Store, plan: Plan, config: Config,
                             platform: SwitchFakePlatform) -> int:
    """Run ``plan`` until SIGKILL hits while the old web drains, its fence up."""
    real_retire = platform.retire

    def retire(ids: Any, *, grace_seconds: float, after_stop: Any = None) -> list[str]:
        if list(ids) == ["c-web-1"]:
            raise Crash("killed while the old one drains")
        return real_retire(ids, grace_seconds=grace_seconds, after_stop=after_stop)

    real_unfence = platform.unfence

    def killed(proxies: Any, *, label: str) -> int:
        if label != switching.fence_label(1):  # the hold's, once the new one is ready
            return real_unfence(proxies, label=label)
        raise Crash("no except clause runs under SIGKILL")

    platform.retire = retire  # type: ignore[method-assign]
    platform.unfence = killed  # type: ignore[method-assign]
    ex = Executor(store, run_context(store, config, platform))
    op_id = ex.start(plan)
    with pytest.raises(Crash):
        ex.run(plan, op_id)
    assert platform.fences[switching.fence_label(op_id)] == {("c-nginx-1", "c-web-1")}
    del platform.retire, platform.unfence  # type: ignore[method-assign]  # the class's
    return op_id


def test_a_kill_with_the_fence_up_then_resume_takes_it_down(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    op_id = killed_with_the_fence_up(store, plan, config, platform)
    resumed = run(store, plan, config, platform, op_id)
    assert resumed.status == "succeeded", resumed.error
    assert platform.fences[switching.fence_label(op_id)] == set()
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", OLD)]


def test_a_resume_that_cannot_take_a_fence_down_says_so_and_waits(tmp_path: Path) -> None:
    """Killed as root with its fence up, resumed without root: not a silent pass over
    the rules; the abort removes nothing (the new one serves through nginx) and waits
    for a resume that can take them down."""
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    op_id = killed_with_the_fence_up(store, plan, config, platform)
    platform.cannot_fence = "backout is not running as root"
    resumed = run(store, plan, config, platform, op_id)
    assert resumed.failed_step == "drain the old web"
    assert isinstance(resumed.error, switching.FenceLeftError)
    assert resumed.deferred_step == "keep one web if the switch failed"
    assert platform.fences[switching.fence_label(op_id)] == {("c-nginx-1", "c-web-1")}
    platform.cannot_fence = None  # resumed as root
    again = run(store, plan, config, platform, op_id)
    assert platform.fences[switching.fence_label(op_id)] == set()
    assert again.results["switch-abort:web"]["kept"] == ["c-web-2"]
    assert [b.id for b in platform.of("web")] == ["c-web-2"]


def test_nothing_to_fence_leaves_no_note_unless_a_killed_run_left_one(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    label = switching.fence_label(1)
    platform.fence = lambda *_a, **_k: "the old container has no address left"  # type: ignore[method-assign]
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.results["switch-drain:web"]["not_fenced"] == \
        "the old container has no address left"
    assert platform.called("unfence") == []  # the journal said none could be up
    # A killed run's note (its rules may be up) survives a retry with nothing to fence,
    # and its rules are taken down where it saw proxies, running or not now.
    store.set_fact(switching._fence_fact(label), ["c-nginx-0"])
    assert switching._fence(run_context(store, config, platform), ["c-nginx-1"],
                            ["c-web-1"], label) == "the old container has no address left"
    assert store.fact(switching._fence_fact(label)) == ["c-nginx-0", "c-nginx-1"]
    switching._take_down(run_context(store, config, platform), ["c-nginx-1"], label)
    assert platform.called("unfence")[-1] == (("c-nginx-0", "c-nginx-1"), label)
    assert store.fact(switching._fence_fact(label)) is None


def test_no_proxy_in_front_no_fence(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="labels")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert platform.called("fence") == [] and platform.called("unfence") == []
    assert not {"fenced", "not_fenced"} & set(outcome.results["switch-drain:web"])


def test_a_drain_that_fails_takes_its_fence_down_before_the_old_one_serves_again(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    platform.fail_on("retire", ExternalError("docker stop: the engine did not answer"),
                     first_arg=("c-web-1",))
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "drain the old web"
    assert platform.fences[switching.fence_label(1)] == set()
    # taken down by the drain itself (the abort found nothing left to take down)
    assert platform.called("unfence") == [(("c-nginx-1",), switching.fence_label(1))]
    # the abort found no fence left and kept the old one (never stopped) serving
    assert outcome.results["switch-abort:web"]["kept"] == ["c-web-1"]
    assert [b.id for b in platform.of("web")] == ["c-web-1"]


def fences_at_retire(platform: SwitchFakePlatform, label: str) -> list[set[tuple[str, str]]]:
    """The fences tagged ``label`` at each call of retire (as it is called)."""
    seen: list[set[tuple[str, str]]] = []
    real_retire = platform.retire

    def retire(ids: Any, *, grace_seconds: float, after_stop: Any = None) -> list[str]:
        seen.append(set(platform.fences.get(label, set())))
        return real_retire(ids, grace_seconds=grace_seconds, after_stop=after_stop)

    platform.retire = retire  # type: ignore[method-assign]
    return seen


def test_the_abort_takes_a_left_fence_down_before_it_keeps_the_old_one(
        tmp_path: Path) -> None:
    """A drain killed with its fence up, then resumed into a failure before the old
    one stopped: the abort takes the fence down before the new container goes (nginx
    must reach the old one)."""
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    op_id = killed_with_the_fence_up(store, plan, config, platform)
    label = switching.fence_label(op_id)
    platform.fail_on("retire", ExternalError("docker stop: the engine did not answer"),
                     first_arg=("c-web-1",))
    seen = fences_at_retire(platform, label)
    resumed = run(store, plan, config, platform, op_id)
    assert resumed.failed_step == "drain the old web"
    assert seen == [{("c-nginx-1", "c-web-1")}, set()]  # the drain's stop; the abort's
    assert [b.id for b in platform.of("web")] == ["c-web-1"]


def test_a_fence_that_cannot_be_taken_down_fails_the_drain_naming_the_fix(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    platform.fail_on("unfence", ExternalError("iptables: the xtables lock is held"))
    platform.fail_on("unfence", ExternalError("iptables: the xtables lock is held"))
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "drain the old web"
    assert isinstance(outcome.error, switching.FenceLeftError)
    assert "could not be taken down (iptables: the xtables lock is held)" \
        in outcome.error.message
    assert "backout resume" in (outcome.error.fix or "") and "backout-op-1" in outcome.error.fix
    # the abort's own take-down failed too: it waits for `backout resume`
    assert outcome.deferred_step == "keep one web if the switch failed"
    assert [b.id for b in platform.of("web")] == ["c-web-2"]
    again = run(store, plan, config, platform, 1)
    assert again.results["switch-abort:web"]["kept"] == ["c-web-2"]
    assert platform.fences[switching.fence_label(1)] == set()


def watch_holds(platform: SwitchFakePlatform, label: str) -> list[set[tuple[str, str]]]:
    """The hold's fences at each look at web's containers (the ready wait's looks)."""
    seen: list[set[tuple[str, str]]] = []
    real_containers = platform.containers

    def containers(*services: str) -> list[Any]:
        if services == ("web",):
            seen.append(set(platform.fences.get(label, set())))
        return real_containers(*services)

    platform.containers = containers  # type: ignore[method-assign]
    return seen


def test_the_start_holds_the_new_one_off_a_resolver_nginx_until_it_is_ready(
        tmp_path: Path) -> None:
    """Docker's DNS names the new container from its start: an nginx that re-resolves
    would send it requests before it is ready. Its new connections to it are refused
    from the moment it joins until the ready wait has seen it ready."""
    config, store, platform = stack(tmp_path, proxy="nginx-resolver",
                                    new_health=["starting", "starting", "healthy"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert "until it is ready, nginx's new connections to it are refused" in plan.steps[0].reason
    hold = switching.hold_label(1)
    seen = watch_holds(platform, hold)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    held = {("c-nginx-1", "c-web-2")}
    # the ready wait's three looks (the last saw it healthy), then the verify's
    assert seen == [held, held, held, set()] and platform.fences[hold] == set()
    assert platform.called("fence")[0] == (("c-nginx-1",), ("c-web-2",), hold)
    assert outcome.results["switch-start:web"]["held_from"] == ["nginx"]
    assert outcome.results["switch-ready:web"]["released_rules"] == 1
    assert store.fact(switching._fence_fact(hold)) is None
    # released before the reloads (which tell nginx about the new one)
    calls = [c[0] for c in platform.calls if c[0] in ("unfence", "processes")]
    assert calls[0] == "unfence"


def test_a_static_nginx_or_labels_need_no_hold(tmp_path: Path) -> None:
    for proxy in ("nginx-reload", "labels"):
        config, store, platform = stack(tmp_path / proxy, proxy=proxy)
        plan = service_rollback.plan(store, platform, "web", None, config=config)
        assert "until it is ready" not in plan.steps[0].reason
        outcome = run(store, plan, config, platform)
        assert outcome.status == "succeeded", outcome.error
        assert not [c for c in platform.called("fence") if c[2].endswith("-new")]
        assert not {"held_from", "not_held"} & set(outcome.results["switch-start:web"])


def test_a_new_one_that_never_gets_ready_is_removed_before_its_hold_comes_down(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver", new_health=["unhealthy"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    hold = switching.hold_label(1)
    at_retire = fences_at_retire(platform, hold)
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "wait until the new web is ready"
    assert outcome.results["switch-abort:web"]["removed"] == ["c-web-2"]
    assert at_retire == [{("c-nginx-1", "c-web-2")}]  # nginx never reached it
    assert platform.fences[hold] == set() and store.fact(switching._fence_fact(hold)) is None
    assert [b.id for b in platform.of("web")] == ["c-web-1"]


def test_without_a_fence_the_start_says_why_it_holds_nothing(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    platform.cannot_fence = "backout is not running as root"
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["switch-start:web"]["not_held"] == "backout is not running as root"
    assert platform.called("fence") == [] and platform.called("unfence") == []
    assert store.fact(switching._fence_fact(switching.hold_label(1))) is None


def test_a_hold_that_fails_to_go_up_is_reported_and_the_switch_goes_on(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    platform.fail_on("fence", ExternalError("iptables: the xtables lock is held"))
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["switch-start:web"]["not_held"] == \
        "iptables: the xtables lock is held"
    # the note was written before the rule: the ready step looked and took down
    assert platform.called("unfence")[0] == (("c-nginx-1",), switching.hold_label(1))
    assert store.fact(switching._fence_fact(switching.hold_label(1))) is None


def test_a_kill_while_held_then_resume_releases_it_once_ready(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    hold = switching.hold_label(1)
    ex = Executor(store, run_context(store, config, platform))
    op_id = ex.start(plan)
    real_containers = platform.containers

    def containers(*services: str) -> list[Any]:
        if services == ("web",):  # the ready wait's first look
            raise Crash("killed while waiting")
        return real_containers(*services)

    platform.containers = containers  # type: ignore[method-assign]
    with pytest.raises(Crash):
        ex.run(plan, op_id)
    assert platform.fences[hold] == {("c-nginx-1", "c-web-2")}
    del platform.containers  # type: ignore[method-assign]  # the class's
    resumed = run(store, plan, config, platform, op_id)
    assert resumed.status == "succeeded", resumed.error
    assert platform.fences[hold] == set() and store.fact(switching._fence_fact(hold)) is None
    assert [b.id for b in platform.of("web")] == ["c-web-2"]


def test_a_hold_that_cannot_come_down_waits_for_resume(tmp_path: Path) -> None:
    """Ready, but its hold cannot be taken down: not on to the drain (nginx could reach
    neither container); the old one serves and a resume finishes."""
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    platform.fail_on("unfence", ExternalError("iptables: the xtables lock is held"))
    platform.fail_on("unfence", ExternalError("iptables: the xtables lock is held"))
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "wait until the new web is ready"
    assert isinstance(outcome.error, switching.FenceLeftError)
    assert platform.called("retire") == [(("c-web-2",), 20.0)]  # the old one never stopped
    assert [b.id for b in platform.of("web")] == ["c-web-1"]
    again = run(store, plan, config, platform, 1)
    assert platform.fences[switching.hold_label(1)] == set()
    assert [b.id for b in platform.of("web")] == ["c-web-1"], again.results


def with_pre_stop(config: Config, wait: int = 30) -> Config:
    web = dataclasses.replace(config.services["web"], pre_stop=("touch", "/tmp/drain"),
                              pre_stop_wait_seconds=wait)
    return dataclasses.replace(config, services={**config.services, "web": web})


def drained_by_touch(monkeypatch: pytest.MonkeyPatch, platform: SwitchFakePlatform,
                     *, turns: bool = True, exit_code: int = 0) -> list[list[str]]:
    """proc.run as the fixture's, and the pre_stop command in a container makes its
    healthcheck fail (``turns``): the engine reports it unhealthy from then on."""
    ran: list[list[str]] = []

    def fake_run(_env: Any, argv: list[str], **_kw: Any) -> proc.Result:
        ran.append(list(argv))
        if argv[:1] == ["fake-exec"] and "touch" in argv and turns:
            for b in platform.boxes:
                if b.id == argv[1]:
                    b.health = "unhealthy"
        return proc.Result(list(argv), exit_code if "touch" in argv else 0, "",
                           "touch: read-only file system" if exit_code else "", 0.0)

    monkeypatch.setattr(switching.proc, "run", fake_run)
    return ran


def test_pre_stop_runs_in_the_old_one_and_its_stop_waits_until_it_is_unhealthy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A label-driven proxy (Traefik) drops a container at its health event, not when
    it is told to stop: the drain first makes it unhealthy, then stops it."""
    config, store, platform = stack(tmp_path, proxy="labels")
    config = with_pre_stop(config)
    ran = drained_by_touch(monkeypatch, platform)
    real_retire = platform.retire
    at_stop: list[tuple[str, str | None]] = []

    def retire(ids: Any, *, grace_seconds: float, after_stop: Any = None) -> list[str]:
        at_stop.extend((b.id, b.health) for b in platform.boxes if b.id in ids)
        return real_retire(ids, grace_seconds=grace_seconds, after_stop=after_stop)

    platform.retire = retire  # type: ignore[method-assign]
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert "first run `touch /tmp/drain` in it and wait until" in plan.steps[3].reason
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert ["fake-exec", "c-web-1", "touch", "/tmp/drain"] in ran
    assert at_stop == [("c-web-1", "unhealthy")]
    drain = outcome.results["switch-drain:web"]
    assert "pre_stop_s" in drain and "not_unhealthy" not in drain


def test_an_old_one_that_never_turns_unhealthy_is_stopped_after_the_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = stack(tmp_path, proxy="labels")
    config = with_pre_stop(config, wait=0)
    drained_by_touch(monkeypatch, platform, turns=False)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["switch-drain:web"]["not_unhealthy"] == ["c-web-1"]
    assert [b.id for b in platform.of("web")] == ["c-web-2"]


def test_a_pre_stop_that_fails_is_reported_and_the_old_one_stopped_anyway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = stack(tmp_path, proxy="labels")
    config = with_pre_stop(config)
    drained_by_touch(monkeypatch, platform, turns=False, exit_code=1)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    drain = outcome.results["switch-drain:web"]
    assert drain["pre_stop_failed"] == ["c-web-1: exit 1 touch: read-only file system"]
    assert [b.id for b in platform.of("web")] == ["c-web-2"]
    assert store.fact(switching._pre_stop_fact(run_context(store, config, platform), "web")) \
        is None


def test_a_failed_reload_keeps_an_unhealthy_old_one_without_pre_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a drain that has begun (pre_stop ran) is finished by the abort: a switch
    that fails before it keeps the old container, healthy or not (a static nginx
    knows only its address)."""
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    platform.boxes[0].health = "unhealthy"  # the release being rolled back from

    def reload_fails(_env: Any, argv: list[str], **_kw: Any) -> proc.Result:
        return proc.Result(list(argv), 1 if "reload" in argv else 0, "", "emerg", 0.0)

    monkeypatch.setattr(switching.proc, "run", reload_fails)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "let the proxies see the new web"
    assert outcome.results["switch-abort:web"]["kept"] == ["c-web-1"]
    assert [b.id for b in platform.of("web")] == ["c-web-1"]


def test_an_abort_that_cannot_remove_a_held_new_one_keeps_the_hold_and_waits(
        tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver", new_health=["unhealthy"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    hold = switching.hold_label(1)
    platform.fail_on("retire", UnhealthyError("docker stop: the engine did not answer"),
                     first_arg=("c-web-2",))
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "wait until the new web is ready"
    assert platform.fences[hold] == {("c-nginx-1", "c-web-2")}  # the broken one held off
    assert store.fact(switching._fence_fact(hold)) is not None
    again = run(store, plan, config, platform, 1)
    assert again.results["switch-abort:web"]["removed"] == ["c-web-2"]
    assert platform.fences[hold] == set() and store.fact(switching._fence_fact(hold)) is None
    assert [b.id for b in platform.of("web")] == ["c-web-1"]


def test_a_drain_failing_after_the_pre_stop_keeps_the_new_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old one already reports unhealthy (a proxy that follows health has dropped
    it): the abort keeps the ready new one rather than leave that proxy nothing."""
    config, store, platform = stack(tmp_path, proxy="labels")
    config = with_pre_stop(config)
    drained_by_touch(monkeypatch, platform)
    platform.fail_on("retire", ExternalError("docker stop: the engine did not answer"),
                     first_arg=("c-web-1",))
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "drain the old web"
    abort = outcome.results["switch-abort:web"]
    assert abort["kept"] == ["c-web-2"] and abort["removed"] == ["c-web-1"]
    assert [b.id for b in platform.of("web")] == ["c-web-2"]


def test_abort_after_the_old_one_is_gone_keeps_the_new_one(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    real_retire = platform.retire

    def retire_then_fail(ids: Any, *, grace_seconds: float, after_stop: Any = None) -> list[str]:
        gone = real_retire(ids, grace_seconds=grace_seconds, after_stop=after_stop)
        if "c-web-1" in ids:
            raise UnhealthyError("docker rm answered late")
        return gone

    platform.retire = retire_then_fail  # type: ignore[method-assign]
    outcome = run(store, plan, config, platform)
    assert outcome.failed_step == "drain the old web"
    assert outcome.results["switch-abort:web"]["kept"] == ["c-web-2"]
    assert [b.id for b in platform.of("web")] == ["c-web-2"]


# ------------------------------------------------------- deploy and emergency rollback


def _stack_definition() -> dict[str, Any]:
    return {"name": "p", "services": {
        "web": {"image": "web:latest"},
        "api": {"image": "api:latest"},
        "nginx": {"image": "nginx", "ports": [{"target": 80, "published": "8080"}]},
        "db": {"image": "mariadb", "volumes": [{"type": "volume", "source": "data",
                                                "target": "/var/lib/mysql"}]}}}


def test_the_deploy_switches_stateless_services_before_compose_up() -> None:
    from backout.deploy import Preflight, plan_deploy

    config = Config(path=Path("/p/backout.toml"), project_dir=Path("/p"),
                    services={"api": ServiceConfig("api", switch="stop-first")},
                    databases={"db": DatabaseConfig("db", "mysql", "db")})
    pf = Preflight(ref="v3", commit="c" * 40, head="a" * 40, dirty=False,
                   running={"web": "sha256:1"})
    plan = plan_deploy(config, pf, watch_seconds=0, with_data=False,
                       definition=_stack_definition())
    keys = [s.key for s in plan.steps]
    switched = [k for k in keys if k.startswith("switch-")]
    # api: stop-first by config; nginx: a fixed port; db: a database
    assert switched == ["switch-start:web", "switch-ready:web", "switch-proxies:web",
                        "switch-drain:web", "switch-abort:web"]
    assert keys.index("deploy:build") < keys.index("switch-start:web")
    assert keys.index("switch-abort:web") < keys.index("deploy:up")
    assert plan.steps[keys.index("switch-start:web")].params["ref"] is None
    assert "up to date" in plan.steps[keys.index("deploy:up")].reason
    assert plan.downtime.startswith("web switch start-first (none expected)")
    without = plan_deploy(config, pf, watch_seconds=0, with_data=False)
    # no switch planned (none qualifies, or the platform orders its own updates):
    # the downtime claims none
    assert "start-first" not in without.downtime
    assert not any(k.startswith("switch-") for k in (s.key for s in without.steps))


def test_the_emergency_rollback_switches_what_was_not_stopped_for_the_data() -> None:
    config = Config(path=Path("/p/backout.toml"), project_dir=Path("/p"),
                    databases={"db": DatabaseConfig("db", "mysql", "db")})
    assert switching.candidates(config, _stack_definition()) == ["api", "web"]
    assert switching.candidates(config, _stack_definition(), exclude=["api"]) == ["web"]


def _whole_stack(tmp: Path, health: list[str | None]) -> tuple[Config, Store,
                                                                 SwitchFakePlatform, Plan]:
    config = Config(path=tmp / "backout.toml", project_dir=tmp)
    store = Store(config.state_dir)
    definition = {"name": "p", "services": {"web": {"image": "web:latest"},
                                            "gone": {"image": "gone:latest"}}}
    platform = SwitchFakePlatform(tmp, running={"web": OLD}, definition=definition,
                                  images={"web:latest": NEW, "web:old": OLD},
                                  new_health={"web": health})
    plan = Plan("test.stack", {}, tuple(switching.stack_steps(config, definition)))
    return config, store, platform, plan


def test_a_whole_stack_switch_takes_the_image_the_new_code_names(tmp_path: Path) -> None:
    config, store, platform, plan = _whole_stack(tmp_path, ["starting", "healthy"])
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert platform.called("start_beside") == [("web", None)]
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", NEW)]
    # the image of `gone` is not on this host: compose up pulls it (stop-first)
    assert "not on this host yet" in outcome.results["switch-start:gone"]["skipped"]
    assert outcome.results["switch-drain:gone"] == {"skipped": "nothing was started"}


def test_a_whole_stack_switch_skips_what_does_not_change(tmp_path: Path) -> None:
    config, store, platform, plan = _whole_stack(tmp_path, ["healthy"])
    platform.boxes[0].image_id = NEW  # already runs the new code's image
    outcome = run(store, plan, config, platform)
    assert outcome.results["switch-start:web"]["skipped"].startswith("web had no container")
    assert platform.called("retire") == []


def test_a_whole_stack_switch_never_ready_keeps_the_old_release(tmp_path: Path) -> None:
    config, store, platform, plan = _whole_stack(tmp_path, ["unhealthy"])
    outcome = run(store, plan, config, platform)
    assert outcome.status == "failed" and "the old release kept serving" in str(outcome.error)
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-1", OLD)]
    assert outcome.results["switch-abort:web"]["kept"] == ["c-web-1"]


@pytest.mark.parametrize(("answer", "ok", "proxy", "valid", "warned"), [
    (NGINX_RESOLVER, True, "nginx-resolver", 2, "60s"),
    (NGINX_RESOLVER.replace("server {", "server {\n  proxy_connect_timeout 1s;"), True,
     "nginx-resolver", 2, None),
    (NGINX_STATIC, True, "nginx-reload", None, None),  # reloaded: failed peers marked down
    ("", False, None, None, None)])
def test_init_detects_how_a_running_nginx_reaches_the_apps(
        monkeypatch: pytest.MonkeyPatch, answer: str, ok: bool, proxy: str | None,
        valid: int | None, warned: str | None) -> None:
    from backout.environment import Environment
    from backout.setup import init as init_module
    from backout.setup.generate import Derived
    from tests.support.fakes import FakePlatform

    derived = Derived()
    derived.services = {"nginx": {"kind": "proxy"}, "app": {"kind": "app"}}
    asked: list[list[str]] = []

    def fake_run(_env: Any, argv: list[str], **_kw: Any) -> proc.Result:
        asked.append(list(argv))
        return proc.Result(tuple(argv), 0 if ok else 1, answer, "", 0.0)

    monkeypatch.setattr(init_module.proc, "run", fake_run)
    init_module._find_proxy_modes(Environment(), FakePlatform(), derived)
    assert asked == [["fake-exec", "nginx", "nginx", "-T"]]
    assert derived.services["nginx"].get("proxy") == proxy
    assert derived.services["nginx"].get("proxy_dns_valid_seconds") == valid
    assert derived.notes["services.nginx"][0].startswith("proxy: ")
    timeout_notes = [n for n in derived.notes["services.nginx"] if "proxy_connect_timeout" in n]
    if warned:
        assert len(timeout_notes) == 1 and f"is {warned}:" in timeout_notes[0]
    else:
        assert timeout_notes == []


def test_sigint_during_the_drain_lets_it_finish(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    real_retire = platform.retire
    abortable: list[bool] = []

    def retire(ids: Any, *, grace_seconds: float, after_stop: Any = None) -> list[str]:
        abortable.append(interrupt.current().abortable)
        interrupt.current().request("SIGINT")  # Ctrl-C while the old one drains
        return real_retire(ids, grace_seconds=grace_seconds, after_stop=after_stop)

    platform.retire = retire  # type: ignore[method-assign]
    outcome = run(store, plan, config, platform)
    assert abortable == [False]  # an old container half stopped serves nobody
    assert outcome.status == "interrupted"
    assert outcome.results["switch-drain:web"]["retired"] == ["c-web-1"]
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", OLD)]


def test_a_label_driven_proxy_needs_neither_reload_nor_wait(
        tmp_path: Path, _quick: list[list[str]]) -> None:
    config, store, platform = stack(tmp_path, proxy="labels")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert "nginx follows the healthy container by its labels" in plan.steps[2].reason
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    assert _quick == []
    proxies = outcome.results["switch-proxies:web"]
    assert proxies["reloaded"] == [] and proxies["settled_s"] == 0.0
    assert "reload_failed" not in proxies


def states_at_each_reload(monkeypatch: pytest.MonkeyPatch,
                          platform: SwitchFakePlatform) -> list[list[tuple[str, str]]]:
    """(container, state) of web at each proxy reload, as the reloads happen."""
    seen: list[list[tuple[str, str]]] = []

    def fake_run(_env: Any, argv: list[str], **_kw: Any) -> proc.Result:
        seen.append([(b.id, b.state) for b in platform.of("web")])
        return proc.Result(tuple(argv), 0, "", "", 0.0)

    monkeypatch.setattr(switching.proc, "run", fake_run)
    return seen


def test_the_drain_reloads_the_proxy_as_soon_as_the_old_one_has_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    seen = states_at_each_reload(monkeypatch, platform)
    assert run(store, plan, config, platform).status == "succeeded"
    # the first reload once the new one is ready; the second once the old one has
    # stopped (its address gone), not yet removed: nothing else happens in between
    assert seen == [[("c-web-1", "running"), ("c-web-2", "running")],
                    [("c-web-1", "exited"), ("c-web-2", "running")]]


def test_the_drain_ends_when_the_proxys_old_workers_are_gone(tmp_path: Path) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    master = "1 nginx: master process"
    platform.process_lists = [
        [master, "7 nginx: worker process"],  # the proxies step: before its reload
        [master, "8 nginx: worker process"],  # worker 7 gone at once: settled
        [master, "8 nginx: worker process"],  # the drain: before its reload
        # just after `nginx -s reload` returns the title may not have changed yet: the
        # process ID, not the title, tells the old worker
        [master, "8 nginx: worker process", "9 nginx: worker process"],
        [master, "8 nginx: worker process is shutting down", "9 nginx: worker process"],
        [master, "9 nginx: worker process"]]
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    assert platform.called("processes") == [("c-nginx-1",)] * 6
    assert platform.process_lists == []


def clocked(monkeypatch: pytest.MonkeyPatch, step: float = 0.25) -> None:
    """switch's monotonic clock advances ``step`` s per reading; its sleeps are free."""
    ticks = iter(i * step for i in range(100_000))
    monkeypatch.setattr(switching.time, "monotonic", lambda: next(ticks))
    monkeypatch.setattr(interrupt.Interrupt, "sleep", lambda _self, _s: None)


def test_old_workers_get_the_settle_and_no_more(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    monkeypatch.setattr(switching, "RELOAD_SETTLE", 1.0)
    clocked(monkeypatch)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    master = "1 nginx: master process"
    busy = [master, "7 nginx: worker process is shutting down", "8 nginx: worker process"]
    platform.process_lists = [[master, "7 nginx: worker process"]] + [busy] * 3
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    proxies = outcome.results["switch-proxies:web"]
    # worker 7 still busy at every look: the old container keeps accepting for the
    # settle (1 s), then the drain goes on
    assert proxies["reloaded"] == ["nginx"] and proxies["settled_s"] >= 1.0
    assert platform.called("processes")[:4] == [("c-nginx-1",)] * 4


@pytest.mark.parametrize(("proxy", "status"), [("nginx-reload", "failed"),
                                                ("nginx-resolver", "succeeded")])
def test_a_reload_that_never_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   proxy: str, status: str) -> None:
    """`nginx -s reload` exits 0 but the master keeps its old workers (its new
    configuration did not load): a static nginx would never see the new container,
    so the switch stops with the old one serving; a resolver one is waited out, and
    the drain does not wait for workers that will never go."""
    config, store, platform = stack(tmp_path, proxy=proxy)
    monkeypatch.setattr(switching, "RELOAD_SETTLE", 1.0)
    clocked(monkeypatch)
    monkeypatch.setattr(switching.time, "time", lambda: 2001.0)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    same = ["1 nginx: master process", "7 nginx: worker process"]
    platform.process_lists = [same] * 1000
    outcome = run(store, plan, config, platform)
    assert outcome.status == status
    if status == "failed":
        assert "could not reload" in outcome.error.message
        assert "the old release kept serving" in outcome.error.message
        assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-1", NEW)]
        return
    proxies = outcome.results["switch-proxies:web"]
    assert proxies["reload_failed"] == ["nginx"] and proxies["reloaded"] == []
    assert switching.RELOAD_TAKES <= proxies["settled_s"] < switching.RELOAD_TAKES + 1
    drain = outcome.results["switch-drain:web"]
    assert drain["reload_failed"] == ["nginx"] and drain["reloaded"] == []
    assert drain["old_workers_s"] < switching.RELOAD_TAKES + 1  # not OLD_WORKERS_LIMIT
    assert [(b.id, b.image_id) for b in platform.of("web")] == [("c-web-2", OLD)]


def test_old_workers_of_an_earlier_reload_are_not_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker an earlier reload left finishing a long request (a websocket, a
    download) takes nothing new: the drain does not wait for it."""
    config, store, platform = stack(tmp_path, proxy="nginx-reload")
    clocked(monkeypatch)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    master = "1 nginx: master process"
    lingering = "5 nginx: worker process is shutting down"
    platform.process_lists = [[master, lingering, "7 nginx: worker process"],
                              [master, lingering, "8 nginx: worker process"],
                              [master, lingering, "8 nginx: worker process"],
                              [master, lingering, "9 nginx: worker process"]] + \
        [[master, lingering, "9 nginx: worker process"]] * 1000
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    assert outcome.results["switch-drain:web"]["old_workers_s"] < 1
    assert len(platform.called("processes")) == 4


def test_a_failed_reload_is_not_waited_for(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers of an nginx whose reload failed never go: nothing waits for them."""
    config, store, platform = stack(tmp_path, proxy="nginx-resolver")
    clocked(monkeypatch)
    monkeypatch.setattr(switching.time, "time", lambda: 2001.0)
    monkeypatch.setattr(switching.proc, "run", lambda _e, argv, **_k: proc.Result(
        tuple(argv), 1, "", "refused", 0.0))
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    platform.process_lists = [["1 nginx: master process", "7 nginx: worker process"]] * 50
    outcome = run(store, plan, config, platform)
    assert outcome.status == "succeeded"
    assert outcome.results["switch-drain:web"]["old_workers_s"] < 1
    assert len(platform.called("processes")) == 2  # one look before each reload


def test_waiting_for_old_workers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(switching.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(interrupt.Interrupt, "sleep", lambda _self, _s: None)
    lists = iter([["1 nginx: master process", "7 nginx: worker process is shutting down",
                   "8 nginx: worker process"]] * 10 + [[]])

    class Platform:
        def processes(self, _cid: str) -> list[str]:
            return next(lists)

    ctx: Any = type("Ctx", (), {"platform": Platform()})()
    waited, never = switching._old_workers_gone(
        ctx, switching.Reloaded(before={"c": {"7"}}), limit=3, first_poll=0)
    assert (waited, never) == (4.0, [])  # looked at 1, 2 and 3 s; the limit reached at 3
    # no worker to wait for, or a list that can no longer be read: no wait
    assert switching._old_workers_gone(ctx, switching.Reloaded(before={"c": set()}),
                                       limit=3, first_poll=0)[1] == []
    waited, never = switching._old_workers_gone(
        ctx, switching.Reloaded(before={"c": {"7"}}), limit=30, first_poll=0)
    assert never == []  # read until the list ran out (an empty list: not told apart)


def test_the_abort_reloads_once_the_new_one_has_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that saw the never-ready new container forgets its address the moment
    it has stopped (not before: it would still be resolved; not after its removal)."""
    config, store, platform = stack(tmp_path, proxy="nginx-resolver",
                                    new_health=["starting", "unhealthy"])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    seen = states_at_each_reload(monkeypatch, platform)
    outcome = run(store, plan, config, platform)
    assert outcome.status == "failed"
    assert seen == [[("c-web-1", "running"), ("c-web-2", "exited")]]
    assert outcome.results["switch-abort:web"]["reloaded"] == ["nginx"]


def test_old_workers_are_looked_at_often_first_then_every_poll(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Old workers usually go within milliseconds of a reload (a drain's wait was a
    whole POLL of 0.25 s when looked at only that often); one holding a long request
    is not asked about more than every POLL; each proxy container starts afresh."""
    monkeypatch.setattr(switching, "POLL", 0.25)
    clock = iter(float(t) / 100 for t in range(1000))
    monkeypatch.setattr(switching.time, "monotonic", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr(interrupt.Interrupt, "sleep", lambda _self, s: slept.append(s))
    master, new = "1 nginx: master process", "8 nginx: worker process"
    lists = {"c": iter([[master, "7 nginx: worker process is shutting down", new]] * 6
                       + [[master, new]]),
             "d": iter([[master, "9 nginx: worker process is shutting down", new]] * 2
                       + [[master, new]])}

    class Platform:
        def processes(self, cid: str) -> list[str]:
            return next(lists[cid])

    ctx: Any = type("Ctx", (), {"platform": Platform()})()
    switching._old_workers_gone(ctx, switching.Reloaded(before={"c": {"7"}, "d": {"9"}}),
                                limit=60, first_poll=0.05)
    assert slept == pytest.approx([0.05, 0.1, 0.2, 0.25, 0.25, 0.25, 0.05, 0.1])
