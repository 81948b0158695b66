"""``backout backups prune``: the retention decision (storage.prune, pure) over the
sets on disk, and applying it under the operation guard.

Never removed: the newest set, the checkpoints of the current and previous release,
and any set an unfinished operation still needs (``backout resume`` would miss it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError
from backout.operations.guard import Unfinished, guard
from backout.state import Store
from backout.storage import sets
from backout.storage.prune import Candidate, PruneDecision, prune
from backout.storage.repositories import open_repository
from backout.storage.repositories.base import RepositoryError

COMPLETED_AT = "%Y-%m-%dT%H:%M:%SZ"  # the manifest's completed_at


@dataclass(frozen=True)
class PruneResult:
    dry_run: bool
    removed: list[str]  # usable sets removed (or, dry run, that would be)
    kept: dict[str, str]  # set id -> why it stays
    partial_sets: list[str] = field(default_factory=list)  # half-written sets of dead runs
    # repository -> the copies retention removes there (same policy, same protection)
    repositories: dict[str, list[str]] = field(default_factory=dict)
    repository_errors: dict[str, BackoutError] = field(default_factory=dict)


def decide(config: Config, store: Store, *, now: datetime | None = None,
           candidates: list[Candidate] | None = None) -> PruneDecision:
    """Which usable sets retention ([backups] keep_last, keep_daily, keep_hourly,
    keep_weekly, keep_monthly, keep_yearly) removes: of the local sets, or of
    ``candidates`` (a repository's copies)."""
    if candidates is None:
        infos = [i for i in sets.list_sets(config.backup_dir) if i.usable and i.manifest]
        candidates = [Candidate(i.id, datetime.strptime(i.manifest["completed_at"],
                                                        COMPLETED_AT).replace(tzinfo=UTC))
                      for i in infos if i.manifest]
    releases = [r["id"] for r in store.releases(2)]
    protected: dict[str, str] = {}
    for cp in store.checkpoints_of_releases(releases):
        which = "current" if cp.release_id == releases[0] else "previous"
        protected[cp.set_id] = f"checkpoint of the {which} release ({cp.release_id})"
    protected.update({i: "used by an unfinished operation (`backout resume`)"
                      for i in sets.set_ids_in_use(store)})
    b = config.backups
    return prune(candidates, now=now or datetime.now(UTC), keep_last=b.keep_last,
                 keep_daily=b.keep_daily, keep_hourly=b.keep_hourly, keep_weekly=b.keep_weekly,
                 keep_monthly=b.keep_monthly, keep_yearly=b.keep_yearly, protected=protected)


def partial_sets(config: Config, store: Store) -> list[str]:
    """Directories of half-written sets no unfinished operation will continue."""
    return sets.partials(config.backup_dir, keep=sets.set_ids_in_use(store))


def prune_backups(env: Environment, config: Config, store: Store, *, dry_run: bool,
                  now: datetime | None = None) -> PruneResult:
    """Decide, and unless ``dry_run`` remove, under the operation guard (an interrupted
    operation may wait: the sets it uses are protected), with an audit event."""
    decision = decide(config, store, now=now)
    partials = partial_sets(config, store)
    remote, remote_errors, found = _repository_decisions(env, config, store, now)
    if not dry_run and (any(remote.values()) or decision.remove or partials):
        with guard(env, store, config.state_dir, "backups prune", unfinished=Unfinished.ALLOW):
            for set_id in decision.remove:
                shutil.rmtree(config.backup_dir / set_id)
            # Half-written sets of runs that died (never usable, often large).
            partials = sets.cleanup_partials(config.backup_dir, keep=sets.set_ids_in_use(store))
            for name, remove in remote.items():
                try:
                    open_repository(env, config, name).forget(
                        [snap for i in remove for snap in found[name][i]])
                except RepositoryError as exc:
                    remote_errors[name] = exc
                    remote[name] = []
                    continue
                for set_id in remove:
                    store.copy_forgotten(set_id, name)
            store.record_event("backups.prune", target=f"{len(decision.remove)} sets",
                               detail={"removed": decision.remove, "partials": partials,
                                       "repositories": remote})
    return PruneResult(dry_run, decision.remove, decision.keep, partials, remote, remote_errors)


def _repository_decisions(env: Environment, config: Config, store: Store,
                          now: datetime | None) -> tuple[dict[str, list[str]],
                                                         dict[str, BackoutError],
                                                         dict[str, dict[str, list[str]]]]:
    """Per repository: the set ids retention removes there, the repositories that could
    not be listed (left alone), and set id -> its snapshots in each."""
    remove: dict[str, list[str]] = {}
    errors: dict[str, BackoutError] = {}
    found: dict[str, dict[str, list[str]]] = {}
    for name in config.repositories:
        try:
            held = open_repository(env, config, name).sets()
        except RepositoryError as exc:
            errors[name] = exc
            continue
        found[name] = {}
        newest: dict[str, Candidate] = {}
        for r in held:  # a set copied twice (a retried copy) counts once, by its set id
            found[name].setdefault(r.set_id, []).append(r.snapshot)
            newest.setdefault(r.set_id, Candidate(r.set_id, r.completed_at))
        remove[name] = decide(config, store, now=now,
                              candidates=list(newest.values())).remove
    return remove, errors, found
