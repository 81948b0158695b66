"""Calendar specs for ``backout schedule``: a small subset of systemd's ``OnCalendar``
(the same words a timer unit uses), plus plain intervals. Pure: no clock is read.

    minutely | hourly | daily | weekly | monthly     systemd's shorthands (UTC)
    HH:MM                                            every day at that time
    Mon..Fri 02:30 / Sat,Sun 04:00                   on those weekdays
    *:0/15   /   0/6:00   /   *:05                   hour:minute with *, lists, start/step
    every 15m / every 6h / every 1d                  a fixed interval from the last start

Times are UTC (a server's backups should not move with daylight saving time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SHORTHANDS = {"minutely": "*:*", "hourly": "*:00", "daily": "00:00", "weekly": "Mon 00:00"}
_EVERY = re.compile(r"every\s+(\d+)\s*(m|min|h|d)", re.I)


class CalendarError(ValueError):
    pass


@dataclass(frozen=True)
class Calendar:
    spec: str
    weekdays: frozenset[int] = frozenset(range(7))  # 0 = Monday
    hours: frozenset[int] = frozenset(range(24))
    minutes: frozenset[int] = frozenset({0})
    month_day: int | None = None  # monthly: the 1st
    interval: timedelta | None = None  # "every N": from the previous start

    def next_after(self, t: datetime) -> datetime:
        """The first time strictly after ``t`` (aware or naive, kept as given)."""
        if self.interval is not None:
            return t + self.interval
        start = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for offset in range(0, 400):
            d = day + timedelta(days=offset)
            if d.weekday() not in self.weekdays or (self.month_day and d.day != self.month_day):
                continue
            for h in sorted(self.hours):
                for m in sorted(self.minutes):
                    at = d.replace(hour=h, minute=m)
                    if at >= start:
                        return at
        raise CalendarError(f"{self.spec!r} never fires")  # pragma: no cover (every spec fires)


def _field(text: str, top: int, what: str) -> frozenset[int]:
    """``*``, ``5``, ``1,2``, ``*/15``, ``0/15`` -> the values in 0..top-1."""
    out: set[int] = set()
    for part in text.split(","):
        base, _, step = part.partition("/")
        try:
            first = 0 if base == "*" else int(base)
            every = int(step) if step else (1 if base == "*" else 0)
        except ValueError:
            raise CalendarError(f"{what} {part!r} is not a number, *, or N/STEP") from None
        if not 0 <= first < top or every < 0:
            raise CalendarError(f"{what} {part!r} is out of range 0..{top - 1}")
        out.update(range(first, top, every) if every else {first})
    return frozenset(out)


def _weekdays(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.lower().split(","):
        lo, _, hi = part.partition("..")
        try:
            a = DAYS.index(lo[:3])
            b = DAYS.index(hi[:3]) if hi else a
        except ValueError:
            raise CalendarError(f"weekday {part!r}: use Mon, Tue, ... or Mon..Fri") from None
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


def parse(spec: str) -> Calendar:
    text = " ".join(spec.split())
    every = _EVERY.fullmatch(text)
    if every:
        n, unit = int(every.group(1)), every.group(2).lower()
        if n <= 0:
            raise CalendarError("every: the interval must be at least 1")
        delta = {"m": timedelta(minutes=n), "min": timedelta(minutes=n),
                 "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
        return Calendar(spec, interval=delta)
    if text.lower() == "monthly":
        return Calendar(spec, hours=frozenset({0}), month_day=1)
    text = SHORTHANDS.get(text.lower(), text)
    parts = text.split(" ")
    if len(parts) > 2 or not parts[-1]:
        raise CalendarError(f"{spec!r}: expected [WEEKDAYS] HH:MM, a shorthand (hourly, "
                            "daily, weekly, monthly) or `every N{m,h,d}`")
    weekdays = _weekdays(parts[0]) if len(parts) == 2 else frozenset(range(7))
    hour, sep, minute = parts[-1].partition(":")
    if not sep:
        raise CalendarError(f"{spec!r}: the time needs HH:MM (e.g. 02:30, *:0/15)")
    return Calendar(spec, weekdays, _field(hour, 24, "hour"), _field(minute, 60, "minute"))
