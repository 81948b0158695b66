"""Issue 2 acceptance on the real test stack: init, config check, errors, the lock,
release recording. The CLI runs as a real subprocess, as an operator would run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker


def backout(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backout", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def initialised(stack: Any) -> Path:
    project: Path = stack.project_dir
    (project / "backout.toml").unlink(missing_ok=True)
    result = backout("init", cwd=project)
    assert result.returncode == 0, result.stderr
    return project


def test_init_writes_a_config_that_check_accepts(initialised: Path, stack: Any) -> None:
    text = (initialised / "backout.toml").read_text()
    for secret in stack.secrets.values():
        assert secret not in text
    result = backout("config", "check", "--json", cwd=initialised)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["valid"] is True
    assert {"mysql", "redis", "mongodb"} <= set(data["databases"])
    assert {"nginx", "backend", "frontend", "model-server"} <= set(data["services"])
    assert f'http://127.0.0.1:{stack.ports["backend"]}/api/v1/health/check' in text
    # the frontend's root page counts views: init found its /health endpoint instead
    assert f'health_url = "http://127.0.0.1:{stack.ports["frontend"]}/health"' in text
    assert 'password_env = "MYSQL_ROOT_PASSWORD"' in text


def test_init_refuses_to_overwrite(initialised: Path) -> None:
    before = (initialised / "backout.toml").read_text()
    result = backout("init", cwd=initialised)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert (initialised / "backout.toml").read_text() == before


@pytest.fixture
def copy(initialised: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "proj"
    shutil.copytree(initialised, dest, ignore=shutil.ignore_patterns(".git", ".backout"))
    return dest


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_typo_in_service_name(copy: Path) -> None:
    cfg = copy / "backout.toml"
    cfg.write_text(cfg.read_text().replace('service = "mysql"', 'service = "mysqll"', 1))
    line = _one_line_error(backout("config", "check", cwd=copy))
    assert 'backout.toml: databases.mysql.service: no service "mysqll" in compose project ' \
           '(did you mean "mysql"?)' in line


def test_missing_env(copy: Path) -> None:
    (copy / ".env").unlink()
    line = _one_line_error(backout("config", "check", cwd=copy))
    assert "backout.toml: project.env_file: .env does not exist" in line


def test_invalid_toml(copy: Path) -> None:
    cfg = copy / "backout.toml"
    cfg.write_text(cfg.read_text() + "\nthis is = = not toml\n")
    line = _one_line_error(backout("config", "check", cwd=copy))
    assert line.startswith("backout: error: backout.toml: invalid TOML:")


def test_json_error_shape(copy: Path) -> None:
    (copy / ".env").unlink()
    result = backout("config", "check", "--json", cwd=copy)
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"]["code"] == "config"


def test_release_record_retains_images(initialised: Path, stack: Any) -> None:
    result = backout("release", "record", "--note", "baseline", "--json", cwd=initialised)
    assert result.returncode == 0, result.stderr
    release = json.loads(result.stdout)["release"]
    backend = release["services"]["backend"]
    assert backend["image_id"].startswith("sha256:")
    tag = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", backend["retained_as"]],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert tag == backend["image_id"]
    manifest = json.dumps(release)
    for secret in stack.secrets.values():
        assert secret not in manifest
    listed = json.loads(backout("releases", "--json", cwd=initialised).stdout)["releases"]
    assert listed[0]["id"] == release["id"] and listed[0]["commit"] == release["commit"]


def test_verbose_logs_external_calls_without_secrets(initialised: Path, stack: Any) -> None:
    result = backout("config", "check", "--verbose", cwd=initialised)
    assert result.returncode == 0
    assert "docker compose" in result.stderr and "exit 0" in result.stderr
    for secret in stack.secrets.values():
        assert secret not in result.stderr + result.stdout


def test_concurrent_mutations_and_kill9_takeover(initialised: Path) -> None:
    env = dict(os.environ, BACKOUT_FAULT_INJECT="lock-acquired=sleep:60")
    first = subprocess.Popen([sys.executable, "-m", "backout", "release", "record"], cwd=initialised,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            status = json.loads(backout("status", "--json", cwd=initialised).stdout)
            if status["lock"]:
                break
            assert time.monotonic() < deadline, "first command never took the lock"
            time.sleep(0.2)
        second = backout("release", "record", cwd=initialised)
        assert second.returncode == 4, second.stderr
        assert f"pid {first.pid}" in second.stderr and "release record" in second.stderr
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        third = backout("release", "record", cwd=initialised)
        assert third.returncode == 0, third.stderr
        assert f"took over the lock left by `release record` (pid {first.pid}" in third.stderr
        events = json.loads(backout("events", "--json", cwd=initialised).stdout)["events"]
        assert any(e["action"] == "lock.takeover" for e in events)
    finally:
        if first.poll() is None:
            first.kill()


def test_release_retention_keeps_the_newest_and_survives_image_prune(initialised: Path) -> None:
    cfg = initialised / "backout.toml"
    original = cfg.read_text()
    cfg.write_text(original.replace("keep_last = 10    #", "keep_last = 2    #"))
    try:
        ids = []
        for _ in range(3):
            result = backout("release", "record", "--json", cwd=initialised)
            assert result.returncode == 0, result.stderr
            ids.append(json.loads(result.stdout)["release"])
        subprocess.run(["docker", "image", "prune", "-f"], capture_output=True, check=True)

        def exists(ref: str) -> bool:
            return subprocess.run(["docker", "image", "inspect", ref], capture_output=True,
                                  check=False).returncode == 0

        oldest, previous, current = ids
        for rel in (previous, current):  # current and previous: always retained
            assert all(exists(s["retained_as"]) for s in rel["services"].values())
        assert not any(exists(s["retained_as"]) for s in oldest["services"].values())
    finally:
        cfg.write_text(original)


def test_init_scripts_keep_the_runbook_commands_working(initialised: Path) -> None:
    try:
        _check_scripts(initialised)
    finally:
        # the stack's repository is shared with later modules: leave its tree clean
        shutil.rmtree(initialised / "deploy", ignore_errors=True)


def _check_scripts(initialised: Path) -> None:
    result = backout("init", "--scripts", "--json", cwd=initialised)
    assert result.returncode == 0, result.stderr
    expected = {"deploy/rollback/emergency_rollback.sh", "deploy/rollback/service_rollback.sh",
                "deploy/rollback/db_rollback.sh", "deploy/rollback/verify_rollback.sh",
                "deploy/scripts/backup.sh", "deploy/scripts/monitor_migration.sh"}
    assert set(json.loads(result.stdout)["scripts"]) == expected
    for rel in expected:
        assert os.access(initialised / rel, os.X_OK)
    # the venv's `backout` entry point, as an installed backout would be on PATH
    bindir = str(Path(sys.executable).parent)
    assert os.access(Path(bindir) / "backout", os.X_OK)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    # the wrappers run backout with the runbook's arguments, letter for letter
    usage = subprocess.run([str(initialised / "deploy/rollback/db_rollback.sh"), "mysql"],
                           capture_output=True, text=True, env=env, timeout=60, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    verify = subprocess.run([str(initialised / "deploy/rollback/verify_rollback.sh"),
                             "--settle", "0", "--json"], capture_output=True, text=True,
                            env=env, timeout=300, check=False)
    assert verify.returncode in (0, 5), verify.stderr
    assert "checks" in json.loads(verify.stdout)
    dry = subprocess.run([str(initialised / "deploy/rollback/service_rollback.sh"), "backend",
                          "no-such-tag"], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert dry.returncode == 7 and "no image" in dry.stderr
