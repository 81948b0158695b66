"""``docker compose …`` run as the Docker CLI runs it: the plugin's binary, without the
CLI in between.

For every ``docker compose …`` the Docker CLI finds the plugin ``docker-compose``,
runs it once with ``docker-cli-plugin-metadata`` to read its metadata, then runs it
again as ``docker-compose compose …`` with ``DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND``
set, passing its own environment (the plugin reads the config, the context and
``DOCKER_HOST`` itself). That costs 0.09-0.12 s a call here, the plugin alone
0.04-0.05 s (issue 16: a backup's start-up asks Compose twice, a rollback a dozen
times). ``exec_argv`` gives the argv and the variable the CLI would give the plugin,
found where the CLI looks for it: the config's ``cliPluginsExtraDirs``, then
``$DOCKER_CONFIG/cli-plugins`` (``~/.docker/cli-plugins``), then the system
directories.

Only when ``docker`` on the PATH is the Docker CLI itself (an executable named
``docker`` whose file is a native binary): a wrapper script, podman standing in for
docker (its own ``compose`` points Compose at podman's socket) or a test's stand-in
keeps ``docker compose``, as does anything this module cannot read the way the CLI
would (an unreadable config). ``BACKOUT_COMPOSE_DIRECT=0`` turns it off.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ORIGINAL_CLI = "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"  # what the CLI sets for its plugins
SWITCH = "BACKOUT_COMPOSE_DIRECT"
OFF = frozenset({"0", "false", "no", "off"})
SYSTEM_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")
ELF = b"\x7fELF"


@dataclass(frozen=True)
class Direct:
    plugin: str  # the plugin's binary
    docker: str  # the Docker CLI it stands in for (what the plugin is told it was run by)


_found: dict[tuple[str | None, ...], Direct | None] = {}
_lock = threading.Lock()


def exec_argv(argv: Sequence[str], env: Mapping[str, str]
              ) -> tuple[list[str], dict[str, str]] | None:
    """``argv`` (``docker compose …``) as the plugin's own argv, and the variables to add
    to the child's environment ``env``; None: run ``argv`` as it is."""
    if len(argv) < 2 or argv[0] != "docker" or argv[1] != "compose":
        return None
    direct = lookup(env)
    if direct is None:
        return None
    return [direct.plugin, *argv[1:]], {ORIGINAL_CLI: direct.docker}


def lookup(env: Mapping[str, str]) -> Direct | None:
    """The Compose plugin the Docker CLI on ``env``'s PATH would run (kept per PATH,
    config directory and home), or None."""
    key = (env.get("PATH"), env.get("DOCKER_CONFIG"), env.get("HOME"), env.get(SWITCH))
    with _lock:
        if key not in _found:
            _found[key] = _find(env)
        return _found[key]


def forget() -> None:
    """Look again at the next call (a binary found before is gone)."""
    with _lock:
        _found.clear()


def _find(env: Mapping[str, str]) -> Direct | None:
    if env.get(SWITCH, "").strip().lower() in OFF:
        return None
    docker = shutil.which("docker", path=env.get("PATH", os.defpath))
    if docker is None:
        return None
    docker = os.path.abspath(docker)
    if os.path.basename(os.path.realpath(docker)) != "docker" or not _native(docker):
        return None
    dirs = _plugin_dirs(env)
    if dirs is None:
        return None
    for directory in dirs:
        plugin = os.path.join(directory, "docker-compose")
        if not os.path.exists(plugin):  # as the CLI's stat: a dangling link is no candidate
            continue
        # the CLI takes the first candidate, valid or not: so does this (and leaves
        # one it would refuse, or cannot judge, to the CLI and its message)
        if os.path.isfile(plugin) and os.access(plugin, os.X_OK) and _native(plugin):
            return Direct(plugin, docker)
        return None
    return None


def _plugin_dirs(env: Mapping[str, str]) -> list[str] | None:
    """Where the CLI looks, in its order; None when its config cannot be read as the
    CLI would read it."""
    config_dir = env.get("DOCKER_CONFIG") or os.path.join(env.get("HOME") or "~", ".docker")
    config_dir = os.path.expanduser(config_dir)
    extra: list[str] = []
    try:
        with open(os.path.join(config_dir, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    listed = config.get("cliPluginsExtraDirs")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
            return None
        extra = [os.path.expanduser(d) for d in listed]
    return [*extra, os.path.join(config_dir, "cli-plugins"), *SYSTEM_DIRS]


def _native(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ELF
    except OSError:
        return False
