"""``backout init``: find the compose project, derive, render, write (never clobber)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout import engines, platforms, proc
from backout.config.load import display_path, load_config
from backout.config.model import Config, ProjectConfig
from backout.engines import images
from backout.environment import Environment
from backout.errors import BackoutError, ConfigError, UsageError
from backout.platforms.base import Platform
from backout.policy import switch as switch_policy
from backout.setup.generate import Derived, derive, environment_of, render
from backout.state.dirs import private_dir

# Compose's own lookup order for a project's default file.
COMPOSE_DEFAULTS = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")


@dataclass(frozen=True)
class InitResult:
    path: Path
    services: list[str]
    databases: dict[str, str]
    warnings: list[str]
    state_dir: Path | None = None  # made now, self-ignoring: git status stays clean
    recognised: dict[str, str] = field(default_factory=dict)  # database -> how it was told
    # database services of engines this build lacks: service -> type
    unsupported: dict[str, str] = field(default_factory=dict)


# Tried, in order, on an app service whose only derived health URL is its root.
COMMON_HEALTH_PATHS = ("/health", "/healthz", "/health/check", "/api/v1/health/check",
                       "/healthy-check", "/ready", "/status")


def _find_health(env: Environment, derived: Derived) -> None:
    """A running service's root page is a poor health check (it does real work, may
    count page views, fails with the app): prefer a health endpoint that answers."""
    from backout.adapters import http

    for name, entry in derived.services.items():
        url = entry.get("health_url")
        if entry.get("kind") != "app" or not url or not url.endswith("/") \
                or url.count("/") != 3:
            continue
        base = url.rstrip("/")
        for path in COMMON_HEALTH_PATHS:
            if http.get(env, base + path, timeout=2, limit=4096).status == 200:
                entry["health_url"] = base + path
                derived.notes.setdefault(f"services.{name}", []).append(
                    f"health: {path} answers 200 (preferred over the root page)")
                break


def _find_metrics(env: Environment, derived: Derived) -> None:
    """Where a running app service serves Prometheus text at /metrics, configure it."""
    from backout.adapters import http

    for name, entry in derived.services.items():
        url = entry.get("health_url")
        if entry.get("kind") != "app" or not url:
            continue
        candidate = "/".join(url.split("/", 3)[:3]) + "/metrics"
        probe = http.get(env, candidate, timeout=2, limit=65536)
        if probe.status == 200 and b"# TYPE " in probe.body:
            entry["metrics_url"] = candidate
            derived.notes.setdefault(f"services.{name}", []).append(
                "metrics: found Prometheus text at /metrics")


def _find_proxy_modes(env: Environment, platform: Platform, derived: Derived) -> None:
    """How a running nginx in front reaches the app services (``nginx -T``): a static
    proxy_pass or a resolver is reloaded during a start-first switch."""
    apps = [n for n, e in derived.services.items() if e.get("kind") == "app"]
    for name, entry in derived.services.items():
        if entry.get("kind") != "proxy":
            continue
        result = proc.run(env, platform.exec_argv(name, ["nginx", "-T"]), timeout=30,
                          check=False, what=f"nginx -T in {name}")
        if not result.ok:
            derived.notes.setdefault(f"services.{name}", []).append(
                "proxy: not an nginx that answers `nginx -T` (not running?); set proxy = "
                "\"nginx-reload\" | \"nginx-resolver\" | \"labels\" for start-first switches")
            continue
        modes = [m for m in (switch_policy.nginx_mode(result.stdout + result.stderr, app)
                             for app in apps) if m is not None]
        if not modes:
            continue
        resolver = [valid for mode, valid in modes if mode == "nginx-resolver"]
        if resolver:
            entry["proxy"] = "nginx-resolver"
            entry["proxy_dns_valid_seconds"] = math.ceil(max(resolver))
            how = f"re-resolves app names every {entry['proxy_dns_valid_seconds']}s"
        else:
            entry["proxy"] = "nginx-reload"
            how = "resolves app names once (proxy_pass): reloaded after a switch"
        notes = derived.notes.setdefault(f"services.{name}", [])
        notes.append(f"proxy: nginx -T says it {how}")
        connect = switch_policy.nginx_connect_timeout(result.stdout + result.stderr)
        if resolver and connect > switch_policy.CONNECT_TIMEOUT_ADVISED:
            # Docker's DNS drops an address the moment its container leaves the network;
            # nginx's reload follows a few ms later: what it sent there meanwhile hangs,
            # unless the drain could fence the address (backout.adapters.netfence).
            notes.append(f"proxy: its proxy_connect_timeout is {connect:g}s: in a switch "
                         "that cannot fence the old container (backout not root, a remote "
                         "engine, no nsenter or iptables), the "
                         "requests nginx sends to it in the moment between that container "
                         "leaving the network and nginx's reload wait that long before going "
                         "to the new one; `proxy_connect_timeout 1s;` makes it 1 s")


def _swarm_lines(env: Environment, services: list[str]) -> list[str]:
    """[platform] for a stack this engine's Swarm runs (``docker stack deploy``), else none."""
    from backout.platforms.swarm import find_stack

    manager = env.env.get("DOCKER_HOST") or None
    found = find_stack(env, services, manager)
    if found is None:
        return []
    lines = [f"name = {json.dumps(found.name)}                # the stack's name on the Swarm",
             "", "[platform]", 'kind = "swarm"   # found: a stack deployed with docker stack deploy']
    if manager:
        lines.append(f"manager = {json.dumps(manager)}   # the manager's Docker Engine")
    lines += ["# Each node's engine: by default the Docker context named after the node",
              "# (docker context create NODE --docker host=...); or here:",
              "# [platform.nodes]"]
    lines += [f'# {node} = "ssh://root@{node}"' for node in found.nodes]
    return lines


def init_project(env: Environment, project_dir: Path, target: Path, *, force: bool) -> InitResult:
    if target.exists() and not force:
        raise UsageError(f"{display_path(target)} already exists",
                         fix="pass --force to overwrite it")
    compose_file = next((n for n in COMPOSE_DEFAULTS if (project_dir / n).is_file()), None)
    if compose_file is None:
        raise UsageError(f"no compose file in {project_dir} (looked for {', '.join(COMPOSE_DEFAULTS)})",
                         fix="run init in the compose project's directory or pass --project-dir")
    env_file = ".env" if (project_dir / ".env").exists() else None
    if env_file:
        try:
            (project_dir / env_file).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(env_file, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    # The stack as the platform sees it, before any backout.toml exists.
    draft = Config(path=target, project_dir=project_dir,
                   project=ProjectConfig(compose_files=(compose_file,), env_file=env_file))
    platform = platforms.for_config(env, draft)
    try:
        data = platform.definition()
        raw = platform.uninterpolated_definition()
        # Which referenced variables are set, as Compose itself reads .env and the
        # environment (their values only tell set from unset; none is written).
        env_values = platform.variables(_referenced(raw))
    except BackoutError as exc:
        raise ConfigError(compose_file, "", f"docker compose config failed: {exc.message}") from exc
    for key, value in env_values.items():
        if proc.is_secret_name(key):
            env.redact.add(value)
    derived = derive(data, env_values, raw, _server_programs(env, platform, data))
    for entry in derived.databases.values():  # whatever its name says, it is a password
        if entry.get("password_env") in env_values:
            env.redact.add(env_values[entry["password_env"]])
    _find_health(env, derived)
    _find_metrics(env, derived)
    _find_proxy_modes(env, platform, derived)
    text = render(derived, [compose_file], env_file,
                  _swarm_lines(env, sorted((data.get("services") or {}).keys())))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    # What we write must pass our own validation; if not, that is our bug to see now.
    check_env = Environment(project_dir=project_dir, config_path=target, verbose=env.verbose,
                            stderr=env.stderr, redact=env.redact)
    warnings = list(derived.warnings)
    try:
        state_dir = load_config(check_env, target).state_dir
    except BackoutError as exc:
        warnings.append(f"config check reports: {exc.one_line()}")
        state_dir = project_dir / ProjectConfig().state_dir
    return InitResult(target, sorted(derived.services),
                      {k: v["type"] for k, v in derived.databases.items()}, warnings,
                      private_dir(state_dir), dict(derived.recognised),
                      {service: kind for service, kind, _how in derived.pending})


_VARIABLE_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")


def _referenced(raw: Mapping[str, Any]) -> list[str]:
    """Every variable the services' environments and commands reference."""
    names: set[str] = set()
    for spec in (raw.get("services") or {}).values():
        environment = environment_of(spec)
        text = json.dumps([environment, spec.get("command"), spec.get("entrypoint")])
        text = text.replace("$$", "")  # an escaped dollar references nothing
        names.update(a or b for a, b in _VARIABLE_USE.findall(text))
        names.update(k for k, v in environment.items() if v is None)
    return sorted(names)


# What `command -v` looks for in a service's running container when its image's
# name says nothing: each engine's server programs.
def _server_programs(env: Environment, platform: Platform,
                     data: Mapping[str, Any]) -> dict[str, list[str]]:
    """The database server programs in the running container of each service whose
    image no engine recognises by name (nothing when the stack is not running)."""
    unknown = [name for name, spec in (data.get("services") or {}).items()
               if not any(e.recognise(str(spec.get("image") or "")) for e in engines.all_engines())]
    if not unknown:
        return {}
    programs = sorted({p for e in engines.all_engines() for p in e.server_programs}
                      | set(images.PENDING_PROGRAMS))
    try:
        running = {c.service for c in platform.containers(*unknown) if c.state == "running"}
    except BackoutError:
        return {}  # no engine, or the stack is not up: the image names are all we have
    found: dict[str, list[str]] = {}
    for service in sorted(running):
        result = proc.run(env, platform.exec_argv(service, ["sh", "-c", 'for p in "$@"; do '
                                                            'command -v "$p" >/dev/null 2>&1 && '
                                                            'echo "$p"; done; true', "sh",
                                                            *programs]),
                          timeout=30, check=False, what=f"look for database servers in {service}",
                          cwd=str(platform.project_dir))
        if result.ok and result.stdout.strip():
            found[service] = result.stdout.split()
    return found
