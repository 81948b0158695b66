"""`backout doctor` against the real test stack (Docker Engine, Compose v2, MariaDB,
Redis, the MongoDB stand-in): ready after `release record`; a wrong database
password and an engine that does not answer each fail their own check, exit 1,
with the fix. Read-only on the stack: it works in a copy of the project directory
(same compose project name, so the same containers)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import backout, ok
from tests.support.stack import TestStack

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def project(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("doctor") / "project"
    shutil.copytree(stack.project_dir, copy,
                    ignore=shutil.ignore_patterns(".git", ".backout", "backout.toml"))
    for args in (("init", "-q"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t",
                                                  "-c", "commit.gpgsign=false", "commit", "-qm",
                                                  "copy")):
        subprocess.run(["git", *args], cwd=copy, check=True, timeout=60)
    ok(backout("init", cwd=copy))
    ok(backout("release", "record", cwd=copy))
    return copy


def _doctor(project: Path, **env: str) -> tuple[int, dict[str, Any]]:
    result = backout("doctor", "--json", cwd=project, **env)
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def test_doctor_on_a_ready_stack(project: Path, stack: TestStack) -> None:
    code, data = _doctor(project)
    assert code == 0, data["checks"]
    checks = {c["name"]: c for c in data["checks"]}
    for name in ("database mysql", "database redis", "database mongodb"):
        assert checks[name]["ok"], checks[name]
    assert "retained images" in checks and checks["retained images"]["ok"]
    text = json.dumps(data)
    assert not any(secret in text for secret in stack.secrets.values())


def test_a_wrong_password_fails_its_database_only(project: Path, stack: TestStack,
                                                  tmp_path: Path) -> None:
    wrong = tmp_path / "project"
    shutil.copytree(project, wrong, symlinks=True)
    toml = wrong / "backout.toml"
    text = toml.read_text()
    assert 'password_env = "MYSQL_ROOT_PASSWORD"' in text
    toml.write_text(text.replace('password_env = "MYSQL_ROOT_PASSWORD"',
                                 'password_env = "DOCTOR_WRONG_PASSWORD"', 1))
    code, data = _doctor(wrong, DOCTOR_WRONG_PASSWORD="not-the-password-4711")
    assert code == 1
    assert data["failed"] == ["database mysql"], data["checks"]
    failed = next(c for c in data["checks"] if c["name"] == "database mysql")
    assert failed["fix"] and "not-the-password-4711" not in json.dumps(data)


def test_an_engine_that_does_not_answer(project: Path, tmp_path: Path) -> None:
    code, data = _doctor(project, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    assert code == 1
    checks = {c["name"]: c for c in data["checks"]}
    assert not checks["docker engine"]["ok"] and checks["docker engine"]["fix"]
    assert checks["config"]["ok"] and checks["lock"]["ok"]
