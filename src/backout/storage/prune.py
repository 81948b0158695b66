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


def _hour(t: datetime) -> int:
    return t.toordinal() * 24 + t.hour


def _week(t: datetime) -> int:
    return (t.toordinal() - t.weekday()) // 7  # weeks start on Monday (ISO)


def _month(t: datetime) -> int:
    return t.year * 12 + t.month - 1


def _year(t: datetime) -> int:
    return t.year


def _label(period: str, t: datetime) -> str:
    if period == "hourly":
        return t.strftime("%Y-%m-%d %H:00")
    if period == "weekly":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "monthly":
        return t.strftime("%Y-%m")
    return str(t.year)


CALENDAR = (("hourly", _hour), ("weekly", _week), ("monthly", _month), ("yearly", _year))


def prune(candidates: Iterable[Candidate], *, now: datetime, keep_last: int, keep_daily: int,
          protected: dict[str, str], keep_hourly: int = 0, keep_weekly: int = 0,
          keep_monthly: int = 0, keep_yearly: int = 0) -> PruneDecision:
    """Decide which usable sets to keep.

    Kept: the ``keep_last`` newest; the newest of each of the last ``keep_daily``
    days (and likewise of the last ``keep_hourly`` hours, ``keep_weekly`` ISO weeks,
    ``keep_monthly`` months, ``keep_yearly`` years, counted back from ``now``); always
    the newest set; every id in ``protected`` (e.g. referenced by the current or
    previous release), with the reason given there. The same decision is applied to
    the local sets and to each repository's copies.
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
    counts = {"hourly": keep_hourly, "weekly": keep_weekly, "monthly": keep_monthly,
              "yearly": keep_yearly}
    for period, bucket in CALENDAR:
        n = counts[period]
        if n <= 0:
            continue
        first = bucket(now) - n + 1
        seen: set[int] = set()
        for c in ordered:
            b = bucket(c.completed_at)
            if first <= b <= bucket(now) and b not in seen:
                seen.add(b)
                keep.setdefault(c.id, f"newest of {_label(period, c.completed_at)} "
                                      f"(keep_{period}={n})")
    for cid, why in protected.items():
        if any(c.id == cid for c in ordered):
            keep[cid] = why
    remove = [c.id for c in ordered if c.id not in keep]
    return PruneDecision(keep, remove)
