"""mongodump inside the container, without a container and without mongodump: the
script backout runs in the MongoDB container is run here on the host (the "container"
is this machine), against tests/data/mongodump/fake-mongodump (no real mongodump
exists on our machines). What is real: the probe, the script, the --config file made
from stdin, the cleanup, and the tar the checker reads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from backout.config.load import parse_document
from backout.engines.access import EngineAccess
from backout.engines.formats import TarBsonChecker
from backout.engines.mongodb import MongoDump
from backout.environment import Environment
from tests.support.fakes import FakePlatform

FAKE = Path(__file__).resolve().parent.parent / "data" / "mongodump" / "fake-mongodump"
PASSWORD = "pä ss:w/o@rd%-sentinel-7f3a"  # needs URL-encoding
CONFIG = """
[databases.mongodb]
type = "mongodb"
service = "mongodb"
user = "root"
password_env = "MONGO_PW"
"""


class HostAccess(EngineAccess):
    """The container is this machine: argv runs the inner command as is."""

    def argv(self, inner: Sequence[str], secret_names: Sequence[str] = ()) -> list[str]:
        return list(inner)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[MongoDump, Environment, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "fake.log"
    env = Environment(project_dir=tmp_path)
    env.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "FAKE_MONGODUMP_LOG": str(log)}
    config = parse_document("backout.toml", CONFIG, tmp_path)
    object.__setattr__(config, "secrets", {"MONGO_PW": PASSWORD})
    env.redact.add(PASSWORD)
    access = HostAccess(env, config, config.databases["mongodb"], FakePlatform(tmp_path))
    return MongoDump(access), env, bin_dir


def install_fake(bin_dir: Path) -> None:
    target = bin_dir / "mongodump"
    target.write_text(f"#!{sys.executable}\n" + FAKE.read_text().split("\n", 1)[1])
    target.chmod(0o755)


def test_probe_says_none_without_mongodump(setup: tuple[MongoDump, Environment, Path]) -> None:
    tool, _env, _bin = setup
    assert tool.version() is None


def test_probe_finds_mongodump_and_its_version(
        setup: tuple[MongoDump, Environment, Path]) -> None:
    tool, _env, bin_dir = setup
    install_fake(bin_dir)
    assert tool.version() == "mongodump version: 100.99.0-fake"


def test_tcp_mode_never_probes(setup: tuple[MongoDump, Environment, Path]) -> None:
    tool, _env, bin_dir = setup
    install_fake(bin_dir)
    object.__setattr__(tool.access.db, "mode", "tcp")
    assert tool.version() is None


def test_the_password_travels_in_a_0600_config_file_never_argv(
        setup: tuple[MongoDump, Environment, Path], tmp_path: Path) -> None:
    tool, env, bin_dir = setup
    install_fake(bin_dir)
    argv = tool.argv(["app", "other"])
    config = tool.config_file()
    assert not any(PASSWORD in a or "sentinel" in a for a in argv)
    assert b"sentinel" in config  # URL-encoded inside the URI
    result = subprocess.run(argv, input=config, capture_output=True, env=env.env, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in (tmp_path / "fake.log").read_text().splitlines()]
    assert [r["argv"][1:] for r in runs] == [
        ["--quiet", f"--config={Path(runs[0]['out']).parent}/config.yaml", "--db=app",
         f"--out={runs[0]['out']}"],
        ["--quiet", f"--config={Path(runs[0]['out']).parent}/config.yaml", "--db=other",
         f"--out={runs[0]['out']}"]]
    assert {r["config_mode"] for r in runs} == {"0o600"}
    assert {r["password_sha256"] for r in runs} == {hashlib.sha256(PASSWORD.encode()).hexdigest()}
    assert not Path(runs[0]["out"]).parent.exists()  # the temporary directory is removed
    checker = TarBsonChecker(["app", "other"], "t")
    checker.feed(result.stdout)
    assert checker.finish()["databases"] == {"app": {"collections": {"things": 3}},
                                             "other": {"collections": {"things": 3}}}
    # no password in what a failure would show either
    assert PASSWORD not in env.redact(result.stderr.decode())


def test_all_databases_drop_the_system_ones(setup: tuple[MongoDump, Environment, Path]) -> None:
    tool, env, bin_dir = setup
    install_fake(bin_dir)
    out = subprocess.run(tool.argv([]), input=tool.config_file(), capture_output=True,
                         env=env.env, timeout=60, check=True).stdout
    checker = TarBsonChecker([], "t")
    checker.feed(out)
    assert list(checker.finish()["databases"]) == ["app"]  # admin removed


def test_a_failing_mongodump_fails_the_script_and_cleans_up(
        setup: tuple[MongoDump, Environment, Path], tmp_path: Path) -> None:
    tool, env, bin_dir = setup
    (bin_dir / "mongodump").write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\n"
                                       "echo \"$@\" > " + str(tmp_path / "args") + "\n"
                                       "echo 'Failed: auth error' >&2; exit 1\n")
    (bin_dir / "mongodump").chmod(0o755)
    result = subprocess.run(tool.argv(["app"]), input=tool.config_file(), capture_output=True,
                            env=env.env, timeout=60, check=False)
    assert result.returncode != 0 and b"auth error" in result.stderr
    assert result.stdout == b""  # no tar: the pipeline fails, nothing is published
    config_path = (tmp_path / "args").read_text().split("--config=")[1].split()[0]
    assert not Path(config_path).exists()


def test_uri_without_credentials(setup: tuple[MongoDump, Environment, Path]) -> None:
    tool, _env, _bin = setup
    object.__setattr__(tool.access.db, "password_env", None)
    assert tool.config_file() == b'uri: "mongodb://127.0.0.1:27017/"\n'
