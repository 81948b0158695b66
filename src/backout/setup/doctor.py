"""``backout doctor``: what the next rollback will need, checked before it is needed.

One line per check, each failure with its fix: the Docker Engine and Compose v2
answer (and are recent enough), backout.toml is valid, the project is in git (an
emergency rollback switches commits), zstd is there (every backup and restore
streams through it), the backup disk has room for a checkpoint, every configured
database answers with the configured credentials, the images of the current and
previous release are still on this host, the operation lock is free and no
interrupted operation waits for ``backout resume``.

Read-only: nothing is started, written or taken (not even the lock; a project
without a state store yet is checked without making one). The sources
of facts are one small object so tests can give fakes and one real run proves it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backout.config import Config, DatabaseConfig
from backout.environment import Environment
from backout.errors import BackoutError
from backout.state import OperationLock, Store
from backout.verify import CheckReport

# Older engines and Compose v2 releases lack what backout uses (`up --wait`, health
# status in `ps`, `config --format json`).
MIN_ENGINE = (20, 10)
MIN_COMPOSE = (2, 17)
RELEASES_CHECKED = 2  # the current release and the one a rollback goes back to


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


class DoctorReport(CheckReport[Check]):
    def add(self, name: str, ok: bool, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, ok, detail, None if ok else fix))


@dataclass
class Sources:
    """Where the facts come from. Each callable raises ``BackoutError`` when it cannot
    tell (the engine is down, a password is wrong)."""

    engine_version: Callable[[], str]
    compose_version: Callable[[], str]
    git_repository: Callable[[Path], bool]
    which: Callable[[str], str | None]
    disk_free: Callable[[Path], Any]  # shutil.disk_usage's shape
    database_version: Callable[[DatabaseConfig], str]
    image_present: Callable[[str], bool]


def real_sources(env: Environment, config: Config | None) -> Sources:
    from backout import proc
    from backout.adapters.docker import Docker
    from backout.adapters.git import Git

    docker = Docker(env)

    def compose_version() -> str:
        result = proc.run(env, ["docker", "compose", "version", "--short"], timeout=30,
                          check=False, what="docker compose version")
        if not result.ok or not result.stdout.strip():
            raise BackoutError(f"Docker Compose v2 does not answer: "
                               f"{proc.last_line(result.stderr) or 'not installed'}")
        return result.stdout.strip()

    def database_version(db: DatabaseConfig) -> str:
        assert config is not None
        return _database_version(env, config, db)

    return Sources(
        engine_version=docker.ping,
        compose_version=compose_version,
        git_repository=lambda path: Git(env, path).is_repo(),
        which=shutil.which,
        disk_free=shutil.disk_usage,
        database_version=database_version,
        image_present=lambda image: docker.inspect_image(image) is not None,
    )


def _database_version(env: Environment, config: Config, db: DatabaseConfig) -> str:
    """Connect as a backup or restore would (same access mode, same credentials)."""
    from backout import engines, platforms
    from backout.engines.access import EngineAccess
    access = EngineAccess(env, config, db, platforms.for_config(env, config))
    return engines.get(db.type).probe(access)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.lstrip("v").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(parts) == 2:
            break
    return tuple(parts)


def run_doctor(env: Environment, config: Config | None, config_error: BackoutError | None,
               store: Store | None, sources: Sources) -> DoctorReport:
    """Every check, in the order an operator would fix them. ``config`` is None when
    backout.toml did not load (``config_error`` says why): the checks that need it
    are reported as not run, the others still run."""
    report = DoctorReport()
    engine_ok = _engine(report, sources)
    _compose(report, sources)
    if config is None:
        error = config_error or BackoutError("backout.toml did not load")
        report.add("config", False, error.message,
                   error.fix or "fix backout.toml (`backout config check`)")
        return report
    report.add("config", True, f"{config.path} is valid")
    in_git = sources.git_repository(config.project_dir)
    report.add("git repository", in_git,
               f"{config.project_dir}" if in_git else
               f"{config.project_dir} is not a git repository: an emergency rollback or a "
               "deploy cannot switch the code",
               "keep the compose project in git (git init && git add -A && git commit)")
    zstd = sources.which("zstd")
    report.add("zstd", zstd is not None, zstd or "zstd is not installed: no backup or restore "
               "can run", "install it (apt-get install zstd)")
    _disk(report, config, store, sources)
    for db in config.databases.values():
        _database(report, db, sources, engine_ok)
    _images(report, store.releases(RELEASES_CHECKED) if store else [], sources, engine_ok)
    _lock_and_interrupted(report, config, store)
    return report


def _engine(report: DoctorReport, sources: Sources) -> bool:
    try:
        version = sources.engine_version()
    except BackoutError as exc:
        report.add("docker engine", False, exc.message,
                   exc.fix or "start the Docker Engine (systemctl start docker, or dockerd)")
        return False
    recent = _version_tuple(version) >= MIN_ENGINE
    report.add("docker engine", recent, f"{version}" if recent else
               f"{version} is older than {'.'.join(map(str, MIN_ENGINE))}",
               "upgrade the Docker Engine")
    return True


def _compose(report: DoctorReport, sources: Sources) -> None:
    try:
        version = sources.compose_version()
    except BackoutError as exc:
        report.add("docker compose", False, exc.message,
                   "install Docker Compose v2 (the docker-compose-plugin package, or "
                   "`bash scripts/setup.sh` on Debian/Ubuntu)")
        return
    parsed = _version_tuple(version)
    recent = parsed >= MIN_COMPOSE
    report.add("docker compose", recent, f"v{version.lstrip('v')}" if recent else
               f"{version} is older than v{'.'.join(map(str, MIN_COMPOSE))}",
               "install a current Docker Compose v2 plugin")


def _disk(report: DoctorReport, config: Config, store: Store | None, sources: Sources) -> None:
    from backout.deploy.preflight import Room, checkpoint_room, existing_parent

    if not config.databases:
        report.add("disk room", True, "no databases configured: checkpoints hold no dumps")
        return
    if store is None:  # no store yet: no checkpoint to estimate from
        where = existing_parent(config.backup_dir)
        room = Room(where, int(sources.disk_free(where).free), None, None)
    else:
        room = checkpoint_room(config, store, sources.disk_free)
    error = None if room.ok else room.error(config.deploy.disk_margin)
    report.add("disk room", room.ok, room.detail() if error is None else error.message,
               error.fix if error else None)


def _database(report: DoctorReport, db: DatabaseConfig, sources: Sources,
              engine_ok: bool) -> None:
    name = f"database {db.name}"
    if not engine_ok and db.mode == "exec":
        report.add(name, False, "not checked: the Docker Engine does not answer",
                   "start the engine first")
        return
    try:
        version = sources.database_version(db)
    except BackoutError as exc:
        report.add(name, False, exc.message,
                   exc.fix or f"start it (docker compose up -d {db.service}) and check "
                              f"databases.{db.name} in backout.toml")
        return
    report.add(name, True, f"{db.type} {version} answers ({db.mode} mode, configured "
                           "credentials)")


def _images(report: DoctorReport, releases: list[dict[str, Any]], sources: Sources,
            engine_ok: bool) -> None:
    if not releases:
        report.add("retained images", False, "no release recorded: a rollback has nothing to "
                   "go back to", "record what runs now: `backout release record` (a backout "
                   "deploy records every release by itself)")
        return
    if not engine_ok:
        report.add("retained images", False, "not checked: the Docker Engine does not answer",
                   "start the engine first")
        return
    missing = [f"release {r['id']}: {svc}"
               for r in releases
               for svc, info in sorted(r["services"].items())
               if not sources.image_present(info["image_id"])]
    ids = ", ".join(str(r["id"]) for r in releases)
    report.add("retained images", not missing,
               f"every image of release{'s' if len(releases) > 1 else ''} {ids} is on this host"
               if not missing else f"gone from this host: {'; '.join(missing)}",
               "a rollback to that release would have to rebuild them: record a release "
               "of what runs now (`backout release record`) and keep images out of "
               "`docker image prune -a`")


def _lock_and_interrupted(report: DoctorReport, config: Config, store: Store | None) -> None:
    holder = OperationLock(config.state_dir).holder()
    report.add("lock", holder is None,
               "free" if holder is None else f"held by {holder.describe()}",
               "wait for it to finish (`backout status`); a holder that died is taken over "
               "by the next command")
    pending = store.unfinished_operations() if holder is None and store is not None else []
    report.add("interrupted operation", not pending,
               "none" if not pending else
               f"operation #{pending[-1]['id']} ({pending[-1]['kind']}) did not finish",
               "run `backout resume` (it finishes or undoes it)")
