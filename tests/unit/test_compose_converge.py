"""A whole stack brought up on a local engine is waited for by backout as `up --wait`
would (compose's start.go and convergence.go: a job another service depends on with
service_completed_successfully must exit 0, every other service be running and
healthy where it has a healthcheck; scale 0 and inactive profiles are not waited
for), looked at every READY_POLL instead of at Compose's 500 ms ticks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.errors import UnhealthyError
from backout.platforms import base as platform_base
from backout.platforms import compose as compose_platform
from backout.platforms.base import ContainerInfo
from backout.platforms.compose import COMPLETED, READY, ComposePlatform, wait_conditions
from backout.proc import Result
from tests.support.enginelooks import looks, platform_for_looks

DEFINITION: dict[str, Any] = {"services": {
    "web": {"image": "web", "depends_on": {"migrate": {
        "condition": "service_completed_successfully", "required": True},
        "db": {"condition": "service_healthy"}}},
    "migrate": {"image": "web"},
    "db": {"image": "mariadb"},
    "worker": {"image": "web", "depends_on": {"db": {"condition": "service_started"}}},
    "debug": {"image": "web", "scale": 0},
    "batch": {"image": "web", "deploy": {"replicas": 0}},
    "api": {"image": "api", "deploy": {"replicas": 2}},
    "cloud-db": {"provider": {"type": "awesomecloud", "options": {"type": "mysql"}}},
}}


def test_the_conditions_are_compose_wait_s() -> None:
    assert wait_conditions(DEFINITION) == {"web": READY, "migrate": COMPLETED, "db": READY,
                                           "worker": READY, "api": READY}
    assert wait_conditions({}) == {}


def box(service: str, state: str = "running", health: str | None = "healthy", n: int = 1,
        exit_code: int = 0) -> ContainerInfo:
    return ContainerInfo(id=f"{service}-{n}", name=f"p-{service}-{n}", service=service,
                         state=state, health=health, image=service, image_id="sha256:x",
                         restart_count=0, started_at="2026-12-05T10:00:00Z",
                         exit_code=exit_code)


HEALTHY = [box("web"), box("migrate", "exited", None), box("db"), box("worker", health=None),
           box("api"), box("api", n=2)]


class Compose:
    def __init__(self, ok: bool = True) -> None:
        self.runs: list[tuple[str, ...]] = []
        self.ok = ok

    def run(self, *args: str, **kw: Any) -> Result:
        self.runs.append(args)
        return Result(list(args), 0 if self.ok else 1, "", "" if self.ok else "boom\nlast line",
                      0.0)


@pytest.fixture
def plat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ComposePlatform,
                                                                             Compose]]:
    platform = platform_for_looks(tmp_path)
    compose = Compose()
    monkeypatch.setattr(platform, "compose", compose)
    monkeypatch.setattr(platform, "definition", lambda: DEFINITION)
    monkeypatch.setattr(compose_platform, "READY_POLL", 0.0)
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 0.0)
    monkeypatch.setattr(compose_platform, "STACK_TIMEOUT", 2.0)  # a wrong wait ends
    monkeypatch.setattr(compose_platform, "BRING_UP_TIMEOUT", 2.0)
    yield platform, compose


def test_up_without_wait_then_looks_until_the_stack_is_ready(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, compose = plat
    first = [dataclasses.replace(c, state="running") if c.service == "migrate" else
             dataclasses.replace(c, health="starting") if c.service == "web" else c
             for c in HEALTHY]
    second = [dataclasses.replace(c, health="starting") if c.service == "web" else c
              for c in HEALTHY]
    asked = looks(platform, monkeypatch, [first, second, HEALTHY])
    platform.converge(pull=False)
    assert compose.runs == [("up", "-d", "--no-build", "--pull", "never", "--remove-orphans")]
    # the job still running and web starting; web starting; web healthy: what was
    # satisfied is not asked about again
    assert asked == [("web", "migrate", "db", "worker", "api"), ("web", "migrate"), ("web",)]


def test_a_service_once_satisfied_is_not_held_against_the_stack(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    """As Compose's --wait (one watcher per service, done once satisfied): worker
    running, then gone while db was still starting, does not fail the wait."""
    platform, _ = plat
    db_starting = [dataclasses.replace(c, health="starting") if c.service == "db" else c
                   for c in HEALTHY]
    worker_gone = [dataclasses.replace(c, state="exited", exit_code=0) if c.service == "worker"
                   else c for c in db_starting]
    looks(platform, monkeypatch, [db_starting, worker_gone, HEALTHY])
    platform.converge(pull=False)


def test_a_crash_loop_fails_without_waiting_out_the_deadline(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a restart policy a crash-looping container is never "exited": 10 restarts
    seen by the wait end it (they come within about 100 s), not the 900 s."""
    platform, _ = plat
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 10.0)
    monkeypatch.setattr(compose_platform, "STACK_TIMEOUT", 30.0)
    seen = [[dataclasses.replace(c, state="restarting" if n % 2 else "running",
                                 restart_count=5 + n, started_at=f"t{n}")
             if c.service == "worker" else c for c in HEALTHY] for n in range(12)]
    asked = looks(platform, monkeypatch, seen)
    with pytest.raises(UnhealthyError, match="p-worker-1 is running/None after 10 restarts"):
        platform.converge(pull=False)
    assert len(asked) == 11  # restart counts 5 (first seen) .. 15


def test_a_remote_engine_keeps_compose_s_wait(plat: tuple[ComposePlatform, Compose]) -> None:
    platform, compose = plat
    platform.converge(pull=True)
    assert compose.runs == [("up", "-d", "--no-build", "--remove-orphans", "--wait")]


def test_a_failed_up_says_its_last_line(plat: tuple[ComposePlatform, Compose],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    platform, compose = plat
    compose.ok = False
    asked = looks(platform, monkeypatch, [HEALTHY])
    with pytest.raises(UnhealthyError, match=r"^last line$"):
        platform.converge(pull=False)
    assert asked == []


@pytest.mark.parametrize(("broken", "message"), [
    (box("web", "exited", None, exit_code=3), "container p-web-1 exited \\(3\\)"),
    (box("web", "running", "unhealthy"), "container p-web-1 is running/unhealthy"),
    (box("web", "dead", None), "container p-web-1 is dead/None"),
    (box("migrate", "exited", None, exit_code=1),
     "service migrate didn't complete successfully: p-migrate-1 exit 1"),
    (box("migrate", "dead", None), "service migrate didn't complete"),
    (box("api", "exited", None, n=2), "container p-api-2 exited \\(0\\)"),
])
def test_a_container_that_fails_fails_the_converge(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch,
        broken: ContainerInfo, message: str) -> None:
    platform, _ = plat
    seen = [broken if c.id == broken.id else c for c in HEALTHY]
    looks(platform, monkeypatch, [seen])
    with pytest.raises(UnhealthyError, match=message):
        platform.converge(pull=False)


def test_a_service_without_a_container_fails(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    looks(platform, monkeypatch, [[c for c in HEALTHY if c.service != "worker"]])
    with pytest.raises(UnhealthyError, match="worker has no container"):
        platform.converge(pull=False)


def test_what_is_not_waited_for_does_not_hold_the_wait(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped container of a service scaled to 0, an orphan, a profile's service."""
    platform, _ = plat
    looks(platform, monkeypatch, [[*HEALTHY, box("debug", "exited", None, exit_code=137),
                                   box("gone", "running", "unhealthy")]])
    platform.converge(pull=False)


def test_without_a_healthcheck_it_must_keep_running_a_while(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 0.2)
    died = [box("worker", "exited", None, exit_code=1) if c.service == "worker" else c
            for c in HEALTHY]
    looks(platform, monkeypatch, [HEALTHY, died])
    with pytest.raises(UnhealthyError, match="p-worker-1 exited \\(1\\)"):
        platform.converge(pull=False)


def test_a_stack_that_never_gets_ready_times_out_naming_what_it_waited_for(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    monkeypatch.setattr(compose_platform, "STACK_TIMEOUT", 0.05)
    looks(platform, monkeypatch, [[dataclasses.replace(c, health="starting")
                                   if c.service == "db" else c for c in HEALTHY]])
    with pytest.raises(UnhealthyError, match=r"^db did not get healthy within 0s of docker "
                       r"compose up \(p-db-1 running/starting\)"):
        platform.converge(pull=False)


# --------------------------------------------------------------------------- one service


def test_one_service_brought_up_is_waited_for_the_same_way(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    # a database after its restore: `up -d` of it alone, then looked at until it is
    # healthy (it loads its data first), not Compose's --wait
    platform, compose = plat
    loading = [dataclasses.replace(c, health="starting") if c.service == "db" else c
               for c in HEALTHY]
    asked = looks(platform, monkeypatch, [loading, loading, HEALTHY])
    platform.bring_up("db")
    assert compose.runs == [("up", "-d", "--no-deps", "db")]
    assert asked == [("db",), ("db",), ("db",)]


def test_one_service_that_fails_to_come_up_fails_the_bring_up(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    dead = [dataclasses.replace(c, health="unhealthy") if c.service == "db" else c
            for c in HEALTHY]
    looks(platform, monkeypatch, [dead])
    with pytest.raises(UnhealthyError, match="p-db-1"):
        platform.bring_up("db")


def test_one_service_that_never_gets_healthy_names_the_bring_up_s_limit(
        plat: tuple[ComposePlatform, Compose], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    monkeypatch.setattr(compose_platform, "BRING_UP_TIMEOUT", 0.2)
    starting = [dataclasses.replace(c, health="starting") if c.service == "db" else c
                for c in HEALTHY]
    looks(platform, monkeypatch, [starting] * 10_000)
    with pytest.raises(UnhealthyError, match=r"db did not get healthy within 0s"):
        platform.bring_up("db")


def test_one_service_on_a_remote_engine_keeps_compose_s_wait(
        plat: tuple[ComposePlatform, Compose]) -> None:
    platform, compose = plat
    platform.bring_up("db")
    assert compose.runs == [("up", "-d", "--no-deps", "--wait", "db")]
