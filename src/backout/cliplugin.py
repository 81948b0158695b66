"""``docker compose …`` run as the Docker CLI runs it: the plugin's binary, without the
CLI in between.

For every ``docker compose …`` the Docker CLI finds the plugin ``docker-compose``,
runs it once with ``docker-cli-plugin-metadata`` to read its metadata, then runs it
again as ``docker-compose compose …`` with ``DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND``
set, passing its own environment (the plugin reads the config, the context and
``DOCKER_HOST`` itself). That costs 0.09-0.12 s a call here, the plugin alone
0.04-0.05 s (issue 16: a backup's start-up asks Compose twice, a rollback a dozen
times). ``exec_argv`` gives the argv and the variable the CLI gives the plugin (the
CLI's path, where the CLI passes the name it was called by; not the CLI's own
extras: the socket of newer CLIs that tells a plugin the CLI was interrupted, which
matters only with the CLI in between, and the OpenTelemetry attributes), the plugin
found where the CLI looks for it: the config's ``cliPluginsExtraDirs``, then
``$DOCKER_CONFIG/cli-plugins`` (``~/.docker/cli-plugins``), then the system
directories.

The plugin's metadata is not asked for (that call is part of what this saves): a
native binary there that the CLI would refuse as a plugin runs, and fails with a
message of its own rather than the CLI's "not a docker command".

Only when ``docker`` on the PATH is the Docker CLI itself (an executable named
``docker`` whose file is a native binary): a wrapper script, podman standing in for
docker (its own ``compose`` points Compose at podman's socket) or a test's stand-in
keeps ``docker compose``, as does anything this module cannot read the way the CLI
would (an unreadable config). ``BACKOUT_COMPOSE_DIRECT=0`` turns it off.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backout.environment import switched_off

ORIGINAL_CLI = "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"  # what the CLI sets for its plugins
SWITCH = "BACKOUT_COMPOSE_DIRECT"
SYSTEM_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")
ELF = b"\x7fELF"


@dataclass(frozen=True)
class Direct:
    plugin: str  # the plugin's binary
    docker: str  # the Docker CLI it stands in for (what the plugin is told it was run by)


_found: dict[tuple[str | None, ...], tuple[float, Direct | None]] = {}
_lock = threading.Lock()
KEEP_SECONDS = 60.0  # a long run (the monitor) sees a plugin installed or moved since


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
    """The Compose plugin the Docker CLI on ``env``'s PATH would run (kept a minute per
    PATH, config directory and home), or None."""
    key = (env.get("PATH"), env.get("DOCKER_CONFIG"), env.get("HOME"), env.get(SWITCH))
    now = time.monotonic()
    with _lock:
        kept = _found.get(key)
        if kept is None or now - kept[0] > KEEP_SECONDS:
            kept = _found[key] = (now, _find(env))
        return kept[1]


def forget() -> None:
    """Look again at the next call (a binary found before is gone)."""
    with _lock:
        _found.clear()


def _find(env: Mapping[str, str]) -> Direct | None:
    if switched_off(env, SWITCH):
        return None
    docker = shutil.which("docker", path=env.get("PATH", os.defpath))
    if docker is None:
        return None
    if not os.path.isabs(docker):  # a relative PATH entry: the child's would be another
        return None
    if os.path.basename(os.path.realpath(docker)) != "docker" or not _native(docker):
        return None
    dirs = _plugin_dirs(env)
    if dirs is None:
        return None
    for directory in dirs:
        plugin = os.path.join(directory, "docker-compose")
        try:
            os.stat(plugin)
        except FileNotFoundError:  # the CLI's one reason to look further (a dangling link too)
            continue
        except OSError:
            return None  # a candidate for the CLI, which would then refuse it
        # the CLI takes the first candidate, valid or not: so does this (and leaves
        # one it would refuse, or that cannot be judged here, to the CLI and its message)
        if os.path.isfile(plugin) and os.access(plugin, os.X_OK) and _native(plugin):
            return Direct(plugin, docker)
        return None
    return None


def _plugin_dirs(env: Mapping[str, str]) -> list[str] | None:
    """Where the CLI looks, in its order; None when its config cannot be read as the
    CLI reads it (a relative directory: the CLI's would depend on where it runs)."""
    config_dir = env.get("DOCKER_CONFIG") or os.path.join(_home(env), ".docker")
    try:
        with open(os.path.join(config_dir, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    # Go's JSON decoding matches a field's name in any case
    named = [key for key in config if key.lower() == "clipluginsextradirs"]
    if len(named) > 1:
        return None
    listed = config[named[0]] if named else None
    if listed is None:
        listed = []
    if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
        return None
    dirs = [*listed, os.path.join(config_dir, "cli-plugins"), *SYSTEM_DIRS]
    return dirs if all(os.path.isabs(d) for d in dirs) else None


def _home(env: Mapping[str, str]) -> str:
    """$HOME, else the user's home from the password database (as the CLI's)."""
    home = env.get("HOME")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except (KeyError, OSError):
        return ""


def _native(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ELF
    except OSError:
        return False
