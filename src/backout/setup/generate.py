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
from backout.engines import images
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
    # what the operator must act on (init exits 1): each true, each naming the fix
    warnings: list[str] = field(default_factory=list)
    # database services of engines this build does not have: (service, type, how)
    pending: list[tuple[str, str, str]] = field(default_factory=list)
    # database name -> how its service was recognised ("image mariadb", "guessed: ...")
    recognised: dict[str, str] = field(default_factory=dict)


def database_type(name: str, spec: Mapping[str, Any],
                  found: Sequence[str] = ()) -> tuple[str, str] | None:
    """(engine type, how it was told) of a service, or None: by its image whatever
    the registry and tag; then by the server program its command starts or its
    container has (``found``: ``mariadbd``...), said to be a guess; then by its name."""
    image = str(spec.get("image") or "")
    table = engines.all_engines()
    for engine in table:
        how = engine.recognise(image) if image else None
        if how and not how.startswith("guessed"):
            return engine.type, how
    # Images of planned engines: the type even once its engine is in the table and
    # names fewer images itself; derive() says so when this build lacks the engine.
    pending = images.pending_type(image) if image else None
    if pending:
        return pending
    programs = [p for p in (images.command_program(spec.get("entrypoint")),
                            images.command_program(spec.get("command")), *found) if p]
    for engine in table:
        how = engine.recognise("", programs)
        if how:
            return engine.type, how
    pending = images.pending_type("", programs)
    if pending:
        return pending
    lowered = name.lower()
    for engine in table:
        if lowered in (engine.type, *engine.image_repositories, *engine.image_patterns):
            return engine.type, f"guessed from the service name {name!r}"
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


def derive(compose: Mapping[str, Any], env_values: Mapping[str, str],
           raw: Mapping[str, Any] | None = None,
           found: Mapping[str, Sequence[str]] | None = None) -> Derived:
    """Pure: from ``docker compose config --format json`` (``compose``), the same
    without interpolation (``raw``: where each value comes from, by name), the
    values of the variables it references that are set (``env_values``: names are
    what matters; values only tell a set variable from an unset one, and are compared
    in memory when ``raw`` is absent), and the server programs seen in each
    service's image or container (``found``)."""
    out = Derived()
    services: Mapping[str, Any] = compose.get("services") or {}
    raw_services: Mapping[str, Any] = (raw or {}).get("services") or {}
    db_types: dict[str, str] = {}
    how_told: dict[str, str] = {}
    for name, spec in services.items():
        told = database_type(name, spec, (found or {}).get(name, ()))
        if told is None:
            continue
        kind, how = told
        if kind not in engines.names():
            out.pending.append((name, kind, how))
            out.warnings.append(
                f"services.{name}: a {kind} database ({how}), but this build of backout has "
                f"no {kind} engine: its data is NOT checkpointed (use a backout with the "
                f"{kind} engine, or back it up another way)")
            continue
        db_types[name] = kind
        how_told[name] = how
    used_names: set[str] = set()
    for service, kind in sorted(db_types.items()):
        db_name = kind if kind not in used_names else f"{kind}-{service}"
        used_names.add(db_name)
        spec = services[service]
        environment = environment_of(spec)
        raw_spec = raw_services.get(service) if raw is not None else None
        entry: dict[str, Any] = {"type": kind, "service": service, "mode": "exec"}
        how = how_told[service]
        notes: list[str] = [f"{how}: check that this service is that database"
                            if how.startswith("guessed") else f"recognised by {how}"]
        engine = engines.get(kind)
        credentials = Credentials(environment, raw_spec, env_values)
        for index, (user, pw_vars, user_vars) in enumerate(engine.credentials):
            pw_var = credentials.present(pw_vars)
            if pw_var is None:
                continue
            if user:
                entry["user"] = user
            if user_vars:
                user_var = credentials.present(user_vars)
                if user_var:
                    entry.update(credentials.user(user_var, notes))
            entry.update(credentials.password(pw_var, notes))
            if not user and index > 0:
                notes.append(f"dumps run as {entry.get('user') or entry.get('user_env') or 'that user'}"
                             f", not root: {engine.limited_user_note}")
            break
        for var in engine.database_name_vars:
            if environment.get(var):
                entry["databases"] = [environment[var]]
                break
        hint = engine.init_credentials(spec, raw_spec, env_values) \
            if not any(k.startswith("password") for k in entry) else None
        if hint is not None:
            fields, hint_notes, hint_warnings = hint
            entry.update(fields)
            notes += hint_notes
            out.warnings += [f"databases.{db_name}: {w}" for w in hint_warnings]
        if not any(k.startswith("password") for k in entry):
            notes.append("password: none in the compose file (the server runs without one)")
        notes += engine.init_notes(spec, entry)
        out.databases[db_name] = entry
        out.recognised[db_name] = how_told[service]
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


def environment_of(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """A service's ``environment:`` as a mapping; without interpolation Compose keeps
    the list form (``- KEY=value``; a bare ``- KEY`` passes the caller's KEY: None)."""
    value = (spec or {}).get("environment") or {}
    if isinstance(value, Mapping):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value:
        key, sep, rest = str(item).partition("=")
        out[key] = rest if sep else None
    return out


@dataclass
class Credentials:
    """Where a database service's credentials come from, by name: a variable of the
    .env (``${VAR}`` in the file as written), a Docker secret the container reads
    (``*_FILE``), or the container's own environment (a literal in the file)."""
    environment: Mapping[str, Any]  # interpolated
    raw_spec: Mapping[str, Any] | None  # as written; None: only values are known
    env_values: Mapping[str, str]

    def _raw(self, var: str) -> Any:
        if self.raw_spec is None:
            return None
        return environment_of(self.raw_spec).get(var)

    def present(self, names: Sequence[str]) -> str | None:
        """The first of ``names`` (or its ``_FILE`` form) the service sets."""
        for name in names:
            for candidate in (name, f"{name}_FILE"):
                if candidate in self.environment:
                    return candidate
        return None

    def _source(self, var: str) -> str | None:
        """The .env/environment variable whose value the container's ``var`` is."""
        if self.raw_spec is not None:
            raw = self._raw(var)
            ref = var if raw is None else images.variable_reference(raw)
            return ref if ref is not None and ref in self.env_values else None
        value = self.environment.get(var)
        if value and self.env_values.get(var) == value:
            return var
        return next((k for k, v in self.env_values.items() if v == value and value), None)

    def password(self, var: str, notes: list[str]) -> dict[str, str]:
        if var.endswith("_FILE"):
            notes.append(f"password: read inside the container from the file {var} names "
                         f"({self.environment.get(var)}), as the image reads it")
            return {"password_container_env": var}
        source = self._source(var)
        if source:
            notes.append(f"password: {source} from the .env file or the environment "
                         "(as Compose reads it)")
            return {"password_env": source}
        raw = self._raw(var)
        ref = images.variable_reference(raw) if raw is not None else None
        why = (f"${{{ref}}} is set in neither .env nor the environment"
               if ref else "a literal in the compose file")
        notes.append(f"password: the container's own {var} ({why}), read inside the "
                     "container at each use: nothing to export")
        return {"password_container_env": var}

    def user(self, var: str, notes: list[str]) -> dict[str, str]:
        if var.endswith("_FILE"):
            return {"user_container_env": var}
        source = self._source(var)
        if source:
            return {"user_env": source}
        value = self.environment.get(var)
        if isinstance(value, str) and value and "$" not in str(self._raw(var) or ""):
            return {"user": value}  # a user name is not a secret
        return {"user_container_env": var}


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
    for service, kind, how in derived.pending:
        lines += [f"# A {kind} database ({how}): this build of backout has no {kind} engine,",
                  "# so it is not checkpointed. With one, this section would read:",
                  f"# [databases.{kind}-{service}]", f"# type = {_toml_value(kind)}",
                  f"# service = {_toml_value(service)}", ""]
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
