"""The whole stack's ``converge`` on the real Docker Engine and Compose: ``up -d``, then
backout's own wait, which must pass what ``up --wait`` passes and fail what it fails.
A small project of the test's own (debian): an init job another service needs
``service_completed_successfully``, a service with a healthcheck, one without, one
scaled to 0 and one in an inactive profile. Labelled with a unique run id, removed at
the end."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backout.config import Config
from backout.config.model import ProjectConfig
from backout.environment import Environment
from backout.errors import UnhealthyError
from backout.platforms.compose import ComposePlatform
from tests.support.stack import RUN_LABEL, _docker, remove_run

pytestmark = pytest.mark.docker

IMAGE = "debian:bookworm-slim"


def definition(run_id: str, *, app_healthcheck: bool = True) -> dict[str, Any]:
    def svc(command: str, **more: Any) -> dict[str, Any]:
        return {"image": IMAGE, "init": True, "labels": {RUN_LABEL: run_id},
                "command": ["sh", "-c", command], **more}
    app = svc("sleep ${APP_HEALTHY_AFTER:-1}; touch /tmp/healthy; exec sleep infinity",
              depends_on={"migrate": {"condition": "service_completed_successfully"}})
    if app_healthcheck:
        app["healthcheck"] = {"test": ["CMD", "test", "-f", "/tmp/healthy"], "interval": "1s",
                              "timeout": "2s", "retries": 2,
                              "start_period": "${APP_START_PERIOD:-30s}"}
    return {"services": {
        "migrate": svc("sleep 0.5; exit 0"),
        "app": app,
        # no healthcheck: running is all it can say; WORKER_EXIT makes it die at once.
        # Started last (after app), so `up -d` returns just after its start.
        "worker": svc("sleep 0.2; ${WORKER_EXIT:-exec sleep infinity}",
                      depends_on={"app": {"condition": "service_started"}}),
        "spare": svc("exit 9", scale=0),
        "debug": svc("exit 9", profiles=["debug"]),
    }}


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    run_id = f"backout-test-{os.getpid()}-{secrets.token_hex(4)}"
    name = f"bo-wait-{secrets.token_hex(4)}"
    app_healthcheck = getattr(request, "param", True)  # parametrized indirectly: False
    (tmp_path / "docker-compose.yml").write_text(
        json.dumps(definition(run_id, app_healthcheck=app_healthcheck)))
    try:
        yield tmp_path, name
    finally:
        _docker("compose", "--project-directory", str(tmp_path), "-p", name, "down", "-v",
                "-t", "1", check=False, timeout=120)
        remove_run(run_id, name)


def platform(project: tuple[Path, str], **variables: str) -> ComposePlatform:
    project_dir, name = project
    env = Environment(project_dir=project_dir, env={**os.environ, **variables})
    cfg = Config(path=project_dir / "backout.toml", project_dir=project_dir,
                 project=ProjectConfig(name=name, env_file=None))
    plat = ComposePlatform(env, cfg)
    assert plat.engine is not None  # the local engine: backout's own wait
    return plat


def states(plat: ComposePlatform) -> dict[str, tuple[str, str | None, int]]:
    return {c.service: (c.state, c.health, c.exit_code) for c in plat.containers()}


def test_the_stack_is_waited_for_as_up_wait_would(project: tuple[Path, str]) -> None:
    plat = platform(project)
    plat.converge(pull=False)
    # returned only once the job had exited 0 and app was healthy; nothing of the
    # profile or of the service scaled to 0 was started or waited for
    assert states(plat) == {"migrate": ("exited", None, 0), "app": ("running", "healthy", 0),
                            "worker": ("running", None, 0)}
    plat.converge(pull=False)  # again, nothing to change: waits for the same, passes


@pytest.mark.parametrize("project", [False], indirect=True)  # app without a healthcheck
def test_a_service_that_dies_at_once_fails_the_wait(project: tuple[Path, str]) -> None:
    """`up -d` succeeds (it does not wait) just after worker's start; nothing has a
    healthcheck, so at the first look everything runs: the wait must not pass worker,
    which exits 0.2 s after its start."""
    plat = platform(project, WORKER_EXIT="exit 3")
    with pytest.raises(UnhealthyError, match=r"container .*-worker-1 exited \(3\)"):
        plat.converge(pull=False)


def test_an_unhealthy_service_fails_the_wait(project: tuple[Path, str]) -> None:
    plat = platform(project, APP_HEALTHY_AFTER="3600", APP_START_PERIOD="0s")
    with pytest.raises(UnhealthyError, match=r"container .*-app-1 is running/unhealthy"):
        plat.converge(pull=False)
