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
from backout.operations.guard import Unfinished, guard
from backout.state import Store
from backout.storage import sets
from backout.storage.prune import Candidate, PruneDecision, prune

COMPLETED_AT = "%Y-%m-%dT%H:%M:%SZ"  # the manifest's completed_at


@dataclass(frozen=True)
class PruneResult:
    dry_run: bool
    removed: list[str]  # usable sets removed (or, dry run, that would be)
    kept: dict[str, str]  # set id -> why it stays
    partial_sets: list[str] = field(default_factory=list)  # half-written sets of dead runs


def decide(config: Config, store: Store, *, now: datetime | None = None) -> PruneDecision:
    """Which usable sets retention ([backups] keep_last, keep_daily) removes."""
    infos = [i for i in sets.list_sets(config.backup_dir) if i.usable and i.manifest]
    candidates = [Candidate(i.id, datetime.strptime(i.manifest["completed_at"], COMPLETED_AT)
                            .replace(tzinfo=UTC)) for i in infos if i.manifest]
    releases = [r["id"] for r in store.releases(2)]
    protected: dict[str, str] = {}
    for cp in store.checkpoints_of_releases(releases):
        which = "current" if cp.release_id == releases[0] else "previous"
        protected[cp.set_id] = f"checkpoint of the {which} release ({cp.release_id})"
    protected.update({i: "used by an unfinished operation (`backout resume`)"
                      for i in sets.set_ids_in_use(store)})
    return prune(candidates, now=now or datetime.now(UTC), keep_last=config.backups.keep_last,
                 keep_daily=config.backups.keep_daily, protected=protected)


def partial_sets(config: Config, store: Store) -> list[str]:
    """Directories of half-written sets no unfinished operation will continue."""
    return sets.partials(config.backup_dir, keep=sets.set_ids_in_use(store))


def prune_backups(env: Environment, config: Config, store: Store, *, dry_run: bool,
                  now: datetime | None = None) -> PruneResult:
    """Decide, and unless ``dry_run`` remove, under the operation guard (an interrupted
    operation may wait: the sets it uses are protected), with an audit event."""
    decision = decide(config, store, now=now)
    partials = partial_sets(config, store)
    if not dry_run and (decision.remove or partials):
        with guard(env, store, config.state_dir, "backups prune", unfinished=Unfinished.ALLOW):
            for set_id in decision.remove:
                shutil.rmtree(config.backup_dir / set_id)
            # Half-written sets of runs that died (never usable, often large).
            partials = sets.cleanup_partials(config.backup_dir, keep=sets.set_ids_in_use(store))
            store.record_event("backups.prune", target=f"{len(decision.remove)} sets",
                               detail={"removed": decision.remove, "partials": partials})
    return PruneResult(dry_run, decision.remove, decision.keep, partials)
