"""`docker compose …` run as the Docker CLI runs it: the plugin found where the CLI
looks, only under the Docker CLI itself, and the CLI again when the plugin is gone."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backout import cliplugin, proc
from backout.environment import Environment

ENV_BIN = shutil.which("env") or "/usr/bin/env"
COMPOSE_ARGS = ["docker", "compose", "--project-directory", "/p", "config"]


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    cliplugin.forget()
    yield
    cliplugin.forget()


def native(path: Path, *, executable: bool = True) -> Path:
    """A file that starts like a native binary (never run: only looked at)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF" + b"\0" * 60)
    path.chmod(0o755 if executable else 0o644)
    return path


def script(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


class Machine:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.bin = root / "bin"
        self.config = root / "config"
        self.system = [root / "sys1", root / "sys2"]
        monkeypatch.setattr(cliplugin, "SYSTEM_DIRS", tuple(str(d) for d in self.system))
        self.env = {"PATH": str(self.bin), "HOME": str(root / "home"),
                    "DOCKER_CONFIG": str(self.config)}

    def docker(self) -> Path:
        return native(self.bin / "docker")

    def config_json(self, data: object) -> None:
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "config.json").write_text(json.dumps(data))


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    return Machine(tmp_path, monkeypatch)


def test_compose_runs_as_its_plugin_with_what_the_cli_would_set(machine: Machine) -> None:
    docker = machine.docker()
    plugin = native(machine.config / "cli-plugins" / "docker-compose")
    assert cliplugin.exec_argv(COMPOSE_ARGS, machine.env) == (
        [str(plugin), "compose", "--project-directory", "/p", "config"],
        {"DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND": str(docker)})


@pytest.mark.parametrize("argv", [
    ["docker", "exec", "-i", "c1", "mariadb-dump"],  # the CLI itself: no plugin
    ["zstd", "-3"],
    ["docker"],
    ["/usr/bin/docker", "compose", "ps"],  # a path: taken as given
    ["docker-compose", "ps"],  # Compose v1 or the standalone binary: as given
])
def test_anything_else_runs_as_given(machine: Machine, argv: list[str]) -> None:
    machine.docker()
    native(machine.config / "cli-plugins" / "docker-compose")
    assert cliplugin.exec_argv(argv, machine.env) is None


def test_home_docker_dir_without_docker_config(machine: Machine) -> None:
    machine.docker()
    del machine.env["DOCKER_CONFIG"]
    plugin = native(machine.root / "home" / ".docker" / "cli-plugins" / "docker-compose")
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.plugin == str(plugin)


def test_the_clis_order_extra_dirs_then_the_config_dir_then_the_system(
        machine: Machine) -> None:
    machine.docker()
    extra = machine.root / "extra"
    machine.config_json({"cliPluginsExtraDirs": [str(machine.root / "none"), str(extra)]})
    system = native(machine.system[1] / "docker-compose")
    assert cliplugin.lookup(machine.env) == cliplugin.Direct(
        str(system), str(machine.bin / "docker"))
    cliplugin.forget()
    mine = native(machine.config / "cli-plugins" / "docker-compose")
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.plugin == str(mine)
    cliplugin.forget()
    first = native(extra / "docker-compose")
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.plugin == str(first)


@pytest.mark.parametrize("bad", ["not executable", "a script", "a directory"])
def test_a_first_candidate_the_cli_would_refuse_leaves_it_to_the_cli(
        machine: Machine, bad: str) -> None:
    """The CLI takes the first file it finds, valid or not (then says "not a docker
    command"): a later, valid one is not taken here either."""
    machine.docker()
    first = machine.config / "cli-plugins" / "docker-compose"
    if bad == "not executable":
        native(first, executable=False)
    elif bad == "a script":
        script(first)
    else:
        first.mkdir(parents=True)
    native(machine.system[0] / "docker-compose")
    assert cliplugin.lookup(machine.env) is None


def test_a_dangling_link_is_no_candidate(machine: Machine) -> None:
    machine.docker()
    link = machine.config / "cli-plugins" / "docker-compose"
    link.parent.mkdir(parents=True)
    link.symlink_to(machine.root / "gone")
    system = native(machine.system[0] / "docker-compose")
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.plugin == str(system)


@pytest.mark.parametrize("docker", ["script", "podman", "missing"])
def test_only_under_the_docker_cli_itself(machine: Machine, docker: str) -> None:
    """A wrapper script or a test's stand-in, podman linked as docker (its `compose`
    points Compose at podman's socket), no docker at all: `docker compose` as given."""
    native(machine.config / "cli-plugins" / "docker-compose")
    if docker == "script":
        script(machine.bin / "docker")
    elif docker == "podman":
        native(machine.root / "podman-bin" / "podman")
        machine.bin.mkdir()
        (machine.bin / "docker").symlink_to(machine.root / "podman-bin" / "podman")
    assert cliplugin.exec_argv(COMPOSE_ARGS, machine.env) is None


def test_a_link_to_a_docker_binary_counts(machine: Machine) -> None:
    real = native(machine.root / "opt" / "docker")
    machine.bin.mkdir()
    (machine.bin / "docker").symlink_to(real)
    native(machine.config / "cli-plugins" / "docker-compose")
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.docker == str(machine.bin / "docker")


@pytest.mark.parametrize("config", ["{not json", json.dumps([1]),
                                    json.dumps({"cliPluginsExtraDirs": "/x"}),
                                    json.dumps({"cliPluginsExtraDirs": [1]})])
def test_a_config_not_read_as_the_cli_reads_it_leaves_it_to_the_cli(
        machine: Machine, config: str) -> None:
    machine.docker()
    native(machine.config / "cli-plugins" / "docker-compose")
    machine.config.mkdir(parents=True, exist_ok=True)
    (machine.config / "config.json").write_text(config)
    assert cliplugin.lookup(machine.env) is None


@pytest.mark.parametrize(("value", "direct"), [("0", False), ("off", False), (" NO ", False),
                                               ("false", False), ("1", True), ("", True)])
def test_the_switch(machine: Machine, value: str, direct: bool) -> None:
    machine.docker()
    native(machine.config / "cli-plugins" / "docker-compose")
    machine.env["BACKOUT_COMPOSE_DIRECT"] = value
    assert (cliplugin.lookup(machine.env) is not None) is direct


def test_found_once_per_path_and_config(machine: Machine) -> None:
    machine.docker()
    plugin = native(machine.config / "cli-plugins" / "docker-compose")
    assert cliplugin.lookup(machine.env) is not None
    plugin.unlink()
    assert cliplugin.lookup(machine.env) is not None  # kept: no look per call
    assert cliplugin.lookup({**machine.env, "PATH": str(machine.bin) + ":/x"}) is None
    cliplugin.forget()
    assert cliplugin.lookup(machine.env) is None


# Running it: `env` (a native binary) as the plugin and as the docker CLI; the
# `compose` it then runs from PATH says how it was called.
REPORT = 'echo "cli=${DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND:-none} args=$*"'


@pytest.fixture
def runnable(machine: Machine) -> Machine:
    machine.bin.mkdir()
    (machine.config / "cli-plugins").mkdir(parents=True)
    shutil.copy(ENV_BIN, machine.bin / "docker")
    shutil.copy(ENV_BIN, machine.config / "cli-plugins" / "docker-compose")
    script(machine.bin / "compose", REPORT)
    return machine


def environment(machine: Machine) -> Environment:
    return Environment(project_dir=machine.root, env=dict(machine.env))


def test_run_goes_to_the_plugin(runnable: Machine) -> None:
    result = proc.run(environment(runnable), ["docker", "compose", "ps", "-q"])
    assert result.stdout.strip() == f"cli={runnable.bin / 'docker'} args=ps -q"
    assert result.argv == ("docker", "compose", "ps", "-q")  # what it means, as logged


def test_popen_goes_to_the_plugin(runnable: Machine) -> None:
    child = proc.popen(["docker", "compose", "exec", "-T", "db"], env=dict(runnable.env),
                       stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    assert out.decode().strip() == f"cli={runnable.bin / 'docker'} args=exec -T db"


@pytest.mark.parametrize("how", ["run", "popen"])
def test_a_plugin_gone_since_it_was_found_goes_through_the_cli(
        runnable: Machine, how: str) -> None:
    assert cliplugin.lookup(runnable.env) is not None
    (runnable.config / "cli-plugins" / "docker-compose").unlink()
    if how == "run":
        out = proc.run(environment(runnable), ["docker", "compose", "ps"]).stdout
    else:
        child = proc.popen(["docker", "compose", "ps"], env=dict(runnable.env),
                           stdout=subprocess.PIPE)
        out = child.communicate(timeout=30)[0].decode()
    assert out.strip() == "cli=none args=ps"  # the CLI's own run (the stand-in's)
    assert cliplugin.lookup(runnable.env) is None  # and looked for again


def test_the_cli_when_switched_off(runnable: Machine) -> None:
    runnable.env["BACKOUT_COMPOSE_DIRECT"] = "0"
    assert proc.run(environment(runnable), ["docker", "compose", "ps"]).stdout.strip() == (
        "cli=none args=ps")


def test_a_plugin_that_fails_fails_the_command_as_the_cli_would(runnable: Machine) -> None:
    plugin = runnable.config / "cli-plugins" / "docker-compose"
    plugin.unlink()
    shutil.copy(shutil.which("false") or "/bin/false", plugin)
    result = proc.run(environment(runnable), ["docker", "compose", "ps"], check=False)
    assert result.returncode == 1 and result.stdout == ""  # the stand-in CLI would say 0


def test_verbose_names_the_binary_that_ran(runnable: Machine,
                                           caplog: pytest.LogCaptureFixture) -> None:
    env = environment(runnable)
    env.verbose = True
    with caplog.at_level(logging.INFO, logger="backout"):
        proc.run(env, ["docker", "compose", "ps"])
    plugin = runnable.config / "cli-plugins" / "docker-compose"
    lines = [r.getMessage() for r in caplog.records if "docker compose ps" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(f", exit 0, {plugin})")


@pytest.mark.parametrize("where", ["config", "extra"])
def test_a_relative_directory_leaves_it_to_the_cli(machine: Machine, where: str) -> None:
    """The CLI would read a relative directory from where it runs (the project's)."""
    machine.docker()
    native(machine.config / "cli-plugins" / "docker-compose")
    if where == "config":
        machine.env["DOCKER_CONFIG"] = "config"
    else:
        machine.config_json({"cliPluginsExtraDirs": ["plugins"]})
    assert cliplugin.lookup(machine.env) is None


def test_the_config_key_in_any_case_as_go_reads_it(machine: Machine) -> None:
    machine.docker()
    extra = native(machine.root / "extra" / "docker-compose")
    native(machine.config / "cli-plugins" / "docker-compose")
    machine.config_json({"CLIPluginsExtraDirs": [str(extra.parent)]})
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.plugin == str(extra)
    cliplugin.forget()
    machine.config_json({"CLIPluginsExtraDirs": [str(extra.parent)],
                         "cliPluginsExtraDirs": []})  # which one Go takes: not guessed
    assert cliplugin.lookup(machine.env) is None


def test_a_candidate_that_cannot_be_looked_at_stops_the_search(machine: Machine) -> None:
    """Not "no such file" (here a file where the CLI expects a directory): the CLI
    takes the path as its candidate and refuses it; a later plugin is not run."""
    machine.docker()
    blocker = machine.root / "extra"
    blocker.write_text("a file, not a directory")
    machine.config_json({"cliPluginsExtraDirs": [str(blocker)]})
    native(machine.config / "cli-plugins" / "docker-compose")
    assert cliplugin.lookup(machine.env) is None


def test_without_home_the_users_home_from_the_password_database(
        machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine.docker()
    del machine.env["DOCKER_CONFIG"], machine.env["HOME"]
    plugin = native(machine.root / "pwhome" / ".docker" / "cli-plugins" / "docker-compose")

    class Entry:
        pw_dir = str(machine.root / "pwhome")

    monkeypatch.setattr(cliplugin.pwd, "getpwuid", lambda uid: Entry())
    found = cliplugin.lookup(machine.env)
    assert found is not None and found.plugin == str(plugin)


def test_a_long_run_looks_again_after_a_while(
        machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine.docker()
    plugin = native(machine.config / "cli-plugins" / "docker-compose")
    assert cliplugin.lookup(machine.env) is not None
    plugin.unlink()
    assert cliplugin.lookup(machine.env) is not None  # within the minute: kept
    monkeypatch.setattr(cliplugin, "KEEP_SECONDS", -1.0)
    assert cliplugin.lookup(machine.env) is None
