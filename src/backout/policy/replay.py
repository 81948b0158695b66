"""Replay recorded signals through the policy: ``backout policy test FILE``.

A policy that only meets real faults in production is a policy nobody has
tested. A recording - one JSON object per line, ``{"t": <seconds>,
"signals": {"error_rate{service=backend}": 0.6, ...}, "baseline": {...}}`` -
is fed to ``policy.evaluate`` exactly as the live monitor would, and every
transition comes back with the rule and the values that caused it. Operators
can check a changed threshold against last month's incident before trusting
it with automatic rollbacks.

Records must be in strictly increasing ``t``. ``baseline`` is optional and
sticky: it applies from its record until another record replaces it. A
signal value of ``null`` is no data; a signal left out is not collected.
Blank lines and lines starting with ``#`` are skipped, so a hand-written
recording can explain itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backout.errors import UsageError
from backout.policy.rules import (
    DEFAULT_RULES,
    Decision,
    PolicyState,
    Rule,
    Snapshot,
    Transition,
    canonical_signal,
    evaluate,
    parse_signal,
)


class RecordingError(UsageError):
    """A recording that cannot be replayed; the message names the line."""

    code = "recording"


@dataclass(frozen=True)
class Record:
    t: float
    signals: Mapping[str, float | None]
    baseline: Mapping[str, float] | None = None


def parse_record(data: Any, where: str) -> Record:
    """One record from its decoded JSON; RecordingError naming ``where`` if malformed."""
    if not isinstance(data, dict):
        raise RecordingError(f"{where}: a record must be a JSON object")
    unknown = set(data) - {"t", "signals", "baseline"}
    if unknown:
        raise RecordingError(f"{where}: unknown key {sorted(unknown)[0]!r} "
                             "(a record has t, signals, baseline)")
    t: Any = data.get("t")
    if not _is_number(t):
        raise RecordingError(f"{where}: t must be a number of seconds, not {t!r}")
    signals = _numbers(data.get("signals"), where, "signals", allow_null=True)
    baseline = data.get("baseline")
    return Record(float(t), signals,
                  None if baseline is None else _numbers(baseline, where, "baseline"))


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _numbers(value: Any, where: str, what: str, allow_null: bool = False) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordingError(f"{where}: {what} must be an object of signal: number")
    out: dict[str, Any] = {}
    for key, number in value.items():
        try:
            name = canonical_signal(key)
        except ValueError as exc:
            raise RecordingError(f"{where}: {what}: {exc}") from None
        if not (_is_number(number) or (allow_null and number is None)):
            kind = "a number or null" if allow_null else "a number"
            raise RecordingError(f"{where}: {what}.{key} must be {kind}, not {number!r}")
        out[name] = number
    return out


def read_records(lines: Iterable[str], source: str = "<recording>") -> list[Record]:
    """Records from JSON lines; RecordingError as ``source:LINE: problem``."""
    records: list[Record] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{where}: invalid JSON: {exc.msg}") from None
        record = parse_record(data, where)
        if records and record.t <= records[-1].t:
            raise RecordingError(f"{where}: t={record.t:g} is not after the previous record "
                                 f"(t={records[-1].t:g})")
        records.append(record)
    return records


def replay_decisions(rules: Sequence[Rule], records: Iterable[Record],
                     state: PolicyState | None = None) -> Iterator[Decision]:
    """Every decision, in order, as the live monitor would have made them."""
    current = state or PolicyState()
    baseline: Mapping[str, float] = {}
    for record in records:
        if record.baseline is not None:
            baseline = record.baseline
        decision, current = evaluate(rules, Snapshot(record.t, record.signals), current, baseline)
        yield decision


def replay(rules: Sequence[Rule], records: Iterable[Record | Mapping[str, Any]]) -> list[Transition]:
    """All transitions of a replay. Records may be ``Record`` or decoded JSON objects."""
    parsed = [r if isinstance(r, Record) else parse_record(r, f"record {i}")
              for i, r in enumerate(records)]
    return [tr for decision in replay_decisions(rules, parsed) for tr in decision.transitions]


def replay_file(path: Path, rules: Sequence[Rule] = DEFAULT_RULES) -> list[Transition]:
    """Replay a JSON-lines recording; RecordingError if unreadable or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}",
                             fix="pass a JSON-lines recording") from None
    return replay(rules, read_records(text.splitlines(), str(path)))


def format_transitions(transitions: Iterable[Transition], *,
                       origin: float | None = None) -> list[str]:
    """One line per transition: when, level change, event, rule, reason, action.

    Times are shown as ``+SECONDSs`` from ``origin`` when given, as UTC when
    they look like Unix times, and as ``t=SECONDSs`` otherwise.
    """
    return [_format_one(tr, origin) for tr in transitions]


def _format_one(tr: Transition, origin: float | None) -> str:
    level = f"{tr.level_before.value} -> {tr.level_after.value}"
    if tr.level_before == tr.level_after:
        level = tr.level_after.value
    service = parse_signal(tr.signal)[1]
    action = f"  => {tr.action}" if tr.action else ""
    if tr.action == "rollback-service" and service:
        action += f" {service}"
    return f"{_format_time(tr.t, origin)}  {level:<16} {tr.kind:<8} {tr.rule}: {tr.reason}{action}"


def _format_time(t: float, origin: float | None) -> str:
    if origin is not None:
        return f"+{t - origin:>6g}s"
    if t >= 1e9:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"t={t:>6g}s"
