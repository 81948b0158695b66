"""Shared fixtures. Tests marked ``docker`` need a real engine: they skip on a
laptop without one and FAIL when BACKOUT_REQUIRE_DOCKER=1 (CI sets it), so a CI
machine that lost its engine can never pass by skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_DOCKER = os.environ.get("BACKOUT_REQUIRE_DOCKER") == "1"


def docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return "Docker Engine not reachable: " + (info.stderr.strip().splitlines() or ["?"])[-1]
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                             timeout=30, check=False)
    if compose.returncode != 0:
        return "Docker Compose v2 not installed"
    return None


_DOCKER_PROBLEM: str | None = None
_PROBED = False


def require_docker() -> None:
    global _DOCKER_PROBLEM, _PROBED
    if not _PROBED:
        _DOCKER_PROBLEM = docker_problem()
        _PROBED = True
    if _DOCKER_PROBLEM:
        if REQUIRE_DOCKER:
            pytest.fail(f"BACKOUT_REQUIRE_DOCKER=1 but {_DOCKER_PROBLEM}", pytrace=False)
        pytest.skip(_DOCKER_PROBLEM)


@pytest.fixture(autouse=True)
def _docker_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("docker") is not None:
        require_docker()


@pytest.fixture(autouse=True)
def _fresh_interrupt_state() -> None:
    """The process-wide SIGINT/SIGTERM state of one test (a wind-down it requested, as a
    real Ctrl-C would) must not leak into the next: each test starts as a new command."""
    from backout.operations import interrupt

    interrupt.reset()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The full test stack, built and started once per session, torn down after."""
    require_docker()
    from tests.support.stack import TestStack, cleanup_stale

    cleanup_stale()
    s = TestStack.create(tmp_path_factory.mktemp("stack"))
    try:
        s.build_images()
        s.up()
        s.seed()
        yield s
    finally:
        s.down()


@pytest.fixture
def backout_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BACKOUT_ACTOR"] = "pytest"
    return env


@pytest.fixture(scope="session")
def swarm_lab() -> Iterator[object]:
    """The two-node Swarm lab (tests/swarm/lab.sh), started once per session with the
    test images in its registry, torn down after. Skips where it cannot start (not
    root, tools missing); FAILS under BACKOUT_REQUIRE_DOCKER=1."""
    require_docker()
    from tests.support.stack import build_images
    from tests.support.swarm import lab_down, lab_problem, lab_up

    problem = lab_problem()
    if problem:
        if REQUIRE_DOCKER:
            pytest.fail(f"BACKOUT_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    build_images()
    try:
        lab = lab_up()
    except RuntimeError as exc:
        lab_down()
        if REQUIRE_DOCKER:
            pytest.fail(f"BACKOUT_REQUIRE_DOCKER=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield lab
    finally:
        lab_down()
