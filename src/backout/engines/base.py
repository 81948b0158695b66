"""What a database engine is to backout: the ``Engine`` protocol each module of
``backout.engines`` implements (one ``ENGINE`` object per type, found through the
table in ``backout.engines``), the context its operations run in, and the parts
every engine shares (the manifest's artifact entry, throwaway containers for a
trial restore, count differences).

Callers (backup, rollback, verify, monitor probes, init, doctor) use only this
interface; nothing outside ``backout.engines`` compares a database type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from backout import proc
from backout.config import Config, DatabaseConfig
from backout.engines.access import EngineAccess
from backout.engines.images import matches, named_like, parse_image, programs_in
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError
from backout.platforms.base import Platform
from backout.storage.pipeline import Checker, Scanned

# One credential source of an official image, in order of preference:
# (fixed user or None, password variables, user variables or None).
Credential = tuple[str | None, tuple[str, ...], tuple[str, ...] | None]


@dataclass
class EngineContext:
    env: Environment
    config: Config
    platform: Platform
    # A safety backup before a restore: the data may be damaged (a dropped table
    # under a view, a dropped database) and the dump must still take what exists,
    # recording what it could not take, rather than block the restore.
    safety: bool = False


@dataclass(frozen=True)
class TrialTarget:
    """A trial restore's throwaway database: its image, a fresh password (already
    redacted), and the config/database entry pointed at it. Containers it starts go
    into ``holder``; the caller removes them whatever happens."""
    env: Environment
    config: Config
    db: DatabaseConfig
    platform: Platform
    image: str
    password: str
    holder: list[str]


class Engine(Protocol):
    type: str  # the key in the table, databases.<name>.type
    description: str  # "a MySQL dump": what a file of this type is, in messages
    count_unit: str  # what its counts count ("rows"), for the data-loss window
    # init: image (or service) name fragments, credential variables, database-name variables
    image_patterns: tuple[str, ...]
    # init: the images (repositories, repository prefixes) and server programs of this
    # engine, and the config file option naming a password (redis: requirepass)
    image_repositories: tuple[str, ...]
    image_prefixes: tuple[str, ...]
    server_programs: tuple[str, ...]
    credentials: tuple[Credential, ...]
    limited_user_note: str  # init's note when the credentials are not the superuser's
    database_name_vars: tuple[str, ...]
    # a restore restarts the service (plan wording of the downtime)
    restarts_on_restore: bool

    def recognise(self, image: str, found: Sequence[str] = ()) -> str | None: ...
    def init_notes(self, spec: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]: ...
    def password_in_file(self, text: str) -> str | None: ...
    def init_credentials(self, spec: Mapping[str, Any], raw_spec: Mapping[str, Any] | None,
                         env_values: Mapping[str, str]
                         ) -> tuple[dict[str, str], list[str], list[str]] | None: ...
    def artifact_name(self, db: DatabaseConfig) -> str: ...
    def dump(self, ctx: EngineContext, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]: ...
    def prepare_artifact(self, artifact: Path, staging: Path) -> Path: ...
    def checker(self, section: Mapping[str, Any], what: str) -> Checker: ...
    def sniff(self, head: bytes, path: Path) -> int: ...
    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]: ...
    def expected_counts(self, section: Mapping[str, Any]) -> Any: ...
    def scanned_counts(self, section: Mapping[str, Any],
                       checks: Mapping[str, Any]) -> tuple[Any, Any]: ...
    def counts_match(self, section: Mapping[str, Any], counts: Any) -> bool: ...
    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]: ...
    def trial_restore(self, target: TrialTarget, artifact: Path,
                      section: dict[str, Any]) -> dict[str, Any]: ...
    def probe(self, access: EngineAccess) -> str: ...
    def answer(self, access: EngineAccess) -> str: ...
    def load_driver(self) -> None: ...
    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the live data has that ``section``'s backup has not. ``current``: the
        section of a backup of the same server taken since with nothing writing (the
        restore's safety backup): an engine may read the live data's counts and
        position from it instead of asking the server (a count is a scan of every
        table); it asks the server whatever ``current`` cannot tell."""
        ...
    def overwritten(self, db: DatabaseConfig) -> str: ...


class EngineBase:
    """What most engines share; each module's engine derives from it and says the rest."""
    suffix = ".zst"  # of the artifact, after the database's name
    restarts_on_restore = False
    database_name_vars: tuple[str, ...] = ()
    image_patterns: tuple[str, ...] = ()
    image_repositories: tuple[str, ...] = ()
    image_prefixes: tuple[str, ...] = ()
    server_programs: tuple[str, ...] = ()
    # What init notes when the only credentials are an application user's, not root's.
    limited_user_note = "check that it can read everything it dumps"

    def recognise(self, image: str, found: Sequence[str] = ()) -> str | None:
        """How ``image`` (any registry, any tag) is this engine's, or None. ``found``:
        the server programs seen in its container or image (``mariadbd``), the
        evidence when the name says nothing; that answer says it is a guess."""
        ref = parse_image(image)
        repositories = self.image_repositories or self.image_patterns
        if image and matches(ref, repositories, self.image_prefixes):
            return f"image {ref.repository}"
        program = programs_in(found, self.server_programs)
        if program:
            return f"guessed: the container runs or has {program}"
        if image and named_like(ref, repositories):
            return f"image {ref.repository} (named after {named_like(ref, repositories)})"
        return None

    def artifact_name(self, db: DatabaseConfig) -> str:
        return f"{db.name}{self.suffix}"

    def init_credentials(self, spec: Mapping[str, Any], raw_spec: Mapping[str, Any] | None,
                         env_values: Mapping[str, str]
                         ) -> tuple[dict[str, str], list[str], list[str]] | None:
        """Credentials init finds beyond the image's variables (``credentials``): the
        config fields, notes and warnings; None when there is nothing more to find."""
        return None

    def password_in_file(self, text: str) -> str | None:
        """The password in a file of the container (``password_container_file``): by
        default the whole file, as a Docker secret holds it."""
        return text.rstrip("\n") or None

    def prepare_artifact(self, artifact: Path, staging: Path) -> Path:
        """What a restore reads, from what the operator named (a file as it is)."""
        return artifact

    def init_notes(self, spec: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]:
        return []

    def scanned_counts(self, section: Mapping[str, Any],
                       checks: Mapping[str, Any]) -> tuple[Any, Any]:
        return section.get("databases"), checks.get("databases")

    def probe(self, access: EngineAccess) -> str:
        raise NotImplementedError

    def answer(self, access: EngineAccess) -> str:
        return f"version {self.probe(access)}"

    def load_driver(self) -> None:
        """Import the Python driver the engine talks through (engines that run the
        server's own tools have none)."""


def dumpable_databases(ctx: EngineContext, db: DatabaseConfig, present: Sequence[str]
                       ) -> tuple[list[str], list[str]]:
    """The databases a dump takes (configured, or every one ``present``) and those
    configured that are not ``present``: an error in a backup asked for, recorded
    as absent in a safety backup (a DROP DATABASE is what it must be able to undo)."""
    wanted = list(db.databases) or list(present)
    absent = [d for d in wanted if d not in present]
    if absent and not ctx.safety:
        raise NotFoundError(f"{db.name}: database(s) {', '.join(absent)} do not exist on the server",
                            fix=f"correct databases.{db.name}.databases in backout.toml")
    return [d for d in wanted if d in present], absent


def running_image_id(ctx: EngineContext, service: str) -> str | None:
    containers = [c for c in ctx.platform.containers(service) if c.state == "running"]
    return containers[0].image_id if containers else None


def artifact_entry(name: str, fmt: str, scanned: Scanned, db_name: str) -> dict[str, Any]:
    return {"name": name, "format": fmt, "sha256": scanned.sha256,
            "bytes": scanned.bytes, "raw_bytes": scanned.raw_bytes, "database": db_name}


# --- throwaway containers of a trial restore (``backups verify --restore-test``)

LABEL = "io.backout.restore-test"


def docker(env: Environment, *args: str, timeout: float = 120, check: bool = True,
           secret_env: dict[str, str] | None = None) -> proc.Result:
    return proc.run(env, ["docker", *args], timeout=timeout, check=check, secret_env=secret_env,
                    what=f"docker {args[0]}")


def wait_ready(check: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ExternalError as exc:
            last = exc.message
        time.sleep(1)
    raise ExternalError(f"restore test: {what} did not become ready in {timeout:.0f}s {last}")


def run_throwaway(env: Environment, image: str, flags: list[str],
                  secret_env: dict[str, str]) -> str:
    result = docker(env, "run", "-d", "--label", f"{LABEL}=1", *flags, image,
                    secret_env=secret_env, timeout=120)
    return result.stdout.strip()


def remove_leftovers(env: Environment) -> None:
    ids = docker(env, "ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if ids:
        docker(env, "rm", "-f", "-v", *ids, check=False)


def count_deltas(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
                 ) -> dict[str, int]:
    """``{"db.table": now - then}`` for every table whose count differs."""
    out = {}
    for group in sorted(set(before) | set(after)):
        b, a = before.get(group, {}), after.get(group, {})
        for name in sorted(set(b) | set(a)):
            diff = a.get(name, 0) - b.get(name, 0)
            if diff:
                out[f"{group}.{name}"] = diff
    return out
