"""``backout init``: derive a commented backout.toml from a Compose project.

Only names are written, never values: credentials are referenced by the name of
the variable that holds them (found in the project's .env), so the file can be
committed next to the compose file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backout import engines
from backout.platforms.compose import volume_users

# Paths the real deployments we model expose; tried by service name.
KNOWN_HEALTH_PATHS = {
    "backend": "/api/v1/health/check",
    "api": "/api/v1/health/check",
    "model-server": "/healthy-check",
    "model_server": "/healthy-check",
}
PROXY_IMAGES = ("nginx", "traefik", "haproxy", "caddy", "envoy")
_URL_IN_TEST = re.compile(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0)(?::(\d+))?(/[^\s'\"]*)?")


@dataclass
class Derived:
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)
    # named volumes that no database mounts: written as commented-out [volumes.*]
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def database_type(name: str, spec: Mapping[str, Any]) -> str | None:
    image = str(spec.get("image", "")).lower()
    patterns = [(p, e.type) for e in engines.all_engines() for p in e.image_patterns]
    for pattern, kind in patterns:
        if pattern in image.rsplit("/", 1)[-1].split(":")[0] or pattern in image:
            return kind
    # Images built from a local Dockerfile are often named after the project; the
    # service name is the next best evidence.
    lowered = name.lower()
    for pattern, kind in patterns:
        if pattern in lowered:
            return kind
    return None


def _published(spec: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    out = []
    for port in spec.get("ports") or []:
        published = port.get("published")
        if published in (None, ""):
            continue
        host_ip = port.get("host_ip") or "127.0.0.1"
        if host_ip in ("0.0.0.0", "::"):
            host_ip = "127.0.0.1"
        out.append((int(port["target"]), int(str(published).split("-")[0]), host_ip))
    return out


def health_url(name: str, spec: Mapping[str, Any]) -> tuple[str | None, str]:
    """A health URL reachable from the host, and how it was found."""
    published = _published(spec)
    if not published:
        return None, "no published port: health is judged by the container healthcheck only"
    test = spec.get("healthcheck", {}).get("test") or []
    test_text = " ".join(test) if isinstance(test, list) else str(test)
    match = _URL_IN_TEST.search(test_text)
    if match:
        target_port = int(match.group(1) or 80)
        path = match.group(2) or "/"
        for target, host_port, host_ip in published:
            if target == target_port:
                return f"http://{host_ip}:{host_port}{path}", "from the compose healthcheck"
    target, host_port, host_ip = published[0]
    path = KNOWN_HEALTH_PATHS.get(name)
    how = "known path for this service" if path else "published port"
    if name in ("nginx",) or any(p in str(spec.get("image", "")) for p in PROXY_IMAGES):
        path = "/api/v1/health/check" if "/api/" in json.dumps(spec) else path
    return f"http://{host_ip}:{host_port}{path or '/'}", how


def derive(compose: Mapping[str, Any], env_values: Mapping[str, str]) -> Derived:
    """Pure: from ``docker compose config --format json`` and the .env (names+values)."""
    out = Derived()
    services: Mapping[str, Any] = compose.get("services") or {}
    db_types: dict[str, str] = {}
    for name, spec in services.items():
        kind = database_type(name, spec)
        if kind:
            db_types[name] = kind
    used_names: set[str] = set()
    for service, kind in sorted(db_types.items()):
        db_name = kind if kind not in used_names else f"{kind}-{service}"
        used_names.add(db_name)
        spec = services[service]
        environment: Mapping[str, str] = spec.get("environment") or {}
        entry: dict[str, Any] = {"type": kind, "service": service, "mode": "exec"}
        notes: list[str] = []
        engine = engines.get(kind)
        for user, pw_vars, user_vars in engine.credentials:
            pw_var = next((v for v in pw_vars if v in environment), None)
            if pw_var is None:
                continue
            if user:
                entry["user"] = user
            if user_vars:
                user_var = next((v for v in user_vars if v in environment), None)
                if user_var:
                    entry["user_env"] = _env_name(user_var, environment[user_var], env_values, notes)
            entry["password_env"] = _env_name(pw_var, environment[pw_var], env_values, notes)
            break
        for var in engine.database_name_vars:
            if environment.get(var):
                entry["databases"] = [environment[var]]
                break
        notes += engine.init_notes(spec, entry)
        out.databases[db_name] = entry
        out.notes[f"databases.{db_name}"] = notes

    for name, spec in services.items():
        deps = spec.get("depends_on") or {}
        dep_names = list(deps.keys()) if isinstance(deps, dict) else list(deps)
        entry = {}
        if name in db_types:
            entry["kind"] = "database"
        elif any(p in str(spec.get("image", "")) for p in PROXY_IMAGES) or name in PROXY_IMAGES:
            entry["kind"] = "proxy"
        else:
            entry["kind"] = "app"
        notes = []
        if entry["kind"] != "database":
            url, how = health_url(name, spec)
            if url:
                entry["health_url"] = url
            notes.append(f"health: {how}")
            writes = [db for db, d in out.databases.items() if d["service"] in dep_names]
            if writes and entry["kind"] == "app":
                entry["writes_to"] = writes
        out.services[name] = entry
        out.notes[f"services.{name}"] = notes
    out.volumes = _volumes(compose, set(db_types))
    return out


def _volumes(compose: Mapping[str, Any], db_services: set[str]) -> dict[str, dict[str, Any]]:
    """Named volumes not mounted by a database service (those are dumped, not tarred)."""
    out: dict[str, dict[str, Any]] = {}
    for volume, services in sorted(volume_users(compose).items()):
        if db_services & set(services):
            continue
        entry: dict[str, Any] = {"volume": volume}
        if services:
            entry["service"] = sorted(services)[0]
            entry["stop_service"] = False
        out[volume] = entry
    return out


def _env_name(var: str, value: str, env_values: Mapping[str, str], notes: list[str]) -> str:
    """The .env variable that provides ``value`` to the container's ``var``.

    Values are compared in memory only; none is ever written out.
    """
    if env_values.get(var) == value:
        return var
    for key, candidate in env_values.items():
        if candidate == value and value:
            return key
    notes.append(f"{var} is not taken from .env: export {var} before running backout")
    return var


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON strings, ints and lists of strings are valid TOML


def render(derived: Derived, compose_files: list[str], env_file: str | None,
           platform: Sequence[str] = ()) -> str:
    """``platform``: lines of a [platform] table (and [project] name) when the stack
    runs elsewhere than on Compose."""
    lines = [
        "# backout configuration: written by `backout init`, edit freely.",
        "# Reference: README.md#configuration. Check it with `backout config check`.",
        "# Credentials are referenced by the NAME of a variable in the .env file (or the",
        "# environment); never put a password in this file.",
        "",
        "[project]",
        f"compose_files = {_toml_value(compose_files)}",
        f"env_file = {_toml_value(env_file or '')}   # \"\" when the project has no .env",
        "state_dir = \".backout\"                # releases, journal, lock, audit log",
        *platform,
        "",
        "[backups]",
        "dir = \".backout/backups\"",
        "keep_last = 10",
        "keep_daily = 7",
        "",
        "[releases]",
        "keep_last = 10    # releases whose images are kept for instant rollback",
        "",
    ]
    for name, entry in derived.databases.items():
        lines.append(f"[databases.{name}]")
        lines += [f"# {n}" for n in derived.notes.get(f"databases.{name}", [])]
        for key, value in entry.items():
            comment = ""
            if key == "mode":
                comment = "   # exec: dump inside the container; tcp: local client tools"
            lines.append(f"{key} = {_toml_value(value)}{comment}")
        lines.append("")
    for name, entry in derived.volumes.items():
        lines.append("# A named volume no database uses: uncomment to back it up as a tar.")
        lines.append(f"# [volumes.{name}]")
        for key, value in entry.items():
            comment = {"stop_service": "   # true: stopped during the tar (consistent copy, "
                                       "downtime)",
                       "service": "   # the service that mounts it"}.get(key, "")
            lines.append(f"# {key} = {_toml_value(value)}{comment}")
        lines.append("")
    for name, entry in derived.services.items():
        lines.append(f"[services.{name}]")
        lines += [f"# {n}" for n in derived.notes.get(f"services.{name}", [])]
        for key, value in entry.items():
            lines.append(f"{key} = {_toml_value(value)}")
        if entry.get("kind") == "app" and entry.get("health_url") and "metrics_url" not in entry:
            base = entry["health_url"].split("/", 3)
            lines.append(f"# metrics_url = \"{'/'.join(base[:3])}/metrics\"   # Prometheus text, if served")
        lines.append("")
    return "\n".join(lines)
