"""Copies of published sets in ``[repositories.*]``: made after publish, checked, listed,
retried while pending, and fetched back when the local set is gone.

A set is copied only once it is published and its last verification (the checksum
written with it) passed. Each copy is checked before it counts (the repository's own
check, the manifest read back byte for byte, every artifact present with the
manifest's size). A copy that fails stays ``pending`` in the state store and is
retried by the next checkpoint, backup or ``backout backups copy``; the local set is
never touched by a copy.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError, NotFoundError, UsageError, did_you_mean
from backout.operations.executor import Action, RunContext
from backout.operations.plan import Step
from backout.state import Store
from backout.storage import sets
from backout.storage.pipeline import IntegrityError
from backout.storage.repositories import open_repository
from backout.storage.repositories.base import Repository, RepositoryError

COMPLETED_AT = "%Y-%m-%dT%H:%M:%SZ"  # the manifest's completed_at
COPY = "copy"
FETCHING = ".partial-fetch-"  # under the backup directory: removed by cleanup_partials


def copy_step(config: Config, set_id: str, *, soft: bool = False) -> Step:
    """The plan step after publish: copy this set (and every pending one) off-site.
    ``soft``: a failed copy is a warning (a deploy is not stopped by a repository
    outage; the copy stays pending)."""
    names = list(config.repositories)
    return Step(f"copy to {', '.join(names)}", "backup.copy",
                "an off-site, encrypted copy of the set (and of every copy still pending), "
                "checked before it counts; a failed copy stays pending and the local set "
                "stays usable", {"set_id": set_id, "repositories": names, "soft": soft},
                key=COPY)


@dataclass(frozen=True)
class CopyReport:
    copied: dict[str, list[str]]  # repository -> set ids copied and checked
    pending: dict[str, list[str]]  # repository -> set ids still to copy
    errors: dict[str, BackoutError]  # repository -> why its copies stopped

    def to_json(self) -> dict[str, Any]:
        return {"copied": self.copied, "pending": self.pending,
                "errors": {k: v.to_json() for k, v in self.errors.items()}}


def _completed_at(manifest: dict[str, Any] | None) -> str | None:
    return (manifest or {}).get("completed_at")


def copy_sets(env: Environment, config: Config, store: Store, set_ids: list[str],
              repositories: list[str] | None = None, *, backfill: bool = False) -> CopyReport:
    """Copy ``set_ids`` and every pending copy to each repository (all configured when
    None); ``backfill``: also every local set never copied there (a repository added
    to a project that has sets). One repository's failure stops its remaining copies
    (they stay pending) and never the other repositories'."""
    names = [n for n in (repositories if repositories is not None else config.repositories)
             if n in config.repositories]
    failed = {s for s, v in store.last_verifications().items() if not v["ok"]}
    copied: dict[str, list[str]] = {}
    pending: dict[str, list[str]] = {}
    errors: dict[str, BackoutError] = {}
    recorded = store.set_copies(include_forgotten=True)
    for name in names:
        todo: list[sets.SetInfo] = []
        never = [i.id for i in sets.list_sets(config.backup_dir)
                 if backfill and name not in recorded.get(i.id, {})]
        for set_id in dict.fromkeys([*set_ids, *store.pending_copies(name), *reversed(never)]):
            try:
                info = sets.get_set(config.backup_dir, set_id)
            except NotFoundError:
                continue  # gone locally (pruned): nothing left to copy
            if info.usable and info.manifest is not None and set_id not in failed:
                store.copy_pending(set_id, name, _completed_at(info.manifest))
                todo.append(info)
        copied[name], pending[name] = [], []
        repo = open_repository(env, config, name)
        for i, info in enumerate(todo):
            try:
                snapshot = repo.put(info.path, _completed(info.manifest))
                sizes = {n: int(a["bytes"]) for n, a in (info.manifest or {})["artifacts"].items()}
                detail = repo.check(snapshot, info.id, (info.path / sets.MANIFEST).read_bytes(),
                                    sizes)
            except RepositoryError as exc:
                store.copy_pending(info.id, name, _completed_at(info.manifest), error=exc.message)
                pending[name] = [t.id for t in todo[i:]]
                errors[name] = exc
                env.warn(f"{exc.one_line()}; {len(todo) - i} copy(ies) to {name} pending")
                break
            store.copy_done(info.id, name, snapshot=snapshot,
                            completed_at=_completed_at(info.manifest))
            env.log_external(f"copied set {info.id} to repository {name} ({snapshot}): {detail}")
            copied[name].append(info.id)
        if copied[name]:
            _check_repository(env, store, repo, todo, copied, pending, errors)
    return CopyReport(copied, pending, errors)


def _check_repository(env: Environment, store: Store, repo: Repository,
                      todo: list[sets.SetInfo], copied: dict[str, list[str]],
                      pending: dict[str, list[str]], errors: dict[str, BackoutError]) -> None:
    """The repository's own check, once after this run's copies: until it passes, they
    do not count (pending again)."""
    try:
        env.log_external(f"repository {repo.name}: {repo.check_repository()}")
    except RepositoryError as exc:
        for info in todo:
            if info.id in copied[repo.name]:
                store.copy_pending(info.id, repo.name, _completed_at(info.manifest),
                                   error=exc.message)
        pending[repo.name] = [*copied[repo.name], *pending[repo.name]]
        copied[repo.name] = []
        errors.setdefault(repo.name, exc)
        env.warn(f"{exc.one_line()}; the copies to {repo.name} are pending")


def _completed(manifest: dict[str, Any] | None) -> datetime:
    stamp = _completed_at(manifest)
    if stamp is None:
        return datetime.now(UTC)
    return datetime.strptime(stamp, COMPLETED_AT).replace(tzinfo=UTC)


def copy_now(env: Environment, config: Config, store: Store, set_ids: list[str],
             repositories: list[str] | None) -> CopyReport:
    """``backout backups copy``: the named sets and every pending copy, under the
    operation guard (a copy never changes a local set; an interrupted operation may
    wait). Raises the first repository's error after all were tried."""
    from backout.operations.guard import Unfinished, guard

    if not config.repositories:
        raise UsageError("no [repositories.*] in backout.toml: nowhere to copy to",
                         fix="add a [repositories.<name>] section with url and password_env "
                             "or password_file (see README, Off-site copies)")
    unknown = [r for r in repositories or [] if r not in config.repositories]
    if unknown:
        raise NotFoundError(f'no repository "{unknown[0]}" in backout.toml'
                            + did_you_mean(unknown[0], config.repositories),
                            fix=f"configured: {', '.join(config.repositories)}")
    for set_id in set_ids:
        sets.get_set(config.backup_dir, set_id)  # NotFoundError names it
    with guard(env, store, config.state_dir, "backups copy", unfinished=Unfinished.ALLOW):
        report = copy_sets(env, config, store, set_ids, repositories, backfill=not set_ids)
        store.record_event("backups.copy", target=", ".join(report.copied) or None,
                           detail=report.to_json())
    return report


def _copy(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    report = copy_sets(ctx.env, ctx.config, ctx.store, [params["set_id"]],
                       params["repositories"])
    if report.errors and not params.get("soft"):
        name, first = next(iter(report.errors.items()))
        first.message = (f"backup set {params['set_id']} is published and usable locally, but "
                         f"its copy to {name} failed and is pending: {first.message}")
        raise first
    return report.to_json()


# -- finding a set that is not (or no longer) local ---------------------------

@dataclass(frozen=True)
class RemoteCopy:
    repository: str
    snapshot: str


def find_copy(env: Environment, config: Config, store: Store, set_id: str) -> RemoteCopy | None:
    """A checked copy of ``set_id`` in a configured repository: the state store's record
    first; without one (the disk with the state was lost too), each repository's list."""
    for name, copy in store.set_copies().get(set_id, {}).items():
        if copy["status"] == "copied" and name in config.repositories:
            return RemoteCopy(name, copy["snapshot"])
    if "/" in set_id or not set_id:
        return None
    for name in config.repositories:
        try:
            held = open_repository(env, config, name).sets()
        except RepositoryError as exc:
            env.warn(f"{exc.one_line()} (looking for set {set_id})")
            continue
        for remote in held:
            if remote.set_id == set_id:
                return RemoteCopy(name, remote.snapshot)
    return None


def remote_manifest(env: Environment, config: Config, copy: RemoteCopy,
                    set_id: str) -> dict[str, Any]:
    """The manifest of a copy, read back (no artifact is fetched)."""
    repo = open_repository(env, config, copy.repository)
    raw = repo.read_file(copy.snapshot, set_id, sets.MANIFEST)
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"backup {set_id} in repository {copy.repository}: unreadable "
                             f"manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != sets.FORMAT:
        raise IntegrityError(f"backup {set_id} in repository {copy.repository}: not a backout "
                             "backup manifest")
    return manifest


def fetch_step(set_id: str, copy: RemoteCopy) -> Step:
    return Step(f"fetch set {set_id} from {copy.repository}", "backup.fetch",
                "the set is not in the local backup directory: bring its copy back; every "
                "artifact is then checked against the manifest before anything changes",
                {"set_id": set_id, "repository": copy.repository, "snapshot": copy.snapshot},
                key=f"fetch:{set_id}")


def fetch_set(env: Environment, config: Config, set_id: str, copy: RemoteCopy,
              root: Path) -> sets.SetInfo:
    """The copy brought back and published as ``root/<set_id>`` (sizes checked against its
    manifest; checksums are the caller's verify step)."""
    final = root / set_id
    if final.is_dir():
        info = sets.get_set(root, set_id)
        if info.usable:
            return info
        shutil.rmtree(final)
    staging = root / f"{FETCHING}{set_id}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fetched = open_repository(env, config, copy.repository).fetch(copy.snapshot, set_id,
                                                                     staging)
        sets.read_manifest(fetched)
        os.replace(fetched, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    env.log_external(f"fetched set {set_id} from repository {copy.repository}")
    return sets.get_set(root, set_id)


def _fetch(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    copy = RemoteCopy(params["repository"], params["snapshot"])
    local = (ctx.config.backup_dir / params["set_id"]).is_dir()
    info = fetch_set(ctx.env, ctx.config, params["set_id"], copy, ctx.config.backup_dir)
    return {"set_id": info.id, "path": str(info.path), "fetched": not local,
            "repository": copy.repository}


def set_manifest(env: Environment, config: Config, store: Store,
                 set_id: str) -> tuple[dict[str, Any], RemoteCopy | None]:
    """The manifest of a set, local or (when the local one is gone) of its copy, and the
    copy to fetch (None: local)."""
    if (config.backup_dir / set_id).is_dir():
        info = sets.get_set(config.backup_dir, set_id)
        if not info.usable or info.manifest is None:
            raise IntegrityError(f"backup {set_id} is not usable: {info.problem}")
        return info.manifest, None
    copy = find_copy(env, config, store, set_id)
    if copy is None:
        raise NotFoundError(f'no backup "{set_id}" locally or in any repository',
                            fix="list them with `backout backups list`")
    return remote_manifest(env, config, copy, set_id), copy


def is_known_set(env: Environment, config: Config, store: Store, ref: str) -> bool:
    """A set id that is local, or recorded as copied to a configured repository."""
    if "/" in ref or not ref:
        return False
    if (config.backup_dir / ref).is_dir():
        return True
    return any(c["status"] == "copied" and n in config.repositories
               for n, c in store.set_copies().get(ref, {}).items())


@contextmanager
def readable_set(env: Environment, config: Config, store: Store,
                 set_id: str) -> Iterator[sets.SetInfo]:
    """The local set, or its copy fetched into a throwaway directory for the time of the
    block (`backups verify`): a verification never republishes a set."""
    if (config.backup_dir / set_id).is_dir() or not config.repositories:
        yield sets.get_set(config.backup_dir, set_id)
        return
    copy = find_copy(env, config, store, set_id)
    if copy is None:
        yield sets.get_set(config.backup_dir, set_id)  # raises NotFoundError
        return
    scratch = config.state_dir / "staging" / f"verify-{set_id}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        yield fetch_set(env, config, set_id, copy, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "backup.copy": _copy,
    "backup.fetch": _fetch,
}
