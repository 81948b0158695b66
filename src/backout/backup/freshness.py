"""How old the newest good backup is, locally and off-site, against the configured
recovery-point objective ([backups] rpo_hours): what `backout status` shows and the
monitor's ``backup_rpo_ratio`` signal (YELLOW above 1).

A good local backup: a published, usable set whose last verification did not fail.
A good off-site copy: a copy that was checked (status ``copied``); its age is the age
of the data it holds (the set's completion time), not of the upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backout.config import Config
from backout.state import Store
from backout.storage import sets

COMPLETED_AT = "%Y-%m-%dT%H:%M:%SZ"
# No good backup at all while an RPO is configured: a breach, with a finite value
# (the signal is JSON, and a rule compares numbers).
NEVER = 1_000_000.0


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, COMPLETED_AT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class Freshness:
    last_backup_at: datetime | None
    last_offsite_at: datetime | None  # None also when no repository is configured
    pending_copies: int
    rpo_hours: float
    repositories: bool  # any [repositories.*] configured
    now: datetime

    def age(self, when: datetime | None) -> float | None:
        return None if when is None else max(0.0, (self.now - when).total_seconds())

    @property
    def rpo_ratio(self) -> float | None:
        """The worst age over the RPO (local and, with repositories, off-site); None
        when no RPO is configured."""
        if self.rpo_hours <= 0:
            return None
        ages = [self.age(self.last_backup_at)]
        if self.repositories:
            ages.append(self.age(self.last_offsite_at))
        if any(a is None for a in ages):
            return NEVER
        return round(max(a for a in ages if a is not None) / (self.rpo_hours * 3600), 4)

    def to_json(self) -> dict[str, Any]:
        ratio = self.rpo_ratio
        return {"last_backup_at": _iso(self.last_backup_at),
                "last_backup_age_seconds": self.age(self.last_backup_at),
                "last_offsite_at": _iso(self.last_offsite_at),
                "last_offsite_age_seconds": self.age(self.last_offsite_at),
                "pending_copies": self.pending_copies, "rpo_hours": self.rpo_hours or None,
                "rpo_breached": None if ratio is None else ratio > 1}


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.strftime(COMPLETED_AT)


def freshness(config: Config, store: Store, now: datetime | None = None) -> Freshness:
    failed = {s for s, v in store.last_verifications().items() if not v["ok"]}
    local = [_parse((i.manifest or {}).get("completed_at"))
             for i in sets.list_sets(config.backup_dir)
             if i.usable and i.id not in failed and (i.manifest or {}).get("kind") != "safety"]
    copies = store.set_copies()
    offsite = [_parse(c.get("completed_at")) for held in copies.values()
               for name, c in held.items()
               if c["status"] == "copied" and name in config.repositories]
    pending = sum(1 for held in copies.values() for name, c in held.items()
                  if c["status"] == "pending" and name in config.repositories)
    return Freshness(max((t for t in local if t), default=None),
                     max((t for t in offsite if t), default=None), pending,
                     config.backups.rpo_hours, bool(config.repositories),
                     now or datetime.now(UTC))
