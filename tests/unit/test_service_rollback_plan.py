"""``backout rollback service``: which image a rollback targets (newest release with
another image still on this host, a release named, an image tag), the plan it makes
(stop-first recreate, start-first switch, or the platform's own order), what the
steps do when the real executor runs them, and the drift `status` reports
afterwards. In-process: FakePlatform / SwitchFakePlatform, a real Store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backout import switch
from backout.config import Config, ServiceConfig
from backout.errors import ExitCode, NotFoundError, UnhealthyError, UsageError
from backout.operations import interrupt
from backout.operations.executor import Executor
from backout.operations.plan import Plan, Step
from backout.rollback import service as service_rollback
from backout.rollback.common import target_ref
from backout.state import Store
from backout.verify import EXPECTED_IMAGES
from tests.support.fakes import FakePlatform, run_context

OLD, NEW, OLDER, GONE = ("sha256:" + c * 64 for c in "abcd")


@pytest.fixture(autouse=True)
def _fresh_interrupt() -> None:
    """Another test's Ctrl-C must not reach this one's executor."""
    interrupt.reset()


def definition(**web: Any) -> dict[str, Any]:
    return {"name": "shop", "services": {"web": {"image": "web:latest", **web},
                                         "worker": {"image": "worker:latest"}}}


def setup(tmp: Path, *, releases: list[dict[str, str]], running: dict[str, str] | None = None,
          images: dict[str, str] | None = None, spec: dict[str, Any] | None = None
          ) -> tuple[Config, Store, FakePlatform]:
    """Releases oldest first, each service -> image ID."""
    config = Config(path=tmp / "backout.toml", project_dir=tmp,
                    services={"web": ServiceConfig("web"), "worker": ServiceConfig("worker")})
    store = Store(config.state_dir)
    for services in releases:
        store.add_release(git_commit="c", git_dirty=False, diff_path=None, compose_config={},
                          services={s: {"image_id": i} for s, i in services.items()})
    platform = FakePlatform(tmp, running={"web": NEW, "worker": NEW} if running is None else running,
                            images={"web:latest": NEW, "web:v1": OLD, "web:v0": OLDER}
                            if images is None else images,
                            definition=definition(**(spec or {})))
    return config, store, platform


def execute(store: Store, plan: Plan, config: Config, platform: FakePlatform) -> Any:
    ex = Executor(store, run_context(store, config, platform))
    return ex.run(plan, ex.start(plan))


# ------------------------------------------------------------------------------- resolve


def test_without_a_version_the_newest_release_with_another_image_still_here_wins(
        tmp_path: Path) -> None:
    # newest first: r5 ran the image running now, r4 had no web, r3's image is gone,
    # r2 is the one; r1 (older still) is not looked at
    _config, store, platform = setup(tmp_path, releases=[
        {"web": OLDER}, {"web": OLD}, {"web": GONE}, {"worker": OLD}, {"web": NEW}])
    assert service_rollback.resolve(store, platform, "web", None) == {
        "image_id": OLD, "source": "release 2", "release_id": 2, "current": NEW,
        "project": "shop"}
    assert ("image", GONE) in platform.calls  # asked, and found gone


def test_without_a_version_and_no_other_image_there_is_nothing_to_roll_back_to(
        tmp_path: Path) -> None:
    _config, store, platform = setup(tmp_path, releases=[{"web": GONE}, {"web": NEW}])
    with pytest.raises(NotFoundError) as err:
        service_rollback.resolve(store, platform, "web", None)
    assert err.value.message == ("no recorded release ran another image of web than the one "
                                 "running now")
    assert err.value.fix == "name a VERSION (image tag or release id); see `backout releases`"
    assert err.value.exit_code == ExitCode.NOT_FOUND


def test_a_service_not_running_rolls_back_to_the_newest_release(tmp_path: Path) -> None:
    _config, store, platform = setup(tmp_path, releases=[{"web": OLDER}, {"web": OLD}],
                                     running={"worker": NEW})
    target = service_rollback.resolve(store, platform, "web", None)
    assert (target["image_id"], target["release_id"], target["current"]) == (OLD, 2, None)


@pytest.mark.parametrize("ref", ["1", "r1", "release:1"])
def test_a_named_release_is_taken_even_when_it_runs_now(tmp_path: Path, ref: str) -> None:
    _config, store, platform = setup(tmp_path, releases=[{"web": NEW}, {"web": OLD}])
    assert service_rollback.resolve(store, platform, "web", ref) == {
        "image_id": NEW, "source": "release 1", "release_id": 1, "current": NEW,
        "project": "shop"}


def test_a_named_release_without_the_service_or_its_image_is_refused(tmp_path: Path) -> None:
    _config, store, platform = setup(tmp_path, releases=[{"worker": OLD}, {"web": GONE}])
    with pytest.raises(NotFoundError) as err:
        service_rollback.resolve(store, platform, "web", "r1")
    assert err.value.message == "release 1 has no service web"
    with pytest.raises(NotFoundError) as err:
        service_rollback.resolve(store, platform, "web", "2")
    assert err.value.message == ("the image of web in release 2 (dddddddddddd) is no longer "
                                 "on this host")
    assert err.value.fix == "pick a newer release (`backout releases`) or an image tag"
    with pytest.raises(NotFoundError, match="no release 9"):
        service_rollback.resolve(store, platform, "web", "9")


@pytest.mark.parametrize(("spec_image", "version", "ref"), [
    ("web:latest", "v1", "web:v1"),
    ("registry:5000/shop/web:2.0", "v1", "registry:5000/shop/web:v1"),  # the port stays
    ("registry:5000/shop/web", "v1", "registry:5000/shop/web:v1"),  # a port is no tag
    ("web@sha256:" + "e" * 64, "v1", "web:v1"),  # nor is a digest kept
    ("web:2@sha256:" + "e" * 64, "v1", "web:v1"),
    (None, "v1", "web:v1"),  # no image: the service's name
    ("web:latest", "other:v0", "other:v0"),  # a full reference is taken as it is
    ("web:latest", "lib/web", "lib/web"),
])
def test_a_version_tag_is_looked_up_beside_the_compose_files_image(
        tmp_path: Path, spec_image: str | None, version: str, ref: str) -> None:
    _config, store, platform = setup(tmp_path, releases=[])
    platform.stack["services"]["web"] = {"image": spec_image} if spec_image else {}
    platform.images[ref] = OLDER
    assert service_rollback.resolve(store, platform, "web", version) == {
        "image_id": OLDER, "source": f"image {ref}", "release_id": None, "current": NEW,
        "project": "shop"}


def test_a_version_tag_that_is_not_here_says_how_to_find_one(tmp_path: Path) -> None:
    _config, store, platform = setup(tmp_path, releases=[{"web": OLD}])
    with pytest.raises(NotFoundError) as err:
        service_rollback.resolve(store, platform, "web", "v9")
    assert err.value.message == "no image web:v9 on this host for web"
    assert err.value.fix == "name a tag that exists (`docker image ls`) or a release id"


def test_an_unknown_service_is_refused_before_anything_is_looked_up(tmp_path: Path) -> None:
    _config, store, platform = setup(tmp_path, releases=[{"web": OLD}])
    with pytest.raises(NotFoundError, match='no service "wbe"'):
        service_rollback.resolve(store, platform, "wbe", None)
    assert platform.called("containers") == [] and platform.called("image") == []


# ---------------------------------------------------------------------------------- plan


def test_the_stop_first_plan_recreates_verifies_and_records(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    plan = service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")
    assert plan.kind == "rollback.service"
    assert plan.steps == (
        Step("recreate web from image aaaaaaaaaaaa", "rollback.service.recreate",
             "stop-first (--order): asked for; web now runs bbbbbbbbbbbb; its container is replaced by "
             "one of aaaaaaaaaaaa (release 1); no other container is touched, no image is "
             "built or pulled",
             {"service": "web", "image_id": OLD, "project": "shop"}, key="recreate:web"),
        Step("verify web", "rollback.service.verify",
             "the new container is healthy and its health URL answers", {"service": "web"},
             key="verify-service:web"),
        Step("record the expected image", "rollback.record_expected",
             "`backout verify` and `backout status` compare against it",
             {"images": {"web": OLD}}, key="record-expected"))
    assert plan.params == {"service": "web", "version": None, "image_id": OLD,
                           "source": "release 1", "release_id": 1, "current": NEW,
                           "project": "shop",
                           "switch": {"order": "stop-first", "reasons": ["asked for"],
                                      "source": "--order"}}
    assert plan.summary == ("roll web back from bbbbbbbbbbbb to aaaaaaaaaaaa (release 1), "
                            "stop-first")
    assert plan.downtime == "web only, while its container is recreated (seconds)"


def test_a_blocked_service_says_why_it_is_recreated(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}],
                                    spec={"container_name": "the-web"})
    plan = service_rollback.plan(store, platform, "web", "v0", config=config)
    assert plan.steps[0].reason.startswith("stop-first: container_name the-web")
    assert "(image web:v0)" in plan.steps[0].reason
    assert plan.params["switch"]["order"] == "stop-first"
    assert plan.params["version"] == "v0" and plan.params["image_id"] == OLDER
    assert plan.summary.endswith("to cccccccccccc (image web:v0), stop-first")


def test_the_default_plan_switches_start_first(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    chosen = switch.order_for(config, platform.stack, "web")
    assert chosen.start_first
    expected = switch.steps(config, platform.stack, "web", image_id=OLD,
                            ref=target_ref("shop", "web", OLD), order=chosen)
    assert plan.steps[:-2] == tuple(expected)
    assert [s.key for s in plan.steps[-2:]] == ["verify-service:web", "record-expected"]
    assert plan.summary == ("roll web back from bbbbbbbbbbbb to aaaaaaaaaaaa (release 1), "
                            "start-first")
    assert plan.downtime == "none expected: web's new container serves before the old one stops"
    assert plan.params["switch"] == {"order": "start-first", "reasons": [], "source": "default"}


def test_a_platform_that_orders_its_own_updates_gets_one_replace_step(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    platform.switches_itself = True
    for order in ("stop-first", "start-first"):  # Compose's orders: refused, with the fix
        with pytest.raises(UsageError, match="--order does not apply on fake"):
            service_rollback.plan(store, platform, "web", None, config=config, order=order)
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert [s.key for s in plan.steps] == ["recreate:web", "verify-service:web",
                                           "record-expected"]
    assert plan.steps[0].reason == (
        "by fake itself, in the order of the service's update_config; web now runs "
        "bbbbbbbbbbbb; its container is replaced by one of aaaaaaaaaaaa (release 1); no "
        "other container is touched, no image is built or pulled")
    assert plan.summary == ("roll web back from bbbbbbbbbbbb to aaaaaaaaaaaa (release 1), "
                            "in fake's own update order")
    assert plan.downtime == ("web while its task is replaced (update_config order stop-first, "
                             "the default)")
    platform.stack["services"]["web"]["deploy"] = {"update_config": {"order": "start-first"}}
    plan = service_rollback.plan(store, platform, "web", None, config=config)
    assert plan.downtime == "none expected: its update_config starts the new task first"


def test_a_service_with_no_container_is_said_to_run_none(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}], running={"worker": NEW})
    plan = service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")
    assert plan.params["current"] is None
    assert plan.summary.startswith("roll web back from none to aaaaaaaaaaaa")
    assert "web now runs none;" in plan.steps[0].reason


# ------------------------------------------------------------------------- the steps, run


def test_the_recorded_expected_images_keep_the_other_services(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    store.set_fact(EXPECTED_IMAGES, {"worker": NEW, "web": NEW})
    plan = service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")
    outcome = execute(store, plan, config, platform)
    assert outcome.status == "succeeded", outcome.error
    assert store.fact(EXPECTED_IMAGES) == {"worker": NEW, "web": OLD}
    assert outcome.results["record-expected"] == {"expected": {"web": OLD}}
    assert outcome.results["verify-service:web"] == {"healthy": True}
    assert platform.running_images() == {"web": OLD, "worker": NEW}


def test_a_health_url_that_answers_wrong_fails_the_verify(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    config.services["web"] = ServiceConfig("web", health_url="http://web:8080/health")
    asked: list[str] = []

    def get(_env: Any, url: str, **_kw: Any) -> Any:
        asked.append(url)
        return type("Probe", (), {"status": 503, "error": None})()

    monkeypatch.setattr(service_rollback.http, "get", get)
    plan = service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")
    outcome = execute(store, plan, config, platform)
    assert outcome.status == "failed" and outcome.failed_step == "verify web"
    assert isinstance(outcome.error, UnhealthyError)
    assert outcome.error.message == ("web: http://web:8080/health answered 503 after the "
                                     "rollback")
    assert asked == ["http://web:8080/health"]
    assert store.fact(EXPECTED_IMAGES) is None  # nothing recorded for a failed rollback


def test_a_stopped_container_fails_the_verify_naming_it(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    plan = service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")

    def replace_but_exit(service: str, image_ref: str, *, operation_id: int) -> None:
        FakePlatform.replace_service(platform, service, image_ref, operation_id=operation_id)
        platform.state[service] = "exited"

    platform.replace_service = replace_but_exit  # type: ignore[method-assign]
    outcome = execute(store, plan, config, platform)
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.message == (
        f"web is not healthy after the rollback: {tmp_path.name}-web-1 exited/None")


def test_the_image_gone_between_plan_and_run_fails_the_recreate(tmp_path: Path) -> None:
    config, store, platform = setup(tmp_path, releases=[{"web": OLD}, {"web": NEW}])
    plan = service_rollback.plan(store, platform, "web", None, config=config, order="stop-first")
    del platform.images["web:v1"]
    outcome = execute(store, plan, config, platform)
    assert outcome.status == "failed" and outcome.failed_step == plan.steps[0].name
    assert isinstance(outcome.error, NotFoundError)
    assert platform.called("replace_service") == [] and platform.called("tag") == []
    assert platform.running_images()["web"] == NEW


# --------------------------------------------------------------------------------- drift


def test_drift_lists_only_running_services_whose_image_differs(tmp_path: Path) -> None:
    platform = FakePlatform(tmp_path, running={"web": OLD, "worker": OLD, "api": NEW, "gone": OLD},
                            stopped={"cron": OLD},
                            images={"web:latest": NEW, "shop-worker": NEW, "api:1": NEW,
                                    "cron:1": NEW},
                            definition={"name": "shop", "services": {
                                "web": {"image": "web:latest"},
                                "worker": {"build": "."},  # compose's own name for it
                                "api": {"image": "api:1"},  # runs what the file says
                                "cron": {"image": "cron:1"},  # not running
                                "gone": {"image": "gone:1"},  # image not here
                                "never": {"image": "web:latest"}}})  # no container
    platform.state["web"] = "restarting"
    assert service_rollback.drift(platform) == {
        "web": {"running": OLD, "compose_file": NEW, "compose_image": "web:latest"},
        "worker": {"running": OLD, "compose_file": NEW, "compose_image": ""}}


def test_a_stack_without_services_has_no_drift(tmp_path: Path) -> None:
    platform = FakePlatform(tmp_path, running={"web": OLD}, definition={"name": "shop"})
    assert service_rollback.drift(platform) == {}
