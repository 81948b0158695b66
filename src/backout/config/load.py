"""Load and validate backout.toml once; every problem as ``file: key.path: problem``.

Validation happens in two passes: the file on its own (syntax, known keys, types,
choices), then against the Compose project it describes (files exist, service
names exist, credential variables resolve). The first problem found is reported,
in a stable order, so the operator fixes one line at a time.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from backout import engines, platforms, proc
from backout.config.model import (
    ACCESS_MODES,
    SERVICE_KINDS,
    WEBHOOK_FORMATS,
    BackupsConfig,
    Config,
    DatabaseConfig,
    DeployConfig,
    MonitorConfig,
    NotifyConfig,
    PlatformConfig,
    ProjectConfig,
    ReleasesConfig,
    RepositoryConfig,
    ServiceConfig,
    VerifyConfig,
    VolumeConfig,
)
from backout.environment import Environment
from backout.errors import BackoutError, ConfigError, did_you_mean
from backout.policy import rules as policy
from backout.policy import switch as switch_policy
from backout.storage.repositories import names as repository_kinds

T = TypeVar("T")

CONFIG_NAME = "backout.toml"
# scheme://user:password@host in a repository URL (rest:https://u:p@host/...)
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]*@")


@dataclass(frozen=True)
class Key:
    """One allowed key: its type, whether required, and allowed values."""

    kind: type
    required: bool = False
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    list_of: type | None = None


PROJECT_KEYS = {
    "compose_files": Key(list, list_of=str),
    "name": Key(str),
    "env_file": Key(str),
    "state_dir": Key(str),
}
PLATFORM_KEYS = {
    "kind": Key(str, choices=platforms.names()),
    "manager": Key(str),
    "nodes": Key(dict),
    "stall_seconds": Key(int, minimum=5),
    "converge_seconds": Key(int, minimum=10),
}
SERVICE_KEYS = {
    "kind": Key(str, choices=SERVICE_KINDS),
    "health_url": Key(str),
    "health_status": Key(int, minimum=100),
    "health_body": Key(str),
    "metrics_url": Key(str),
    "writes_to": Key(list, list_of=str),
    "log_error_pattern": Key(str),
    "log_error_allowance": Key(int, minimum=0),
    "switch": Key(str, choices=switch_policy.ORDERS),
    "ready_timeout_seconds": Key(int, minimum=1),
    "readiness_url": Key(str),
    "proxy": Key(str, choices=switch_policy.PROXY_MODES),
    "proxy_reload": Key(list, list_of=str),
    "proxy_dns_valid_seconds": Key(int, minimum=0),
    "pre_stop": Key(list, list_of=str),
    "pre_stop_wait_seconds": Key(int, minimum=0),
}
DATABASE_KEYS = {
    "type": Key(str, required=True, choices=engines.names()),
    "service": Key(str, required=True),
    "mode": Key(str, choices=ACCESS_MODES),
    "host": Key(str),
    "port": Key(int, minimum=1),
    "databases": Key(list, list_of=str),
    "user": Key(str),
    "user_env": Key(str),
    "password_env": Key(str),
    "password_file": Key(str),
    "password_container_env": Key(str),
    "password_container_file": Key(str),
    "user_container_env": Key(str),
}
VOLUME_KEYS = {
    "volume": Key(str, required=True),
    "service": Key(str),
    "stop_service": Key(bool),
    "image": Key(str),
}
BACKUPS_KEYS = {
    "dir": Key(str),
    "keep_last": Key(int, minimum=1),
    "keep_daily": Key(int, minimum=0),
    "keep_hourly": Key(int, minimum=0),
    "keep_weekly": Key(int, minimum=0),
    "keep_monthly": Key(int, minimum=0),
    "keep_yearly": Key(int, minimum=0),
    "rpo_hours": Key(float, minimum=0),
    "zstd_level": Key(int, minimum=1),
    "stall_seconds": Key(int, minimum=1),
    "restore_sessions": Key(int, minimum=1),
}
REPOSITORY_KEYS = {
    "url": Key(str, required=True),
    "kind": Key(str, choices=repository_kinds()),
    "password_env": Key(str),
    "password_file": Key(str),
    "ssh_config": Key(str),
    "timeout_seconds": Key(int, minimum=1),
}
RELEASES_KEYS = {"keep_last": Key(int, minimum=2)}
VERIFY_KEYS = {"settle_seconds": Key(int, minimum=0), "log_window_seconds": Key(int, minimum=1)}
MONITOR_KEYS = {
    "interval_seconds": Key(int, minimum=1),
    "window_seconds": Key(int, minimum=1),
    "baseline_evaluations": Key(int, minimum=1),
    "use_default_rules": Key(bool),
    "rules": Key(list, list_of=dict),  # [[monitor.rules]]
    "notify": Key(dict),  # [monitor.notify]
    "prometheus_url": Key(str),  # a Prometheus server for [monitor.promql] signals
    "commands": Key(dict),  # [monitor.commands] signal = "command printing a number"
    "promql": Key(dict),  # [monitor.promql] signal = "PromQL instant query"
}
RULE_KEYS = {
    "name": Key(str, required=True),
    "signal": Key(str, required=True),
    "comparison": Key(str, required=True, choices=policy.COMPARISONS),
    "threshold": Key(float, required=True),
    "level": Key(str, required=True, choices=policy.RULE_LEVELS),
    "severity": Key(str, choices=policy.SEVERITIES),
    "action": Key(str, choices=policy.ACTIONS),
    "relative_to_baseline": Key(bool),
    "for_seconds": Key(int, minimum=0),
    "consecutive": Key(int, minimum=1),
    "clear_threshold": Key(float),
    "clear_for_seconds": Key(int, minimum=0),
    "no_data": Key(str, choices=policy.NO_DATA_MODES),
    "description": Key(str),
}
NOTIFY_KEYS = {
    "webhook_url": Key(str),
    "webhook_format": Key(str, choices=WEBHOOK_FORMATS),
    "command": Key(str),
}
DEPLOY_KEYS = {
    "watch_seconds": Key(int, minimum=0),
    "disk_margin": Key(float, minimum=1),
    "rollback_with_data": Key(bool),
}
TOP_LEVEL = ("project", "platform", "services", "databases", "volumes", "backups", "releases", "verify",
             "monitor", "deploy", "repositories")

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", bool: "true or false",
               float: "a number", dict: "a table"}


def display_path(path: Path) -> str:
    """How a file is named in messages: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_config(project_dir: Path, explicit: Path | None) -> Path:
    path = explicit if explicit is not None else project_dir / CONFIG_NAME
    if not path.is_file():
        shown = display_path(path)
        if explicit is not None:
            raise ConfigError(shown, "", "no such file", fix="check --config")
        raise ConfigError(shown, "", "not found",
                          fix="run `backout init` in the directory of your compose file, "
                              "or pass --project-dir / --config")
    return path


def _is_type(value: object, kind: type) -> bool:
    if kind is float:  # a number: TOML writes 5 as an integer, 0.5 as a float
        return isinstance(value, int | float) and not isinstance(value, bool)
    # bool is an int in Python; a TOML `true` is never a valid integer here.
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)


def _check_table(file: str, prefix: str, table: Mapping[str, Any],
                 spec: Mapping[str, Key]) -> None:
    for key in table:
        if key not in spec:
            raise ConfigError(file, f"{prefix}.{key}",
                              "unknown key" + did_you_mean(key, spec))
    for key, rule in spec.items():
        where = f"{prefix}.{key}"
        if key not in table:
            if rule.required:
                raise ConfigError(file, where, "missing (required)")
            continue
        value: Any = table[key]
        if not _is_type(value, rule.kind):
            raise ConfigError(file, where,
                              f"must be {_TYPE_NAMES.get(rule.kind, str(rule.kind))}, "
                              f"not {type(value).__name__} {value!r}")
        if rule.list_of is not None:
            for i, item in enumerate(value):
                if not isinstance(item, rule.list_of):
                    raise ConfigError(file, f"{where}[{i}]",
                                      f"must be {_TYPE_NAMES[rule.list_of]}, not {item!r}")
        if rule.choices is not None and value not in rule.choices:
            raise ConfigError(file, where, f"must be one of {', '.join(rule.choices)}, "
                                           f"not {value!r}" + did_you_mean(value, rule.choices))
        if rule.minimum is not None and value < rule.minimum:
            raise ConfigError(file, where, f"must be at least {rule.minimum}, not {value}")


def _table(file: str, doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(file, key, f"must be a table ([{key}]), not {type(value).__name__}")
    return value


def parse_document(file: str, text: str, project_dir: Path) -> Config:
    """Pass one: the file on its own. No external calls."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}",
                          fix="correct the syntax at that line") from exc
    for key in doc:
        if key not in TOP_LEVEL:
            raise ConfigError(file, key, "unknown section" + did_you_mean(key, TOP_LEVEL))

    project_t = _table(file, doc, "project")
    _check_table(file, "project", project_t, PROJECT_KEYS)
    if "compose_files" in project_t and not project_t["compose_files"]:
        raise ConfigError(file, "project.compose_files", "must name at least one file")
    project = ProjectConfig(
        compose_files=tuple(project_t.get("compose_files", ProjectConfig.compose_files)),
        name=project_t.get("name") or None,
        env_file=project_t.get("env_file", ProjectConfig.env_file) or None,
        state_dir=project_t.get("state_dir", ProjectConfig.state_dir),
    )

    platform_t = _table(file, doc, "platform")
    _check_table(file, "platform", platform_t, PLATFORM_KEYS)
    nodes = platform_t.get("nodes", {})
    for node, host in nodes.items():
        if not isinstance(host, str) or not host:
            raise ConfigError(file, f"platform.nodes.{node}",
                              "must be the node's Docker host (unix://, tcp:// or ssh://)")
    platform = PlatformConfig(
        kind=platform_t.get("kind", platforms.DEFAULT), manager=platform_t.get("manager"),
        nodes=dict(nodes), stall_seconds=platform_t.get("stall_seconds", 90),
        converge_seconds=platform_t.get("converge_seconds", 300))

    services: dict[str, ServiceConfig] = {}
    for name, table in _table(file, doc, "services").items():
        if not isinstance(table, dict):
            raise ConfigError(file, f"services.{name}", "must be a table")
        _check_table(file, f"services.{name}", table, SERVICE_KEYS)
        fields = dict(table)
        fields["writes_to"] = tuple(fields.get("writes_to", ()))
        if "proxy_reload" in fields:
            if not fields["proxy_reload"]:
                raise ConfigError(file, f"services.{name}.proxy_reload",
                                  "must name a command (e.g. [\"nginx\", \"-s\", \"reload\"])")
            fields["proxy_reload"] = tuple(fields["proxy_reload"])
        if "pre_stop" in fields:
            if not fields["pre_stop"]:
                raise ConfigError(file, f"services.{name}.pre_stop",
                                  "must name a command (e.g. [\"touch\", \"/tmp/drain\"])")
            fields["pre_stop"] = tuple(fields["pre_stop"])
        services[name] = ServiceConfig(name=name, **fields)

    databases: dict[str, DatabaseConfig] = {}
    for name, table in _table(file, doc, "databases").items():
        if not isinstance(table, dict):
            raise ConfigError(file, f"databases.{name}", "must be a table")
        _check_table(file, f"databases.{name}", table, DATABASE_KEYS)
        fields = dict(table)
        fields["databases"] = tuple(fields.get("databases", ()))
        databases[name] = DatabaseConfig(name=name, **fields)
        if databases[name].mode == "tcp" and databases[name].port is None:
            raise ConfigError(file, f"databases.{name}.port", "required when mode = \"tcp\"")
        _check_credential_sources(file, databases[name])

    volumes = _parse_volumes(file, _table(file, doc, "volumes"), databases)

    backups_t = _table(file, doc, "backups")
    _check_table(file, "backups", backups_t, BACKUPS_KEYS)
    if "rpo_hours" in backups_t:
        backups_t["rpo_hours"] = float(backups_t["rpo_hours"])
    repositories = _parse_repositories(file, _table(file, doc, "repositories"))
    releases_t = _table(file, doc, "releases")
    _check_table(file, "releases", releases_t, RELEASES_KEYS)
    verify_t = _table(file, doc, "verify")
    _check_table(file, "verify", verify_t, VERIFY_KEYS)
    monitor = _parse_monitor(file, _table(file, doc, "monitor"))
    deploy_t = _table(file, doc, "deploy")
    _check_table(file, "deploy", deploy_t, DEPLOY_KEYS)

    for svc in services.values():
        for i, db in enumerate(svc.writes_to):
            if db not in databases:
                raise ConfigError(file, f"services.{svc.name}.writes_to[{i}]",
                                  f'no database "{db}" in [databases]'
                                  + did_you_mean(db, databases))
    return Config(
        path=Path(file),
        project_dir=project_dir,
        project=project,
        platform=platform,
        services=services,
        databases=databases,
        volumes=volumes,
        repositories=repositories,
        backups=BackupsConfig(**backups_t),
        releases=ReleasesConfig(**releases_t),
        verify=VerifyConfig(**verify_t),
        monitor=monitor,
        deploy=DeployConfig(**{**deploy_t, **({"disk_margin": float(deploy_t["disk_margin"])}
                                                if "disk_margin" in deploy_t else {})}),
    )


CONTAINER_CREDENTIALS = ("password_container_env", "password_container_file", "user_container_env")
PASSWORD_SOURCES = ("password_env", "password_file", "password_container_env",
                    "password_container_file")


def _check_credential_sources(file: str, db: DatabaseConfig) -> None:
    """One password source per database; the container's own only where backout
    reaches into the container."""
    given = [key for key in PASSWORD_SOURCES if getattr(db, key)]
    if len(given) > 1:
        raise ConfigError(file, f"databases.{db.name}.{given[1]}",
                          f"the password has one source, not two ({' and '.join(given)})",
                          fix=f"keep one of {', '.join(given)}")
    if db.user_env and db.user_container_env:
        raise ConfigError(file, f"databases.{db.name}.user_container_env",
                          "the user has one source, not two (user_env and user_container_env)",
                          fix="keep one of them")
    for key in CONTAINER_CREDENTIALS:
        value = getattr(db, key)
        if value and db.mode != "exec":
            raise ConfigError(file, f"databases.{db.name}.{key}",
                              "is read inside the container: needs mode = \"exec\"",
                              fix=f"set mode = \"exec\", or use {key.split('_')[0]}_env "
                                  "with a variable of the .env file")
        if key.endswith("_env") and value and not _is_variable_name(value):
            raise ConfigError(file, f"databases.{db.name}.{key}",
                              f"must be a variable name, not {value!r}")


def _is_variable_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) is not None


def _parse_volumes(file: str, table: dict[str, Any],
                   databases: Mapping[str, DatabaseConfig]) -> dict[str, VolumeConfig]:
    """[volumes.<name>]: named Docker volumes backed up as a tar."""
    volumes: dict[str, VolumeConfig] = {}
    for name, entry in table.items():
        where = f"volumes.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(file, where, "must be a table")
        if name in databases or name == "all":
            raise ConfigError(file, where, f'"{name}" is taken by '
                              + ("a database" if name in databases else "`backout backup all`"),
                              fix="rename the volume's section: `backout backup NAME` must "
                                  "mean one thing")
        _check_table(file, where, entry, VOLUME_KEYS)
        if not entry["volume"].strip():
            raise ConfigError(file, f"{where}.volume", "must not be empty",
                              fix="name a volume of the compose file's `volumes:`")
        if entry.get("stop_service") and not entry.get("service"):
            raise ConfigError(file, f"{where}.stop_service", "needs a service to stop",
                              fix=f"set {where}.service to the service that mounts the volume")
        volumes[name] = VolumeConfig(name=name, **entry)
    return volumes


def _parse_repositories(file: str, table: dict[str, Any]) -> dict[str, RepositoryConfig]:
    """[repositories.<name>]: where every published set is copied. Exactly one of
    password_env / password_file: a password written in backout.toml is refused."""
    repositories: dict[str, RepositoryConfig] = {}
    for name, entry in table.items():
        where = f"repositories.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(file, where, "must be a table")
        if "password" in entry:
            raise ConfigError(file, f"{where}.password",
                              "a repository password is never kept in backout.toml",
                              fix=f"put it in a variable ({where}.password_env) or a file "
                                  f"readable only by you ({where}.password_file)")
        _check_table(file, where, entry, REPOSITORY_KEYS)
        if ("password_env" in entry) == ("password_file" in entry):
            raise ConfigError(file, where, "needs exactly one of password_env, password_file",
                              fix="name the variable or the file that holds the repository "
                                  "password")
        if not entry["url"].strip():
            raise ConfigError(file, f"{where}.url", "must not be empty",
                              fix="a restic repository: /path, sftp:host:/path, rest:..., s3:...")
        if _URL_PASSWORD.search(entry["url"]):
            # the URL goes on restic's argv (seen by every user of the host) and into output
            raise ConfigError(file, f"{where}.url", "holds a password (user:password@)",
                              fix="drop it from the URL and export it for restic instead "
                                  "(rest: RESTIC_REST_PASSWORD, with RESTIC_REST_USERNAME)")
        repositories[name] = RepositoryConfig(name=name, **entry)
    return repositories


def _parse_monitor(file: str, table: dict[str, Any]) -> MonitorConfig:
    """[monitor], its [[monitor.rules]] and [monitor.notify]: parsed and validated only."""
    _check_table(file, "monitor", table, MONITOR_KEYS)
    fields = {k: v for k, v in table.items() if k not in ("rules", "notify", "commands", "promql")}
    for section in ("commands", "promql"):
        for signal, value in table.get(section, {}).items():
            where = f"monitor.{section}.{signal}"
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(file, where, "must be a non-empty string")
            try:
                policy.parse_signal(signal)
            except ValueError as exc:
                raise ConfigError(file, where, str(exc)) from exc
        fields[section] = tuple(sorted(table.get(section, {}).items()))
    if table.get("promql") and not table.get("prometheus_url"):
        raise ConfigError(file, "monitor.prometheus_url", "required by [monitor.promql]")
    monitor = MonitorConfig(**fields)
    if monitor.window_seconds <= monitor.interval_seconds:
        raise ConfigError(file, "monitor.window_seconds",
                          f"must be greater than interval_seconds ({monitor.interval_seconds}): "
                          "a rate needs two scrapes in the window")
    rules: list[policy.Rule] = []
    for i, rule_t in enumerate(table.get("rules", [])):
        rule = _parse_rule(file, f"monitor.rules[{i}]", rule_t)
        if any(r.name == rule.name for r in rules):
            raise ConfigError(file, f"monitor.rules[{i}].name", f'duplicate rule name "{rule.name}"')
        rules.append(rule)
    notify_t = table.get("notify", {})
    _check_table(file, "monitor.notify", notify_t, NOTIFY_KEYS)
    url = notify_t.get("webhook_url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(file, "monitor.notify.webhook_url",
                          f"must be an http:// or https:// URL, not {url!r}")
    return MonitorConfig(**fields, rules=tuple(rules), notify=NotifyConfig(**notify_t))


def _parse_rule(file: str, where: str, table: dict[str, Any]) -> policy.Rule:
    _check_table(file, where, table, RULE_KEYS)
    level = policy.Level(table["level"])
    fields = dict(table)
    fields["level"] = level
    fields.setdefault("severity", policy.DEFAULT_SEVERITY[level])
    fields.setdefault("action", policy.DEFAULT_ACTION[level])
    for key in ("threshold", "clear_threshold"):
        if key in fields:
            fields[key] = float(fields[key])
    try:
        return policy.Rule(**fields)
    except policy.RuleError as exc:
        raise ConfigError(file, f"{where}.{exc.field}", exc.message) from None


def load_config(
    env: Environment,
    path: Path,
    *,
    compose_services: Callable[[Environment, Config], set[str]] | None = None,
    compose_volumes: Callable[[Environment, Config], dict[str, set[str]]] | None = None,
    compose_variables: Callable[[Environment, Config, list[str]], dict[str, str]] | None = None,
) -> Config:
    """Read, validate and resolve ``path``.

    ``compose_services`` returns the service names of the Compose project (the
    default asks ``docker compose config``); tests pass a fake for pure checks.
    ``compose_volumes`` likewise returns its named volumes, each with the services
    that mount it (asked only when [volumes] is configured).
    ``compose_variables`` gives the values of the credential variables the config
    names, as Compose gives them to the containers (default: Compose itself reads the
    .env file and the environment).
    """
    file = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    config = parse_document(file, text, env.project_dir.resolve())
    object.__setattr__(config, "path", path)

    for i, name in enumerate(config.project.compose_files):
        if not (config.project_dir / name).is_file():
            raise ConfigError(file, f"project.compose_files[{i}]",
                              f"{name} does not exist in {config.project_dir}",
                              fix="name the compose file of this project")

    if config.project.env_file:
        env_path = config.project_dir / config.project.env_file
        if not env_path.exists():
            raise ConfigError(file, "project.env_file", f"{config.project.env_file} does not exist",
                              fix="create it, or set env_file = \"\" if the project has none")
        try:
            env_path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(file, "project.env_file",
                              f"cannot read {config.project.env_file}: {reason}") from exc
    wanted = sorted({v for db in config.databases.values() for v in (db.user_env, db.password_env)
                     if v} | {r.password_env for r in config.repositories.values() if r.password_env})
    # Compose is asked for the services while it resolves the variables: two
    # independent `docker compose config` processes (about 0.1 s each) that every
    # command used to wait for one after the other. Errors keep their order.
    names_of = proc.Background(lambda: (compose_services or _compose_service_names)(env, config))
    try:
        env_values = (compose_variables or _compose_variables)(env, config, wanted) \
            if wanted else {}
    except BackoutError as exc:
        raise ConfigError(config.project.env_file or config.project.compose_files[0], "",
                          f"docker compose cannot read the variables: {exc.message}") from exc

    secrets = _resolve_credentials(env, file, config, env_values)
    object.__setattr__(config, "secrets", secrets)

    names = names_of.result()
    for svc in config.services:
        if svc not in names:
            raise ConfigError(file, f"services.{svc}",
                              "no service of that name in compose project"
                              + did_you_mean(svc, names))
    for db in config.databases.values():
        if db.service not in names:
            raise ConfigError(file, f"databases.{db.name}.service",
                              f'no service "{db.service}" in compose project'
                              + did_you_mean(db.service, names))
    if config.volumes:
        _check_volumes(file, config, names,
                       (compose_volumes or _compose_volume_mounts)(env, config))
    return config


def _check_volumes(file: str, config: Config, services: set[str],
                   mounts: Mapping[str, set[str]]) -> None:
    for vol in config.volumes.values():
        where = f"volumes.{vol.name}"
        if vol.volume not in mounts:
            raise ConfigError(file, f"{where}.volume",
                              f'no volume "{vol.volume}" in compose project'
                              + did_you_mean(vol.volume, mounts),
                              fix="name a key of the compose file's top-level `volumes:` "
                                  "(bind mounts are not backed up)")
        if vol.service is None:
            continue
        if vol.service not in services:
            raise ConfigError(file, f"{where}.service",
                              f'no service "{vol.service}" in compose project'
                              + did_you_mean(vol.service, services))
        if vol.service not in mounts[vol.volume]:
            users = ", ".join(sorted(mounts[vol.volume])) or "no service"
            raise ConfigError(file, f"{where}.service",
                              f'service "{vol.service}" does not mount volume "{vol.volume}"',
                              fix=f"name the service that uses it ({users})")


def _compose_volume_mounts(env: Environment, config: Config) -> dict[str, set[str]]:
    return platforms.for_config(env, config).volume_mounts()


def _resolve_credentials(env: Environment, file: str, config: Config,
                         env_values: Mapping[str, str]) -> dict[str, str]:
    secrets: dict[str, str] = {}
    shown_env = config.project.env_file or "the environment"
    for db in config.databases.values():
        for key in ("user_env", "password_env"):
            var = getattr(db, key)
            if not var:
                continue
            value = env_values.get(var)
            if value is None:
                raise ConfigError(file, f"databases.{db.name}.{key}",
                                  f"{var} is not set in {shown_env} or the environment",
                                  fix=f"add {var}=... to {shown_env}, or export it")
            secrets[var] = value
            if key == "password_env":
                env.redact.add(value)
        if db.password_file:
            pf = config.project_dir / db.password_file
            try:
                value = pf.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(file, f"databases.{db.name}.password_file",
                                  f"cannot read {db.password_file}: {exc.strerror}") from exc
            secrets[f"file:{db.password_file}"] = value
            env.redact.add(value)
    for repo in config.repositories.values():
        secrets[repo.password_key] = _repository_password(file, config, repo, env_values,
                                                          shown_env)
        env.redact.add(secrets[repo.password_key])
    return secrets


def _compose_variables(env: Environment, config: Config, names: list[str]) -> dict[str, str]:
    return platforms.for_config(env, config).variables(names)
def _repository_password(file: str, config: Config, repo: RepositoryConfig,
                         env_values: Mapping[str, str], shown_env: str) -> str:
    where = f"repositories.{repo.name}"
    if repo.password_env:
        value = env_values.get(repo.password_env)
        if not value:
            raise ConfigError(file, f"{where}.password_env",
                              f"{repo.password_env} is not set in {shown_env} or the environment",
                              fix=f"add {repo.password_env}=... to {shown_env}, or export it")
        return value
    assert repo.password_file is not None
    path = config.project_dir / repo.password_file
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(file, f"{where}.password_file",
                          f"cannot read {repo.password_file}: {exc.strerror}",
                          fix="create it (one line, mode 0600) or point at the right file") from exc
    if not value:
        raise ConfigError(file, f"{where}.password_file", f"{repo.password_file} is empty")
    return value


def _compose_service_names(env: Environment, config: Config) -> set[str]:
    try:
        data = platforms.for_config(env, config).definition()
    except BackoutError as exc:
        raise ConfigError(config.project.compose_files[0], "",
                          f"docker compose config failed: {exc.message}") from exc
    return set((data.get("services") or {}).keys())
