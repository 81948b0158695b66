"""The validated configuration. Built only by ``backout.config.load``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backout.policy.baseline import DEFAULT_EVALUATIONS
from backout.policy.rules import DEFAULT_RULES, Rule, merge_rules

SERVICE_KINDS = ("app", "database", "proxy")
ACCESS_MODES = ("exec", "tcp")
WEBHOOK_FORMATS = ("json", "slack")


@dataclass(frozen=True)
class ProjectConfig:
    compose_files: tuple[str, ...] = ("docker-compose.yml",)
    name: str | None = None  # compose project name; default: compose's own rule
    env_file: str | None = ".env"
    state_dir: str = ".backout"


@dataclass(frozen=True)
class PlatformConfig:
    kind: str = "compose"  # a key of backout.platforms.PLATFORMS
    # Swarm only: the manager's engine (default: the environment's DOCKER_HOST or
    # context), each node's engine by node name (default: the Docker context named
    # after the node), and how long tasks may stay Pending before an update counts as
    # stalled.
    manager: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    stall_seconds: int = 90
    converge_seconds: int = 300


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    kind: str = "app"
    health_url: str | None = None
    health_status: int = 200
    health_body: str | None = None  # a substring the health response must contain
    metrics_url: str | None = None
    writes_to: tuple[str, ...] = ()  # database names this service writes to
    log_error_pattern: str = r"(?i)\b(error|exception|traceback)\b"
    log_error_allowance: int = 0
    # How its container is switched to another image (issue 14): "start-first" or
    # "stop-first"; None: start-first unless the compose file rules it out.
    switch: str | None = None
    ready_timeout_seconds: int | None = None  # None: from the service's healthcheck
    # A readiness probe of a new container before traffic reaches it, e.g.
    # "http://:8080/health" (the container's own address and that port).
    readiness_url: str | None = None
    # For a proxy in front of switched services: "nginx-reload" (static proxy_pass),
    # "nginx-resolver" (re-resolves through a resolver, caching answers for
    # proxy_dns_valid_seconds: waited out only when its reload fails), both reloaded
    # through exec with proxy_reload; "labels" (Traefik: follows the containers itself).
    proxy: str | None = None
    proxy_reload: tuple[str, ...] = ("nginx", "-s", "reload")
    proxy_dns_valid_seconds: int = 5
    # Run in the old container before a start-first switch stops it (e.g. ["touch",
    # "/tmp/drain"], which its healthcheck reads), then wait until the engine reports
    # it unhealthy, at most pre_stop_wait_seconds: a label-driven proxy (Traefik) drops
    # a container at that health event, not when it is told to stop.
    pre_stop: tuple[str, ...] = ()
    pre_stop_wait_seconds: int = 30


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    type: str  # a key of backout.engines.ENGINES
    service: str
    mode: str = "exec"  # exec: client tools inside the container; tcp: local tools
    host: str = "127.0.0.1"
    port: int | None = None
    databases: tuple[str, ...] = ()
    user: str | None = None
    user_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    # Credentials the container itself holds (exec mode): read inside it when needed,
    # never copied into a file. *_container_env names a variable of the container's
    # environment; one ending in _FILE names a file (a Docker secret) holding the
    # value, as the official images read it. password_container_file: a server config
    # file inside the container whose password option the engine reads (redis.conf).
    password_container_env: str | None = None
    password_container_file: str | None = None
    user_container_env: str | None = None


@dataclass(frozen=True)
class VolumeConfig:
    """A named Docker volume backed up as a tar (``[volumes.<name>]``)."""

    name: str
    volume: str  # the volume's key under `volumes:` in the compose file
    service: str | None = None  # the service that mounts it (stopped when stop_service)
    stop_service: bool = False  # stop the service during the tar: a consistent copy
    image: str | None = None  # image with tar for the throwaway container; default: the service's


@dataclass(frozen=True)
class BackupsConfig:
    dir: str = ".backout/backups"
    keep_last: int = 10
    keep_daily: int = 7
    # Calendar retention beyond keep_daily (0: off): the newest set of each of the last
    # N hours / weeks / months / years, locally and in every [repositories.*].
    keep_hourly: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    # Recovery-point objective: a last good backup (or off-site copy) older than this is
    # a YELLOW signal of the monitor and shown by `backout status` (0: not watched).
    rpo_hours: float = 0
    zstd_level: int = 3
    # A dump or restore whose data stops moving this long is stopped (the database or
    # the Docker Engine stopped answering); the plan then undoes what it changed.
    stall_seconds: int = 600
    # A MySQL restore loads the rows of its dump over this many sessions besides the
    # one that runs the schema in order (1: one stream, as `mariadb < dump` does).
    restore_sessions: int = 2


@dataclass(frozen=True)
class RepositoryConfig:
    """An off-site copy of every published set (``[repositories.<name>]``): a restic
    repository. The password comes from a variable or a file, never from backout.toml."""

    name: str
    url: str  # a restic repository: a local path, sftp:host:/path, rest:..., s3:...
    kind: str = "restic"  # a key of backout.storage.repositories.REPOSITORIES
    password_env: str | None = None
    password_file: str | None = None
    ssh_config: str | None = None  # sftp: ssh -F this file (host keys, identity, port)
    timeout_seconds: int = 3600  # one restic command (an upload of a large set) at most

    @property
    def password_key(self) -> str:
        """Where the password is kept in Config.secrets."""
        return f"repository:{self.name}"


@dataclass(frozen=True)
class ReleasesConfig:
    keep_last: int = 10


@dataclass(frozen=True)
class VerifyConfig:
    settle_seconds: int = 10  # watch restart counts this long
    log_window_seconds: int = 300  # how far back logs are searched for errors


@dataclass(frozen=True)
class DeployConfig:
    watch_seconds: int = 600  # watch the new release this long under the policy
    # Free space needed for the pre-deploy checkpoint: the last checkpoint's size
    # times this margin (databases grow; the set is written beside the old ones).
    disk_margin: float = 1.5
    # Roll back with the checkpoint's data too (the release carries a migration that
    # the old code cannot read); `backout deploy --migration` sets it per deploy.
    rollback_with_data: bool = False


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str | None = None
    webhook_format: str = "json"  # json | slack
    command: str | None = None


@dataclass(frozen=True)
class MonitorConfig:
    interval_seconds: int = 5  # one evaluation (and scrape) every this many seconds
    window_seconds: int = 15  # rates, ratios, quantiles: short, so `for:` alone says how long
    # healthy evaluations in a row before a release's baseline is captured
    baseline_evaluations: int = DEFAULT_EVALUATIONS
    use_default_rules: bool = True  # the runbook's matrix (backout.policy.rules.DEFAULT_RULES)
    rules: tuple[Rule, ...] = ()  # [[monitor.rules]]; a rule named like a default replaces it
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    prometheus_url: str | None = None
    commands: tuple[tuple[str, str], ...] = ()  # (signal, command): e.g. user_reports
    promql: tuple[tuple[str, str], ...] = ()  # (signal, query) against prometheus_url

    @property
    def effective_rules(self) -> tuple[Rule, ...]:
        return merge_rules(DEFAULT_RULES if self.use_default_rules else (), self.rules)


@dataclass(frozen=True)
class Config:
    path: Path
    project_dir: Path
    project: ProjectConfig = field(default_factory=ProjectConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)
    volumes: dict[str, VolumeConfig] = field(default_factory=dict)
    repositories: dict[str, RepositoryConfig] = field(default_factory=dict)
    backups: BackupsConfig = field(default_factory=BackupsConfig)
    releases: ReleasesConfig = field(default_factory=ReleasesConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    # Values of the credential variables the config names, read from the .env
    # file or the process environment. Never serialised.
    secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state_dir(self) -> Path:
        return self.project_dir / self.project.state_dir

    @property
    def own_paths(self) -> tuple[str, ...]:
        """backout's state directory and config file: never counted as the operator's
        uncommitted changes, never stashed."""
        return (self.project.state_dir, self.path.name)

    @property
    def backup_dir(self) -> Path:
        return self.project_dir / self.backups.dir
