"""Scraped samples over a time window, and the PromQL functions that make signals of them.

The policy needs numbers such as "the share of 5xx responses over the last
minute" or "P95 latency", but a ``/metrics`` page only holds ever-growing
counters and cumulative histogram buckets. Without a Prometheus server in
between, the monitor has to keep recent scrapes itself and compute what
PromQL would: ``rate`` (with Prometheus' counter-reset handling and
extrapolation to the window's edges, so values agree with a team's existing
dashboards), a ratio of two summed rates, ``histogram_quantile`` from bucket
increases over the window, and the latest value of a gauge.

Nothing here reads a clock: every function takes the evaluation time
(``end``) explicitly, so the same code serves live monitoring and tests.
Scrapes are stamped with the time the monitor took them; timestamps in the
exposition are ignored. Points are kept ``retention_seconds`` (at least the
longest window plus one scrape interval).

Every function returns ``None`` where PromQL would return nothing or NaN (too
few points, no matching series, no traffic): the policy then applies the
rule's explicit no-data handling instead of guessing.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from backout.policy.promtext import Labels, Sample, parse_value

SeriesKey = tuple[str, Labels]  # metric name, labels
# A restarted counter's zero goes this long after the scrape before the restart: inside
# a window cut there (windows are left-open), after that scrape's own point.
RESTART_ZERO_AFTER = 0.001
PROCESS_START = "process_start_time_seconds"  # Prometheus clients' standard gauge
Aggregate = Literal["sum", "max", "min", "avg"]

_MATCHER_OPS = ("=~", "!~", "!=", "=")
_SELECTOR = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*", re.DOTALL)
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


@dataclass(frozen=True)
class Point:
    t: float
    value: float


@dataclass(frozen=True)
class Matcher:
    """One label matcher, as in PromQL: ``=``, ``!=``, ``=~`` and ``!~`` (anchored regex)."""

    label: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op not in _MATCHER_OPS:
            raise ValueError(f"unknown matcher operator {self.op!r}")
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.value!r}: {exc}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")  # as in PromQL, a missing label is ""
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    """A PromQL instant-vector selector: ``name{label="v", status=~"5.."}``."""

    name: str
    matchers: tuple[Matcher, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        match = _SELECTOR.fullmatch(text)
        if not match:
            raise ValueError(f"invalid selector {text!r}: expected name{{label=\"value\",...}}")
        name, body = match.group(1), match.group(2)
        return cls(name, _parse_matchers(body or "", text))

    def matches(self, name: str, labels: Labels) -> bool:
        if name != self.name:
            return False
        as_dict = dict(labels)
        return all(m.matches(as_dict) for m in self.matchers)

    def __str__(self) -> str:
        if not self.matchers:
            return self.name
        inner = ",".join(f'{m.label}{m.op}"{_escape(m.value)}"' for m in self.matchers)
        return f"{self.name}{{{inner}}}"


def _parse_matchers(body: str, text: str) -> tuple[Matcher, ...]:
    matchers: list[Matcher] = []
    for part in _split_matchers(body):
        match = _MATCHER.fullmatch(part)
        if not match:
            raise ValueError(f"invalid selector {text!r}: cannot read {part.strip()!r}")
        value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1),
                       match.group(3))
        matchers.append(Matcher(match.group(1), match.group(2), value))
    return tuple(matchers)


def _split_matchers(body: str) -> list[str]:
    """Split on commas outside quotes; a trailing comma is allowed."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in body:
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    parts.append("".join(current))
    if not parts[-1].strip():
        parts.pop()  # "a=\"1\"," or an empty body
    return parts


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class SeriesStore:
    """Recent points of every series, per scrape target (a service name, a URL)."""

    def __init__(self, retention_seconds: float) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self.retention_seconds = retention_seconds
        self._data: dict[str, dict[SeriesKey, deque[Point]]] = {}
        self._scraped: dict[str, float] = {}  # target -> its last kept scrape
        self._restarted: dict[str, float] = {}  # target -> its last scrape before a restart

    def add(self, target: str, t: float, samples: Iterable[Sample], *,
            only_grows: Callable[[str], bool] | None = None) -> int:
        """Record one scrape taken at ``t``; returns how many samples were kept.

        A sample not newer than the last point of its series is dropped (as
        Prometheus rejects out-of-order samples), and so is the second of a series
        given twice in one scrape. Old points are pruned. ``only_grows`` tells
        counters by sample name. When the target's process started again (a new
        container, a restart: see ``_started_again``), the scrape before is the cut:
        every counter that began again gets a zero just after it (it was zero when the
        process started, which was no earlier: Prometheus' created-timestamp zeros,
        from what a scrape can tell), and ``window_since_restart`` rates from there.
        """
        series = self._data.setdefault(target, {})
        fresh: dict[SeriesKey, Sample] = {}
        for sample in samples:
            key = (sample.name, sample.labels)
            points = series.get(key)
            if key not in fresh and (not points or points[-1].t < t):
                fresh[key] = sample
        grows = only_grows or (lambda _name: False)
        before = self._scraped.get(target)
        if before is not None and _started_again(series, fresh, grows,
                                                 self._restarted.get(target)):
            self._restarted[target] = before
        cut = self._restarted.get(target)
        for key, sample in fresh.items():
            points = series.setdefault(key, deque())
            if cut is not None and grows(sample.name) and sample.value >= 0 and (
                    not points or points[-1].t < cut or (points[-1].t == cut and (
                        sample.value < points[-1].value or points[-1].value == 0))):
                # Only where the counter began again (went down, had no point at the
                # cut, or was zero there): one that grew across a cut taken wrongly
                # would count its whole life as this window's increase.
                points.append(Point(cut + RESTART_ZERO_AFTER, 0.0))
            points.append(Point(t, sample.value))
        if fresh:
            self._scraped[target] = t
        self.prune(t - self.retention_seconds)
        return len(fresh)

    def window_since_restart(self, target: str, *, end: float, window: float) -> float:
        """``window``, cut short to the time since the target's process last started
        when that is inside it: what the process before served (an old release's
        healthy traffic, a crashed one's errors) is not this one's rate, as the
        counters a runbook reads off ``/metrics`` say. The cut is at the scrape
        before the restart, where ``add`` put the new process's zeros."""
        since = self._restarted.get(target)
        if since is None or since <= end - window or since >= end:
            return window
        return end - since

    def prune(self, before: float) -> None:
        """Forget points at or before ``before``, and series left empty."""
        for series in self._data.values():
            for key in list(series):
                points = series[key]
                while points and points[0].t <= before:
                    points.popleft()
                if not points:
                    del series[key]

    def targets(self) -> tuple[str, ...]:
        return tuple(sorted(self._data))

    def select(self, target: str, selector: Selector) -> dict[SeriesKey, list[Point]]:
        """Every series of ``target`` that ``selector`` matches, with all its kept points."""
        return {key: list(points) for key, points in self._data.get(target, {}).items()
                if selector.matches(*key)}


def _started_again(series: Mapping[SeriesKey, deque[Point]], fresh: Mapping[SeriesKey, Sample],
                   grows: Callable[[str], bool], cut: float | None) -> bool:
    """Whether a scrape comes from a process that started after the previous one: its
    ``process_start_time_seconds`` moved later (client libraries export it), or,
    without one, more than half the counters that had counted something since the
    last cut went down. A counter going down (a gauge named like one, a series
    removed and made again) beside as many that grew is not a restart: a restart
    taken wrongly cuts the window short, a missed one only leaves the old
    process's counts in it (Prometheus' own reading); a series last seen before the
    cut is the older process's, not compared."""
    for key, sample in fresh.items():
        points = series.get(key)
        if key[0] == PROCESS_START and points:
            return sample.value - points[-1].value > 1.0  # later, past a second's jitter
    compared = [(sample.value, points[-1].value) for key, sample in fresh.items()
                if grows(sample.name) and (points := series.get(key))
                and (cut is None or points[-1].t > cut) and points[-1].value > 0]
    down = sum(1 for now, last in compared if now < last)
    return down * 2 > len(compared)


def _in_range(points: Sequence[Point], start: float, end: float) -> list[Point]:
    """Points in the left-open range (start, end], without NaN (a stale marker)."""
    return [p for p in points if start < p.t <= end and not math.isnan(p.value)]


def increase(points: Sequence[Point], *, end: float, window: float) -> float | None:
    """PromQL ``increase(x[window])`` at ``end``: counter resets handled, edges extrapolated.

    None with fewer than two points in the window.
    """
    start = end - window
    pts = _in_range(points, start, end)
    if len(pts) < 2:
        return None
    result = pts[-1].value - pts[0].value
    for before, after in pairwise(pts):
        if after.value < before.value:  # a reset: the counter restarted from zero
            result += before.value
    return _extrapolate(pts, result, start, end)


def _extrapolate(pts: Sequence[Point], result: float, start: float, end: float) -> float:
    """Prometheus' extrapolatedRate: stretch the sampled increase to the window's edges."""
    sampled = pts[-1].t - pts[0].t
    to_start = pts[0].t - start
    to_end = end - pts[-1].t
    average_gap = sampled / (len(pts) - 1)
    if result > 0 and pts[0].value >= 0:
        # A counter does not go below zero: do not extrapolate to before it started.
        to_start = min(to_start, sampled * (pts[0].value / result))
    limit = average_gap * 1.1
    interval = sampled
    interval += to_start if to_start < limit else average_gap / 2
    interval += to_end if to_end < limit else average_gap / 2
    return result * (interval / sampled)


def rate(points: Sequence[Point], *, end: float, window: float) -> float | None:
    """PromQL ``rate(x[window])`` at ``end``: per-second increase; None without two points."""
    inc = increase(points, end=end, window=window)
    return None if inc is None else inc / window


def sum_rate(store: SeriesStore, target: str, selector: Selector, *,
             end: float, window: float) -> float | None:
    """``sum(rate(selector[window]))``; None when no matching series has a rate."""
    rates = [r for points in store.select(target, selector).values()
             if (r := rate(points, end=end, window=window)) is not None]
    return math.fsum(rates) if rates else None


def ratio(store: SeriesStore, target: str, numerator: Selector, denominator: Selector, *,
          end: float, window: float) -> float | None:
    """``sum(rate(numerator)) / sum(rate(denominator))``, e.g. the share of 5xx responses.

    A numerator with no series counts as 0 (a service that never failed has
    no ``status="500"`` series yet); no traffic in the window (denominator
    missing or 0) is no data, not 0 %.
    """
    total = sum_rate(store, target, denominator, end=end, window=window)
    if total is None or total <= 0:
        return None
    part = sum_rate(store, target, numerator, end=end, window=window)
    return (part or 0.0) / total


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL ``histogram_quantile`` over (upper bound, cumulative count) pairs.

    Interpolates linearly within the bucket holding the rank; a rank in the
    ``+Inf`` bucket gives the highest finite bound; the first bucket starts
    at 0 unless its bound is not positive. None where Prometheus gives NaN:
    no ``+Inf`` bucket, fewer than two buckets, or no observations.
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = _monotonic(sorted(buckets))
    if len(bounds) < 2 or bounds[-1][0] != math.inf:
        return None
    total = bounds[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next((i for i, (_, count) in enumerate(bounds[:-1]) if count >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2][0]
    if b == 0 and bounds[0][0] <= 0:
        return bounds[0][0]
    lower, below = (0.0, 0.0) if b == 0 else bounds[b - 1]
    upper, count = bounds[b][0], bounds[b][1] - below
    if count <= 0:
        return None  # 0/0: only for q=0 over an empty first bucket; PromQL gives NaN
    return lower + (upper - lower) * ((rank - below) / count)


def _monotonic(bounds: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Cumulative counts can dip from scrape jitter; PromQL takes the running maximum."""
    out: list[tuple[float, float]] = []
    highest = 0.0
    for upper, count in bounds:
        highest = max(highest, count)
        out.append((upper, highest))
    return out


def quantile_over_window(store: SeriesStore, target: str, q: float, histogram: Selector, *,
                         end: float, window: float) -> float | None:
    """``histogram_quantile(q, sum by (le) (rate(<histogram>_bucket[window])))``.

    ``histogram`` names the family (``http_request_duration_seconds``) or its
    ``_bucket`` series; its matchers filter the buckets (e.g. by handler).
    """
    name = histogram.name if histogram.name.endswith("_bucket") else histogram.name + "_bucket"
    selector = Selector(name, histogram.matchers)
    per_le: dict[float, float] = {}
    for (_, labels), points in store.select(target, selector).items():
        le = dict(labels).get("le")
        inc = increase(points, end=end, window=window)
        if le is None or inc is None:
            continue
        try:
            bound = parse_value(le)
        except ValueError:
            continue
        per_le[bound] = per_le.get(bound, 0.0) + inc
    return histogram_quantile(q, per_le.items()) if per_le else None


def latest(store: SeriesStore, target: str, selector: Selector, *, end: float,
           max_age: float, aggregate: Aggregate = "sum") -> float | None:
    """The latest value of each matching gauge series, aggregated across series.

    A series whose last point is older than ``max_age`` is stale and left out;
    None when nothing fresh matches.
    """
    values = []
    for points in store.select(target, selector).values():
        fresh = _in_range(points, end - max_age, end)
        if fresh:
            values.append(fresh[-1].value)
    if not values:
        return None
    if aggregate == "sum":
        return math.fsum(values)
    if aggregate == "max":
        return max(values)
    if aggregate == "min":
        return min(values)
    return math.fsum(values) / len(values)
