"""``backout init``: find the compose project, derive, render, write (never clobber)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from backout import dotenv, platforms, proc
from backout.config.load import display_path, load_config
from backout.config.model import Config, ProjectConfig
from backout.environment import Environment
from backout.errors import BackoutError, ConfigError, UsageError
from backout.setup.generate import Derived, derive, render
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
    env_values: dict[str, str] = {}
    if env_file:
        try:
            env_values = dotenv.load(project_dir / env_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(env_file, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
        for key, value in env_values.items():
            if proc.is_secret_name(key):
                env.redact.add(value)
    # The stack as the platform sees it, before any backout.toml exists.
    draft = Config(path=target, project_dir=project_dir,
                   project=ProjectConfig(compose_files=(compose_file,), env_file=env_file))
    try:
        data = platforms.for_config(env, draft).definition()
    except BackoutError as exc:
        raise ConfigError(compose_file, "", f"docker compose config failed: {exc.message}") from exc
    derived = derive(data, env_values)
    _find_health(env, derived)
    _find_metrics(env, derived)
    text = render(derived, [compose_file], env_file,
                  _swarm_lines(env, sorted((data.get("services") or {}).keys())))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    # What we write must pass our own validation; if not, that is our bug to see now.
    check_env = Environment(project_dir=project_dir, config_path=target, verbose=env.verbose,
                            stderr=env.stderr, redact=env.redact)
    warnings = [f"{key}: {note}" for key, notes in derived.notes.items() for note in notes
                if "export" in note or "set password_env" in note]
    try:
        state_dir = load_config(check_env, target).state_dir
    except BackoutError as exc:
        warnings.append(f"config check reports: {exc.one_line()}")
        state_dir = project_dir / ProjectConfig().state_dir
    return InitResult(target, sorted(derived.services),
                      {k: v["type"] for k, v in derived.databases.items()}, warnings,
                      private_dir(state_dir))
