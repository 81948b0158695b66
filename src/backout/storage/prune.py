"""Retention as a pure function (as BorgBackup's ``prune``): sets in, a decision out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Candidate:
    id: str
    completed_at: datetime


@dataclass(frozen=True)
class PruneDecision:
    keep: dict[str, str]  # id -> why kept
    remove: list[str]


def prune(candidates: Iterable[Candidate], *, now: datetime, keep_last: int, keep_daily: int,
          protected: dict[str, str]) -> PruneDecision:
    """Decide which usable sets to keep.

    Kept: the ``keep_last`` newest; the newest of each of the last ``keep_daily``
    days; always the newest set; every id in ``protected`` (e.g. referenced by the
    current or previous release), with the reason given there.
    """
    ordered = sorted(candidates, key=lambda c: (c.completed_at, c.id), reverse=True)
    keep: dict[str, str] = {}
    if ordered:
        keep[ordered[0].id] = "newest set"
    for c in ordered[:keep_last]:
        keep.setdefault(c.id, f"among the {keep_last} newest")
    if keep_daily > 0:
        horizon = (now - timedelta(days=keep_daily - 1)).date()
        seen_days: set[object] = set()
        for c in ordered:
            day = c.completed_at.date()
            if day >= horizon and day not in seen_days:
                seen_days.add(day)
                keep.setdefault(c.id, f"newest of {day.isoformat()} (keep_daily={keep_daily})")
    for cid, why in protected.items():
        if any(c.id == cid for c in ordered):
            keep[cid] = why
    remove = [c.id for c in ordered if c.id not in keep]
    return PruneDecision(keep, remove)
