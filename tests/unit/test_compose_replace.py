"""A service replaced on a local engine is waited for by backout, as `up --wait`
would (every container running, healthy where it has a healthcheck; exited, dead or
unhealthy fails), looked at every READY_POLL instead of at Compose's 500 ms ticks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.errors import CommandFailedError, UnhealthyError
from backout.platforms import base as platform_base
from backout.platforms import compose as compose_platform
from backout.platforms.base import ContainerInfo
from backout.platforms.compose import ComposePlatform
from tests.support.enginelooks import looks, platform_for_looks


def box(state: str = "running", health: str | None = "healthy", cid: str = "1") -> ContainerInfo:
    return ContainerInfo(id=cid, name=f"web-{cid}", service="web", state=state, health=health,
                         image="web", image_id="sha256:new", restart_count=0,
                         started_at="2026-12-05T10:00:00Z")


class Pinned:
    def __init__(self) -> None:
        self.runs: list[tuple[str, ...]] = []

    def run(self, *args: str, **kw: Any) -> None:
        self.runs.append(args)


@pytest.fixture
def plat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ComposePlatform,
                                                                             Pinned]]:
    platform = platform_for_looks(tmp_path)
    pinned = Pinned()
    monkeypatch.setattr(platform, "_pinned", lambda *a: pinned)
    monkeypatch.setattr(compose_platform, "READY_POLL", 0.0)
    monkeypatch.setattr(compose_platform, "REPLACE_TIMEOUT", 2.0)  # a wrong wait ends
    yield platform, pinned


def test_up_without_wait_then_looks_until_every_container_is_healthy(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, pinned = plat
    asked = looks(platform, monkeypatch, [[box(health="starting")],
                                          [box(health="starting"), box(cid="2")],
                                          [box(), box(cid="2")]])
    platform.replace_service("web", "web:v1", operation_id=7)
    assert pinned.runs == [("up", "-d", "--no-deps", "--no-build", "--pull", "never", "web")]
    assert asked == [("web",)] * 3  # starting, one of two starting, both healthy


def test_a_service_scaled_to_zero_has_nothing_to_wait_for(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    asked = looks(platform, monkeypatch, [[]])  # up -d returns with its containers started
    platform.replace_service("web", "web:v1", operation_id=7)
    assert len(asked) == 1


def test_without_a_healthcheck_it_must_keep_running_a_while(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    """An image that dies at once fails the replacement, as Compose's first look (500 ms
    after the start) would fail it, instead of passing at the first look."""
    platform, _ = plat
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 0.2)
    looks(platform, monkeypatch, [[box(health=None)], [box(state="exited", health=None)]])
    with pytest.raises(UnhealthyError, match="web-1 is exited/None"):
        platform.replace_service("web", "web:v1", operation_id=7)


def test_a_restart_starts_the_while_again(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    monkeypatch.setattr(platform_base, "RUNNING_AT_LEAST", 0.1)
    start = time.monotonic()

    def containers(*services: str) -> list[ContainerInfo]:
        if time.monotonic() - start < 0.08:
            return [box(health=None)]
        restarted = box(health=None)
        return [dataclasses.replace(restarted, restart_count=1,
                                    started_at="2026-12-05T10:00:01Z")]

    monkeypatch.setattr(platform, "containers", containers)
    platform.engine = object()  # type: ignore[assignment]
    platform.replace_service("web", "web:v1", operation_id=7)
    assert time.monotonic() - start >= 0.18  # 0.1 s running after the restart at 0.08 s


@pytest.mark.parametrize(("state", "health"), [("exited", None), ("dead", None),
                                               ("running", "unhealthy"), ("exited", "unhealthy")])
def test_a_container_that_fails_fails_the_replacement(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch,
        state: str, health: str | None) -> None:
    platform, _ = plat
    looks(platform, monkeypatch, [[box(health="starting")], [box(), box(state, health, cid="2")]])
    with pytest.raises(UnhealthyError, match=f"web-2 is {state}/{health}"):
        platform.replace_service("web", "web:v1", operation_id=7)


def test_one_never_healthy_fails_at_the_deadline(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, _ = plat
    monkeypatch.setattr(compose_platform, "REPLACE_TIMEOUT", 0.05)
    looks(platform, monkeypatch, [[box(health="starting")]])
    with pytest.raises(UnhealthyError, match=r"did not get healthy in 0s \(web-1 running/starting\)"):
        platform.replace_service("web", "web:v1", operation_id=7)


def test_a_remote_engine_leaves_the_wait_to_compose(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, pinned = plat
    monkeypatch.setattr(platform, "containers", lambda *s: pytest.fail("looked"))
    platform.replace_service("web", "web:v1", operation_id=7)
    assert pinned.runs == [("up", "-d", "--no-deps", "--no-build", "--pull", "never", "--wait",
                            "web")]


@pytest.mark.parametrize("said", ["container web-1 is unhealthy", "container web-1 exited (1)"])
def test_a_remote_wait_s_health_failure_has_the_local_one_s_exit_code(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch, said: str) -> None:
    platform, pinned = plat

    def run(*args: str, **kw: Any) -> None:
        raise CommandFailedError(f"docker compose up web failed (exit 1): {said}")

    monkeypatch.setattr(pinned, "run", run)
    with pytest.raises(UnhealthyError, match=said.replace("(", r"\(").replace(")", r"\)")):
        platform.replace_service("web", "web:v1", operation_id=7)


def test_a_remote_up_that_fails_otherwise_stays_an_external_failure(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    platform, pinned = plat

    def run(*args: str, **kw: Any) -> None:
        raise CommandFailedError("docker compose up web failed (exit 1): port is already allocated")

    monkeypatch.setattr(pinned, "run", run)
    with pytest.raises(CommandFailedError, match="port is already allocated"):
        platform.replace_service("web", "web:v1", operation_id=7)


def test_a_crash_loop_fails_the_replacement(
        plat: tuple[ComposePlatform, Pinned], monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart policy keeps a crashing container from ever being "exited": the wait
    gives up after CRASH_LOOP_RESTARTS restarts instead of at its deadline."""
    platform, _ = plat
    monkeypatch.setattr(compose_platform, "REPLACE_TIMEOUT", 30.0)
    seen = [[dataclasses.replace(box(state="restarting" if n % 2 else "running",
                                     health="starting"), restart_count=n)]
            for n in range(platform_base.CRASH_LOOP_RESTARTS + 2)]
    looks(platform, monkeypatch, seen)
    with pytest.raises(UnhealthyError, match="web-1 is running/starting after 10 restarts"):
        platform.replace_service("web", "web:v1", operation_id=7)
