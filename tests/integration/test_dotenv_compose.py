""".env exactly as Compose reads it: the password backout resolves for
``password_env = "NAME"`` is byte for byte the value the container received.

A real Compose project (one container of the test stack's Redis image, doing
nothing but sleeping) gets ``environment: {P_<NAME>: ${NAME}}`` for every case of
the .env below; after ``docker compose up`` the container's environment (docker
inspect, exact JSON) is compared with backout's ``config.secrets`` from
``load_config`` (in-process, the real Compose binary). Quotes, escapes, inline
comments, multi-line values, interpolation, ``export``, ``$$`` and the process
environment's precedence over .env are covered.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from backout.config.load import load_config
from backout.environment import Environment
from tests.support.stack import RUN_LABEL

pytestmark = pytest.mark.docker

IMAGE = "backout-test/redis:7.0"

# name -> the .env line(s); the expected value is what the container gets.
DOTENV = """\
# a comment line
DOUBLE="d-secret" # note after a quoted value
SINGLE='s-secret $NOT_EXPANDED \\n stays'
ESCAPES="q\\"uote\\" back\\\\slash tab\\tnl\\nend"
INLINE=plain value # inline comment
HASH_NO_SPACE=abc#def
MULTI="line one
line two"
EXPANDED=${DOUBLE}-and-more
BRACED_DEFAULT=${UNSET_HERE:-fallback}
export EXPORTED=exported-value
SPACED=   padded value
DOLLARS=a$$b
EMPTY=
FROM_PROCESS=from-dotenv
DB_PASSWORD=from-dotenv-too
"""
NAMES = ["DOUBLE", "SINGLE", "ESCAPES", "INLINE", "HASH_NO_SPACE", "MULTI", "EXPANDED",
         "BRACED_DEFAULT", "EXPORTED", "SPACED", "DOLLARS", "EMPTY", "FROM_PROCESS",
         "DB_PASSWORD"]


def compose_file(project: str, run_id: str) -> str:
    env = {f"P_{n}": f"${{{n}}}" for n in NAMES}
    return json.dumps({"name": project, "services": {"c": {
        "image": IMAGE, "entrypoint": ["sleep", "600"], "environment": env,
        "labels": {RUN_LABEL: run_id}}},
        "networks": {"default": {"labels": {RUN_LABEL: run_id}}}})


def toml(names: list[str]) -> str:
    lines = ['[project]', 'compose_files = ["compose.yaml"]', 'env_file = ".env"', ""]
    for n in names:
        lines += [f"[databases.{n.lower().replace('_', '-')}]", 'type = "redis"',
                  'service = "c"', f'password_env = "{n}"', ""]
    return "\n".join(lines)


def test_password_is_byte_for_byte_what_the_container_received(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = f"backout-test-{os.getpid()}-{secrets.token_hex(3)}"
    project = f"bo-dotenv-{secrets.token_hex(3)}"
    (tmp_path / ".env").write_text(DOTENV)
    (tmp_path / "compose.yaml").write_text(compose_file(project, run_id))
    (tmp_path / "backout.toml").write_text(toml(NAMES))
    # The caller's environment wins over .env in Compose: so must it in backout.
    monkeypatch.setenv("FROM_PROCESS", "from-the-process")
    # also for a variable whose name says it is a credential (children of backout
    # get those only when meant for them)
    monkeypatch.setenv("DB_PASSWORD", "password-from-the-process")
    compose = ["docker", "compose", "--project-directory", str(tmp_path), "-p", project]
    try:
        up = subprocess.run([*compose, "up", "-d"], capture_output=True, text=True, timeout=120,
                            check=False)
        assert up.returncode == 0, up.stderr
        cid = subprocess.run([*compose, "ps", "-q", "c"], capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
        inspected = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True,
                                              text=True, timeout=60, check=True).stdout)
        received = dict(item.split("=", 1) for item in inspected[0]["Config"]["Env"])
        config = load_config(Environment(project_dir=tmp_path), tmp_path / "backout.toml",
                             compose_services=lambda _e, _c: {"c"})
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "0"], capture_output=True, timeout=120,
                       check=False)
    for name in NAMES:
        assert config.secrets[name] == received[f"P_{name}"], name
    # and these are the values Compose's own rules give (so the test is not vacuous)
    assert received["P_DOUBLE"] == "d-secret"
    assert received["P_SINGLE"] == "s-secret $NOT_EXPANDED \\n stays"
    assert received["P_ESCAPES"] == 'q"uote" back\\slash tab\tnl\nend'
    assert received["P_INLINE"] == "plain value"
    assert received["P_MULTI"] == "line one\nline two"
    assert received["P_EXPANDED"] == "d-secret-and-more"
    assert received["P_BRACED_DEFAULT"] == "fallback"
    assert received["P_EXPORTED"] == "exported-value"
    assert received["P_DOLLARS"] == "a$b"
    assert received["P_FROM_PROCESS"] == "from-the-process"
    assert received["P_DB_PASSWORD"] == "password-from-the-process"
