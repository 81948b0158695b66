"""Issue 16 against the real Docker Engine: the monitor reads the engine through its
API (no docker CLI process per evaluation) and a health-check failure Docker reports
wakes the loop at once. One small container of the test's own (debian, a healthcheck
the test makes fail), labelled with a unique run id and removed at the end."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from backout.config import Config, ServiceConfig
from backout.config.model import ProjectConfig
from backout.environment import Environment
from backout.monitor.run import Monitor
from backout.platforms.compose import ComposePlatform
from backout.policy.rules import DEFAULT_RULES, Decision, Level
from backout.signals.engine import ContainerSignals, container_signals
from backout.state import Store
from tests.support.stack import RUN_LABEL, _docker, remove_run

pytestmark = pytest.mark.docker

IMAGE = "debian:bookworm-slim"


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    run_id = f"backout-test-{os.getpid()}-{secrets.token_hex(4)}"
    name = f"bo-i16-{secrets.token_hex(4)}"
    # healthy while /tmp/healthy exists; the test removes it
    (tmp_path / "docker-compose.yml").write_text(json.dumps({"services": {"probe": {
        "image": IMAGE, "init": True, "labels": {RUN_LABEL: run_id},
        "command": ["sh", "-c", "touch /tmp/healthy; echo ready; echo 'ERROR boom' >&2; "
                                "exec sleep infinity"],
        "healthcheck": {"test": ["CMD", "test", "-f", "/tmp/healthy"], "interval": "1s",
                        "timeout": "2s", "retries": 2}}}}))
    try:
        _docker("compose", "--project-directory", str(tmp_path), "-p", name, "up", "-d",
                "--wait", "--pull", "never", timeout=120)
        yield tmp_path, name
    finally:
        _docker("compose", "--project-directory", str(tmp_path), "-p", name, "down", "-v",
                "-t", "1", check=False, timeout=120)
        remove_run(run_id, name)


def counting_docker(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose ``docker`` logs each invocation before running the real one."""
    real = shutil.which("docker")
    assert real is not None
    shim_dir, log = tmp_path / "shim", tmp_path / "docker-calls.log"
    shim_dir.mkdir()
    shim = shim_dir / "docker"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    log.write_text("")
    return {**os.environ, "PATH": f"{shim_dir}:{os.environ.get('PATH', '')}"}, log


def test_the_monitor_reads_the_api_and_wakes_on_a_health_event(
        project: tuple[Path, str], tmp_path: Path) -> None:
    project_dir, name = project
    environ, calls = counting_docker(tmp_path)
    env = Environment(project_dir=project_dir, env=environ)
    cfg = Config(path=project_dir / "backout.toml", project_dir=project_dir,
                 project=ProjectConfig(name=name, env_file=None),
                 services={"probe": ServiceConfig("probe")})

    # What the platform reads through the API equals what the CLI path reads.
    platform = ComposePlatform(env, cfg)
    assert platform.engine is not None
    by_api = platform.containers()
    cli = ComposePlatform(env, cfg)
    cli.engine = None
    by_cli = cli.containers()
    assert [(c.id, c.service, c.state, c.health, c.image_id, c.restart_count)
            for c in by_api] == [(c.id, c.service, c.state, c.health, c.image_id,
                                  c.restart_count) for c in by_cli]
    assert by_api[0].health == "healthy"
    logs = platform.logs("probe", "2000-01-01T00:00:00Z", timestamps=True)
    # stdout and stderr, demultiplexed (their order within one instant is the engine's)
    assert sorted(line.split(" ", 1)[1] for line in logs.splitlines()) == ["ERROR boom", "ready"]
    assert platform.stats([by_api[0].id])[by_api[0].id]["memory_percent"] > 0
    assert calls.read_text(), "the shim counts CLI processes (the CLI path spawned some)"
    calls.write_text("")

    decisions: list[Decision] = []
    first, second = threading.Event(), threading.Event()
    stop = threading.Event()
    monitors: list[Monitor] = []

    def on_decision(decision: Decision) -> None:
        decisions.append(decision)
        (first if len(decisions) == 1 else second).set()
        if len(decisions) >= 2:
            stop.set()

    def main() -> None:
        mon = Monitor(env, cfg, Store(project_dir / ".backout"), ComposePlatform(env, cfg),
                      DEFAULT_RULES)
        monitors.append(mon)
        mon.run(3600.0, on_decision=on_decision, stop=stop)  # only an event can wake it

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        assert first.wait(60)
        assert decisions[0].level == Level.GREEN
        cid = by_api[0].id
        _docker("exec", cid, "rm", "/tmp/healthy")  # Docker's healthcheck fails from now
        # Docker marks it unhealthy after 2 failed checks at 1 s; its health_status
        # event wakes the loop (the interval is an hour).
        assert second.wait(60), "no evaluation after Docker reported the container unhealthy"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    mon = monitors[0]
    assert mon.wake_ups == 1
    assert mon.woken_by is not None and mon.woken_by.action == "health_status: unhealthy"
    assert mon.woken_by.service == "probe" and mon.woken_by.container_id == cid
    assert decisions[1].level == Level.RED
    assert decisions[1].active[0].rule == "red-health-check"
    assert decisions[1].active[0].value is not None and decisions[1].active[0].value >= 2
    # Two evaluations (containers, stats, logs) and the event stream: no docker process.
    assert calls.read_text() == ""


def probe_project(project: tuple[Path, str]) -> tuple[Environment, Config, tuple[str, ...]]:
    """The fixture's project as backout sees it, and `docker compose` argv for it."""
    project_dir, name = project
    env = Environment(project_dir=project_dir, env=dict(os.environ))
    cfg = Config(path=project_dir / "backout.toml", project_dir=project_dir,
                 project=ProjectConfig(name=name, env_file=None),
                 services={"probe": ServiceConfig("probe")})
    return env, cfg, ("compose", "--project-directory", str(project_dir), "-p", name)


def test_one_off_jobs_are_not_the_service_and_stop_with_it(
        project: tuple[Path, str], caplog: pytest.LogCaptureFixture) -> None:
    """`docker compose run` leftovers against the real engine and Compose: an exited
    job is not the service down (the monitor would roll back a healthy stack), and
    `docker compose stop` leaves a running job running, so backout stops it itself."""
    name = project[1]
    env, cfg, compose = probe_project(project)
    # the exited job's name sorts after the service's: the monitor took the last one
    _docker(*compose, "run", "--name", f"{name}-zz-job-done", "probe", "true", timeout=120)
    _docker(*compose, "run", "-d", "--name", f"{name}-job", "probe", "sleep", "infinity",
            timeout=120)
    api_path = ComposePlatform(env, cfg)
    cli_path = ComposePlatform(env, cfg)
    cli_path.engine = None
    for plat in (api_path, cli_path):
        assert [c.name for c in plat.containers()] == [f"{name}-probe-1"]
        assert sorted(c.name for c in plat.one_off_jobs("probe")) == [f"{name}-job",
                                                                      f"{name}-zz-job-done"]
        signals = container_signals(plat)
        assert signals["probe"].running and signals["probe"].health == "healthy"
    with caplog.at_level("WARNING"):
        assert api_path.stop(["probe"]) == ["probe"]
    states = {c.name: c.state for c in api_path.one_off_jobs()}
    assert states == {f"{name}-job": "exited", f"{name}-zz-job-done": "exited"}
    assert [c.state for c in api_path.containers()] == ["exited"]
    assert f"stopped {name}-job, a `docker compose run` job of probe" in caplog.text
    api_path.start(["probe"])
    assert [c.state for c in api_path.containers()] == ["running"]
    assert {c.state for c in api_path.one_off_jobs()} == {"exited"}  # a job is not restarted
    # the CLI path stops a job as well (`docker stop`)
    _docker(*compose, "run", "-d", "--name", f"{name}-job2", "probe", "sleep", "infinity",
            timeout=120)
    assert cli_path.stop(["probe"]) == ["probe"]
    assert {c.name: c.state for c in cli_path.one_off_jobs()}[f"{name}-job2"] == "exited"


def test_a_service_of_two_replicas_is_down_only_when_both_are(
        project: tuple[Path, str]) -> None:
    """Against the real engine: one replica of two unhealthy is no outage (the health
    rule would roll a serving stack back), both unhealthy is, and a stopped replica
    beside a running one leaves the service up."""
    env, cfg, compose = probe_project(project)
    _docker(*compose, "up", "-d", "--wait", "--no-recreate", "--scale", "probe=2",
            timeout=120)
    plat = ComposePlatform(env, cfg)
    first, second = (c.id for c in plat.containers("probe"))

    def reads(until: Callable[[ContainerSignals], bool]) -> ContainerSignals:
        deadline = time.monotonic() + 30
        while True:
            got = container_signals(plat)["probe"]
            if until(got) or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    # the one that sorts last by name fails: the last one decided before
    _docker("exec", second, "rm", "/tmp/healthy")
    deadline = time.monotonic() + 30
    while [c.health for c in plat.containers("probe") if c.id == second] != ["unhealthy"]:
        assert time.monotonic() < deadline, "Docker never marked the replica unhealthy"
        time.sleep(0.5)
    one = container_signals(plat)["probe"]
    assert (one.running, one.health, one.failing_streak) == (True, "healthy", 0)
    _docker("exec", first, "rm", "/tmp/healthy")
    both = reads(lambda s: s.health == "unhealthy")
    assert both.running and both.health == "unhealthy" and both.failing_streak >= 2
    # the last one stopped, the first healthy again: up
    _docker("exec", first, "touch", "/tmp/healthy")
    _docker("stop", "-t", "1", second)
    up = reads(lambda s: s.health == "healthy")
    assert up.running and up.health == "healthy"


def test_the_published_address_read_through_the_api_is_composes(
        project: tuple[Path, str]) -> None:
    """`published_address` (how backout reaches a database's port from the host) reads
    the engine's list instead of starting `docker compose port`: against the real
    engine, the same answer as Compose's for a port on every address, one on
    127.0.0.1 and one not published; none while the service is stopped."""
    project_dir, _ = project
    env, cfg, compose = probe_project(project)
    spec = json.loads((project_dir / "docker-compose.yml").read_text())
    spec["services"]["probe"]["ports"] = ["8080", "127.0.0.1::8081"]
    (project_dir / "docker-compose.yml").write_text(json.dumps(spec))
    _docker(*compose, "up", "-d", "--wait", "--pull", "never", timeout=120)
    # a job publishing the same ports, whose name sorts before the service's container:
    # read as the service, its ports would be the answer
    _docker(*compose, "run", "-d", "--service-ports", "--name", f"{project[1]}-job", "probe",
            "sleep", "infinity", timeout=120)
    api_path = ComposePlatform(env, cfg)
    cli_path = ComposePlatform(env, cfg)
    cli_path.engine = None
    bindings = json.loads(_docker("inspect", f"{project[1]}-probe-1", timeout=60).stdout
                          )[0]["NetworkSettings"]["Ports"]["8080/tcp"]
    host_ports = {b["HostPort"] for b in bindings}
    for port in (8080, 8081, 8082):
        by_api = api_path.published_address("probe", port)
        assert by_api == cli_path.published_address("probe", port), port
        assert (by_api is None) == (port == 8082)
    assert str(api_path.published_address("probe", 8081)).startswith("127.0.0.1:")
    assert str(api_path.published_address("probe", 8080)).rpartition(":")[2] in host_ports
    _docker(*compose, "stop", "-t", "1", "probe", timeout=120)
    assert api_path.published_address("probe", 8080) is None  # the job's ports are not


def test_logs_since_a_moment_from_the_tail_are_what_the_engine_gives_since_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log longer than the first tail, on the real engine's json-file log: what the
    tail-first read gives since each moment is exactly what the engine's own ``since``
    gives, whether the tail reached back (one read of the tail) or not (two reads)."""
    from backout.adapters.engine_api import LOG_TAIL_FIRST, EngineAPI

    run_id = f"backout-test-{os.getpid()}-{secrets.token_hex(4)}"
    script = (f"i=0; while [ $i -lt {3 * LOG_TAIL_FIRST} ]; do echo \"line $i\"; "
              "i=$((i+1)); done; sleep 2; echo late; echo 'ERROR late' >&2; exec sleep infinity")
    cid = _docker("run", "-d", "--init", "--label", f"{RUN_LABEL}={run_id}", IMAGE,
                  "sh", "-c", script).stdout.strip()
    try:
        api = EngineAPI(Environment(project_dir=tmp_path))

        def whole() -> str:
            return api._read_logs(cid, {}, timestamps=True, tty=False) or ""

        deadline = time.monotonic() + 60
        # both last lines (stdout's and stderr's are copied apart: either may be first)
        while len(lines := whole().splitlines(keepends=True)) < 3 * LOG_TAIL_FIRST + 2:
            assert time.monotonic() < deadline, "the container did not log its last lines"
            time.sleep(0.2)
        assert len(lines) == 3 * LOG_TAIL_FIRST + 2

        def unix(line: str) -> str:  # a line's stamp as Unix time, exactly
            moment = datetime.fromisoformat(line[:26] + "+00:00")
            return f"{int(moment.timestamp())}.{line[20:29]}"

        reads: list[dict[str, str]] = []
        real = api._read_logs

        def spy(container_id: str, query: dict[str, str], **kw: bool) -> str | None:
            reads.append(query)
            return real(container_id, query, **kw)

        monkeypatch.setattr(api, "_read_logs", spy)
        # The first tail (the last 200 of 602 lines) does not reach back to line 500:
        # read since it. Then the gap of 2 s before the last two lines: the tail
        # (twice the first, or what came) reaches back.
        for moment, expected_reads in ((unix(lines[500]), 2), (unix(lines[-2]), 1),
                                       (unix(lines[-1]), 1)):
            reads.clear()
            got = api.logs(cid, since=moment, timestamps=True, tty=False)
            assert got == real(cid, {"since": moment}, timestamps=True, tty=False)
            assert len(reads) == expected_reads, reads
            assert got, "nothing since a line's own stamp: that line is kept"
    finally:
        remove_run(run_id)
