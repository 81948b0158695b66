"""Baselines for relative rules ("P95 latency > 3x baseline"), captured automatically.

A baseline is the median of each watched signal over the last ``evaluations``
evaluations in a row in which the release was healthy, and it belongs to the
release that was running (``release_key``): a restarted monitor reuses it, a new
release captures its own. Until the new release has one, the newest baseline of
an earlier release is used (*inherited*): a regression that a deploy brings in
is measured against the release that was healthy before it, which is what a
relative rule is for. Everything here is pure; the monitor loop persists.

Healthy means: no RED or YELLOW rule active, and no rule without data except
relative rules that wait for this very baseline (otherwise a relative rule with
``no_data = "nodata"`` would keep the level NODATA and no baseline would ever
be captured).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backout.policy.rules import Decision, Level, Rule, Snapshot, parse_signal

DEFAULT_EVALUATIONS = 12  # 1 minute at the default 5 s interval
KEEP = 20  # baselines of this many releases are kept in the store


def release_key(releases: Sequence[Mapping[str, Any]], images: Mapping[str, str]) -> str:
    """What runs now, as a baseline key: the id of the newest recorded release whose
    images are exactly the running ones (``"3"``), else ``"images:<sha12>"`` (an
    unrecorded deployment still gets a baseline of its own).

    ``releases`` are store rows (``id``, ``services: {svc: {image_id}}``); ``images``
    maps each running service to its image ID."""
    for rel in releases:
        recorded = {svc: info.get("image_id") for svc, info in rel["services"].items()}
        if images and recorded == dict(images):
            return str(rel["id"])
    text = "\n".join(f"{svc}={image}" for svc, image in sorted(images.items()))
    return "images:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_release(key: str) -> str:
    return f"unrecorded ({key})" if key.startswith("images:") else f"release {key}"


@dataclass(frozen=True)
class Baseline:
    release: str  # release_key of the release it was captured for
    values: Mapping[str, float]  # signal key -> median while healthy
    captured_at: float
    evaluations: int

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "values": dict(self.values),
                "captured_at": self.captured_at, "evaluations": self.evaluations}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(release=str(data["release"]),
                   values={str(k): float(v) for k, v in data["values"].items()},
                   captured_at=float(data["captured_at"]), evaluations=int(data["evaluations"]))


@dataclass(frozen=True)
class Warmup:
    """Progress towards a capture: the watched values of the last healthy evaluations."""

    release: str | None = None
    samples: tuple[Mapping[str, float | None], ...] = field(default_factory=tuple)


def watched(rules: Sequence[Rule]) -> tuple[str, ...]:
    """The signals relative rules compare with a baseline (names or service keys)."""
    return tuple(sorted({r.signal for r in rules if r.relative_to_baseline}))


def _watches(signals: Sequence[str], key: str) -> bool:
    return key in signals or parse_signal(key)[0] in signals


def healthy(decision: Decision, rules: Sequence[Rule]) -> bool:
    if any(f.level in (Level.RED, Level.YELLOW) for f in decision.active):
        return False
    relative = {r.name for r in rules if r.relative_to_baseline}
    return all(entry.rsplit(": ", 1)[0] in relative for entry in decision.nodata)


def observe(warmup: Warmup, release: str, is_healthy: bool, snapshot: Snapshot,
            signals: Sequence[str], evaluations: int) -> tuple[Warmup, Baseline | None]:
    """One evaluation's contribution. Returns the new warm-up and, once ``evaluations``
    healthy evaluations in a row are in, the captured baseline (then the warm-up starts
    over). A signal gets a value when at least half of the samples have data; no
    baseline is captured while no watched signal has enough (no traffic yet)."""
    if not is_healthy or not signals:
        return Warmup(release), None
    if warmup.release != release:
        warmup = Warmup(release)
    sample = {k: v for k, v in snapshot.signals.items() if _watches(signals, k)}
    samples = (*warmup.samples, sample)[-evaluations:]
    if len(samples) < evaluations:
        return Warmup(release, samples), None
    values: dict[str, float] = {}
    for key in sorted({k for s in samples for k in s}):
        data = [v for s in samples if (v := s.get(key)) is not None]
        if 2 * len(data) >= evaluations:
            values[key] = float(statistics.median(data))
    if not values:
        return Warmup(release, samples), None
    return Warmup(release), Baseline(release, values, snapshot.t, evaluations)


def select(baselines: Mapping[str, Baseline], release: str) -> Baseline | None:
    """The baseline in use for ``release``: its own, else the newest one (inherited)."""
    if release in baselines:
        return baselines[release]
    return max(baselines.values(), key=lambda b: b.captured_at, default=None)


def keep(baselines: Mapping[str, Baseline], limit: int = KEEP) -> dict[str, Baseline]:
    newest = sorted(baselines.values(), key=lambda b: b.captured_at, reverse=True)[:limit]
    return {b.release: b for b in newest}


def summary(baseline: Baseline | None, release: str, progress: int | None = None,
            needed: int | None = None) -> dict[str, Any]:
    """The baseline in use, as the monitor's and ``status``'s JSON show it."""
    return {
        "release": release,
        "captured_for": None if baseline is None else baseline.release,
        "inherited": baseline is not None and baseline.release != release,
        "captured_at": None if baseline is None else baseline.captured_at,
        "values": {} if baseline is None else dict(baseline.values),
        "warmup": None if progress is None else {"healthy": progress, "needed": needed},
    }
