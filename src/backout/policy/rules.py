"""The runbook's decision matrix as data, and one pure function that applies it.

Today an operator reads four terminals and decides by eye whether the
matrix says RED ("rollback immediately"), YELLOW ("investigate within 5
minutes") or GREEN ("monitor only"). Here each line of the matrix is a
``Rule``, ``DEFAULT_RULES`` is the matrix rule by rule, and ``evaluate`` turns
one ``Snapshot`` of signal values into a ``Decision`` - the level, which rules
hold and why, what changed, which actions to take - plus the next
``PolicyState``. It reads no clock and does no I/O, so every threshold,
duration and clear condition is table-tested, and a recording can be replayed
through it (``backout policy test FILE``).

Signal naming convention
------------------------
A signal key is ``name`` for a stack-wide value or ``name{service=NAME}`` for
one compose service (``error_rate{service=backend}``; quotes around NAME are
accepted and dropped; ``service`` is the only label). A rule whose signal has
no ``{service=...}`` applies to every key of that name in the snapshot, each
as its own *instance* with its own timers - so "error rate > 50%" fires for
the backend alone and asks to roll back the backend. A rule naming a service
watches only that key. Units: ratios are 0..1 (``error_rate``,
``auth_failure_ratio``, ``db_pool_utilization`` = connections in use / pool
size), ``memory_percent`` is 0..100, latencies are seconds, the rest counts.

Semantics
---------
- ``for_seconds`` works as Prometheus ``for:``: the condition must hold at
  every evaluation from the first one where it held until ``for_seconds``
  later; ``consecutive`` counts evaluations in a row. With both, both apply.
- Clearing has hysteresis: an active rule stays active while
  ``value <comparison> clear_threshold`` (default: the threshold), and clears
  once that has been false continuously for ``clear_for_seconds``.
- No data (a ``None`` value, or a baseline-relative rule without a baseline)
  is handled per rule: ``failing`` and ``passing`` treat it as the condition
  holding or not; ``nodata`` is its own state that neither fires nor clears,
  resets pending timers, and makes the overall level NODATA unless a RED or
  YELLOW rule is active. It is never silently green.
- A key absent from the snapshot means the signal is not collected at all:
  a rule with no key is reported in ``Decision.unwatched``. (An instance that
  was active and disappears is treated as no data, so it does not clear.)
- Levels rank GREEN < NODATA < YELLOW < RED; the overall level is the highest
  among active rules and no-data instances.
- An action is requested once, on activation; an active rule never asks
  again until it has cleared. ``PolicyState`` is JSON so a restarted monitor
  does not re-fire. A ``rollback-service`` rule instance that has no service
  (a stack-wide signal) requests ``rollback-emergency``: the offending
  service is unknown, and the runbook says "when in doubt, rollback first".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    GREEN = "GREEN"
    NODATA = "NODATA"
    YELLOW = "YELLOW"
    RED = "RED"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {Level.GREEN: 0, Level.NODATA: 1, Level.YELLOW: 2, Level.RED: 3}

COMPARISONS = (">", ">=", "<", "<=", "==")
RULE_LEVELS = (Level.RED.value, Level.YELLOW.value, Level.GREEN.value)
SEVERITIES = ("SEV-0", "SEV-1", "SEV-2", "SEV-3", "SEV-4")
# rollback-with-data: the whole stack back with its databases restored from the
# target's checkpoint (for a signal that says the data itself is wrong).
ACTIONS = ("rollback-service", "rollback-emergency", "rollback-with-data", "notify", "none")
NO_DATA_MODES = ("failing", "passing", "nodata")
# What a rule written without severity/action gets. Rollbacks are never a default.
DEFAULT_SEVERITY = {Level.RED: "SEV-2", Level.YELLOW: "SEV-3", Level.GREEN: "SEV-4"}
DEFAULT_ACTION = {Level.RED: "notify", Level.YELLOW: "notify", Level.GREEN: "none"}

_SIGNAL = re.compile(
    r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*"
    r"(?:\{\s*service\s*=\s*(?:\"([a-zA-Z0-9][a-zA-Z0-9_.-]*)\"|([a-zA-Z0-9][a-zA-Z0-9_.-]*))\s*\})?\s*"
)
_COMPARE = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
}


def parse_signal(key: str) -> tuple[str, str | None]:
    """``error_rate{service=backend}`` -> ("error_rate", "backend"); ValueError if malformed."""
    match = _SIGNAL.fullmatch(key)
    if not match:
        raise ValueError(f"invalid signal {key!r}: expected name or name{{service=NAME}}")
    return match.group(1), match.group(2) or match.group(3)


def signal_key(name: str, service: str | None = None) -> str:
    """The canonical key: ``name`` or ``name{service=NAME}``."""
    return name if service is None else f"{name}{{service={service}}}"


def canonical_signal(key: str) -> str:
    return signal_key(*parse_signal(key))


class RuleError(ValueError):
    """An invalid rule; ``field`` names the offending field (for config messages)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One line of the decision matrix. See the module docstring for the semantics."""

    name: str
    signal: str
    comparison: str
    threshold: float
    level: Level
    severity: str
    action: str
    relative_to_baseline: bool = False  # threshold (and clear_threshold) are factors of it
    for_seconds: float = 0.0
    consecutive: int = 1
    clear_threshold: float | None = None
    clear_for_seconds: float = 0.0
    no_data: str = "nodata"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise RuleError("name", "must not be empty")
        try:
            object.__setattr__(self, "signal", canonical_signal(self.signal))
        except ValueError as exc:
            raise RuleError("signal", str(exc)) from None
        _check_choice("level", str(self.level), RULE_LEVELS)
        object.__setattr__(self, "level", Level(self.level))
        _check_choice("comparison", self.comparison, COMPARISONS)
        _check_choice("severity", self.severity, SEVERITIES)
        _check_choice("action", self.action, ACTIONS)
        _check_choice("no_data", self.no_data, NO_DATA_MODES)
        self._check_numbers()

    def _check_numbers(self) -> None:
        if math.isnan(self.threshold):
            raise RuleError("threshold", "must be a number, not NaN")
        if self.for_seconds < 0:
            raise RuleError("for_seconds", "must not be negative")
        if self.clear_for_seconds < 0:
            raise RuleError("clear_for_seconds", "must not be negative")
        if self.consecutive < 1:
            raise RuleError("consecutive", "must be at least 1")
        clear = self.clear_threshold
        if clear is None:
            return
        if self.comparison == "==":
            raise RuleError("clear_threshold", 'not allowed with comparison "=="')
        if math.isnan(clear) or not _on_safe_side(self.comparison, clear, self.threshold):
            side = "at most" if self.comparison in (">", ">=") else "at least"
            raise RuleError("clear_threshold", f"must be {side} the threshold ({self.threshold:g}) "
                                               f"for comparison {self.comparison!r}")

    @property
    def service(self) -> str | None:
        return parse_signal(self.signal)[1]

    def condition(self) -> str:
        """``> 0.5`` or ``< 3x baseline``."""
        unit = "x baseline" if self.relative_to_baseline else ""
        return f"{self.comparison} {_fmt(self.threshold)}{unit}"

    def held(self) -> str:
        parts = []
        if self.for_seconds > 0:
            parts.append(f"for {_fmt(self.for_seconds)}s")
        if self.consecutive > 1:
            parts.append(f"{self.consecutive} consecutive times")
        return " and ".join(parts)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise RuleError(name, f"must be one of {', '.join(choices)}, not {value!r}")


def _on_safe_side(comparison: str, clear: float, threshold: float) -> bool:
    return clear <= threshold if comparison in (">", ">=") else clear >= threshold


def merge_rules(base: Sequence[Rule], overrides: Sequence[Rule]) -> tuple[Rule, ...]:
    """``base`` with each override replacing the rule of the same name, new ones appended."""
    by_name = {rule.name: rule for rule in overrides}
    merged = [by_name.pop(rule.name, rule) for rule in base]
    return (*merged, *(rule for rule in overrides if rule.name in by_name))


def check_unique_names(rules: Sequence[Rule]) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)


def _rule(name: str, signal: str, comparison: str, threshold: float, level: Level,
          severity: str, action: str, description: str, **extra: Any) -> Rule:
    return Rule(name=name, signal=signal, comparison=comparison, threshold=threshold,
                level=level, severity=severity, action=action, description=description, **extra)


RED, YELLOW, GREEN = Level.RED, Level.YELLOW, Level.GREEN

DEFAULT_RULES: tuple[Rule, ...] = (
    # RED: rollback immediately.
    _rule("red-error-rate", "error_rate", ">", 0.5, RED, "SEV-2", "rollback-service",
          "API error rate > 50% for 1 minute", for_seconds=60,
          clear_threshold=0.1, clear_for_seconds=60),
    _rule("red-health-check", "health_consecutive_failures", ">=", 2, RED, "SEV-0",
          "rollback-emergency", "health check failed 2 consecutive times (outage)",
          clear_threshold=1, clear_for_seconds=30),
    _rule("red-db-pool-exhausted", "db_pool_utilization", ">=", 1.0, RED, "SEV-2",
          "rollback-service", "database connection pool exhausted (in use >= size)",
          clear_threshold=0.9, clear_for_seconds=60),
    _rule("red-auth-failures", "auth_failure_ratio", ">", 0.9, RED, "SEV-2", "rollback-service",
          "authentication failures > 90%", clear_threshold=0.5, clear_for_seconds=60),
    _rule("red-memory", "memory_percent", ">", 95, RED, "SEV-2", "rollback-service",
          "memory usage > 95%", clear_threshold=90, clear_for_seconds=60),
    _rule("red-data-corruption", "data_corruption", ">", 0, RED, "SEV-1", "rollback-emergency",
          "data corruption detected (restore data by hand: backout rollback db)",
          clear_for_seconds=600),
    # YELLOW: investigate within 5 minutes.
    _rule("yellow-error-rate", "error_rate", ">", 0.1, YELLOW, "SEV-2", "notify",
          "API error rate > 10% for 5 minutes", for_seconds=300,
          clear_threshold=0.05, clear_for_seconds=60),
    _rule("yellow-p95-latency", "p95_latency_seconds", ">", 5, YELLOW, "SEV-3", "notify",
          "latency P95 > 5 seconds", clear_threshold=4, clear_for_seconds=60),
    _rule("yellow-circuit-breakers", "circuit_breakers_open", ">=", 3, YELLOW, "SEV-3", "notify",
          "3+ circuit breakers open", clear_threshold=2, clear_for_seconds=60),
    _rule("yellow-user-reports", "user_reports", ">", 5, YELLOW, "SEV-3", "notify",
          "user reports > 5 for the same issue", clear_for_seconds=300),
    # Collected only with [backups] rpo_hours: the last good backup (or off-site copy)
    # is older than the recovery-point objective.
    _rule("yellow-backup-rpo", "backup_rpo_ratio", ">", 1, YELLOW, "SEV-3", "notify",
          "last good backup (local or off-site) older than [backups] rpo_hours"),
    # GREEN: monitor only (informational notes; they never raise the level).
    _rule("green-latency-vs-baseline", "p95_latency_seconds", "<", 3, GREEN, "SEV-4", "none",
          "latency increase < 3x baseline: monitor only", relative_to_baseline=True,
          no_data="passing"),
    _rule("green-queue-lag", "queue_lag", "<", 1000, GREEN, "SEV-4", "none",
          "queue lag < 1000 messages: monitor only", no_data="passing"),
    _rule("green-single-restart", "restarts", "==", 1, GREEN, "SEV-4", "none",
          "a single service restart: monitor only", no_data="passing"),
)


@dataclass(frozen=True)
class Snapshot:
    """Signal values at time ``t`` (seconds). ``None`` = the signal is collected but has no
    value now (scrape failed, no traffic). A signal that is not collected at all is absent.
    Keys are canonicalised; NaN becomes None."""

    t: float
    signals: Mapping[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, float | None] = {}
        for key, value in self.signals.items():
            clean[canonical_signal(key)] = None if value is None or math.isnan(value) else value
        object.__setattr__(self, "signals", clean)


@dataclass(frozen=True)
class RuleState:
    """The memory of one rule instance between evaluations."""

    pending_since: float | None = None
    consecutive: int = 0
    active: bool = False
    active_since: float | None = None
    clear_pending_since: float | None = None
    nodata: bool = False


STATE_VERSION = 1
_IDLE = RuleState()


@dataclass(frozen=True)
class PolicyState:
    """Everything ``evaluate`` remembers: per rule, per signal key, a ``RuleState``."""

    rules: Mapping[str, Mapping[str, RuleState]] = field(default_factory=dict)
    level: Level = Level.GREEN
    level_since: float | None = None
    t: float | None = None

    def instance(self, rule: str, key: str) -> RuleState:
        return self.rules.get(rule, {}).get(key, _IDLE)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "t": self.t,
            "level": self.level.value,
            "level_since": self.level_since,
            "rules": {name: {key: _state_fields(st) for key, st in keys.items()}
                      for name, keys in self.rules.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> PolicyState:
        """The inverse of ``to_json``; ValueError for anything malformed."""
        try:
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            rules = {str(name): {canonical_signal(key): _state_from(st) for key, st in keys.items()}
                     for name, keys in data["rules"].items()}
            return cls(rules=rules, level=Level(data["level"]),
                       level_since=_opt_float(data.get("level_since")), t=_opt_float(data.get("t")))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid policy state: {exc}") from None

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> PolicyState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid policy state: {exc}") from None
        return cls.from_json(data)


def _state_fields(st: RuleState) -> dict[str, Any]:
    return {"pending_since": st.pending_since, "consecutive": st.consecutive,
            "active": st.active, "active_since": st.active_since,
            "clear_pending_since": st.clear_pending_since, "nodata": st.nodata}


def _state_from(data: Mapping[str, Any]) -> RuleState:
    consecutive = data.get("consecutive", 0)
    if not isinstance(consecutive, int) or isinstance(consecutive, bool) or consecutive < 0:
        raise ValueError(f"consecutive must be a count, not {consecutive!r}")
    active, nodata = data.get("active", False), data.get("nodata", False)
    if not isinstance(active, bool) or not isinstance(nodata, bool):
        raise ValueError("active and nodata must be true or false")
    return RuleState(pending_since=_opt_float(data.get("pending_since")), consecutive=consecutive,
                     active=active, active_since=_opt_float(data.get("active_since")),
                     clear_pending_since=_opt_float(data.get("clear_pending_since")),
                     nodata=nodata)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Transition:
    """A rule instance changed state: ``fired``, ``cleared``, ``nodata`` or ``data``.

    (``data``: values came back after ``nodata``; the same evaluation may also fire.)

    ``level_before``/``level_after`` are the overall levels around the
    evaluation; ``value`` and ``threshold`` (effective, after any baseline)
    are what caused it; ``reason`` says it in words.
    """

    t: float
    rule: str
    signal: str
    kind: str
    rule_level: Level
    level_before: Level
    level_after: Level
    value: float | None
    threshold: float | None
    reason: str
    action: str | None = None  # the action requested, on "fired" (None for "none")

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "rule": self.rule, "signal": self.signal, "kind": self.kind,
                "rule_level": self.rule_level.value, "level_before": self.level_before.value,
                "level_after": self.level_after.value, "value": self.value,
                "threshold": self.threshold, "reason": self.reason, "action": self.action}


@dataclass(frozen=True)
class ActionRequest:
    """An action the policy asks for, once per activation of a rule instance."""

    t: float
    rule: str
    action: str
    service: str | None
    severity: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "rule": self.rule, "action": self.action, "service": self.service,
                "severity": self.severity, "reason": self.reason}


@dataclass(frozen=True)
class Firing:
    """An active rule instance as it stands now."""

    rule: str
    signal: str
    service: str | None
    level: Level
    severity: str
    action: str
    value: float | None
    threshold: float | None
    since: float
    nodata: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "signal": self.signal, "service": self.service,
                "level": self.level.value, "severity": self.severity, "action": self.action,
                "value": self.value, "threshold": self.threshold, "since": self.since,
                "nodata": self.nodata, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    t: float
    level: Level
    previous_level: Level
    level_since: float
    active: tuple[Firing, ...] = ()
    transitions: tuple[Transition, ...] = ()
    actions: tuple[ActionRequest, ...] = ()
    nodata: tuple[str, ...] = ()  # "rule: signal" of instances in the no-data state
    unwatched: tuple[str, ...] = ()  # rules whose signal is not in the snapshot at all

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "level": self.level.value,
                "previous_level": self.previous_level.value, "level_since": self.level_since,
                "active": [f.to_json() for f in self.active],
                "transitions": [tr.to_json() for tr in self.transitions],
                "actions": [a.to_json() for a in self.actions],
                "nodata": list(self.nodata), "unwatched": list(self.unwatched)}


@dataclass(frozen=True)
class _Reading:
    """One instance's input: its value and effective thresholds, or why there is none."""

    key: str
    value: float | None
    threshold: float | None
    clear: float | None
    missing: str | None  # "no data" / "no baseline"; None when the value is usable


@dataclass(frozen=True)
class _Step:
    state: RuleState
    events: tuple[str, ...] = ()


def evaluate(rules: Sequence[Rule], snapshot: Snapshot, state: PolicyState,
             baseline: Mapping[str, float] | None = None) -> tuple[Decision, PolicyState]:
    """Apply ``rules`` to ``snapshot``; pure. ``baseline`` maps signal keys (or bare names)
    to the values captured while the release was healthy."""
    check_unique_names(rules)
    base = {canonical_signal(k): v for k, v in (baseline or {}).items()}
    t = snapshot.t
    new_rules: dict[str, dict[str, RuleState]] = {}
    steps: list[tuple[Rule, _Reading, _Step]] = []
    unwatched: list[str] = []
    for rule in rules:
        keys = _instances(rule, snapshot, state.rules.get(rule.name, {}))
        if not keys:
            unwatched.append(rule.name)
        for key in keys:
            reading = _read(rule, key, snapshot, base)
            step = _advance(rule, reading, state.instance(rule.name, key), t)
            if step.state != _IDLE:
                new_rules.setdefault(rule.name, {})[key] = step.state
            steps.append((rule, reading, step))
    return _decide(t, state, new_rules, steps, unwatched)


def _decide(t: float, state: PolicyState, new_rules: dict[str, dict[str, RuleState]],
            steps: list[tuple[Rule, _Reading, _Step]],
            unwatched: list[str]) -> tuple[Decision, PolicyState]:
    active = tuple(_firing(rule, r, step.state) for rule, r, step in steps if step.state.active)
    nodata = tuple(f"{rule.name}: {r.key}" for rule, r, step in steps if step.state.nodata)
    level = max([f.level for f in active] + [Level.NODATA] * bool(nodata),
                key=lambda lv: lv.rank, default=Level.GREEN)
    level_since = t if level != state.level or state.level_since is None else state.level_since
    transitions = tuple(_transition(rule, r, event, t, state.level, level)
                        for rule, r, step in steps for event in step.events)
    actions = tuple(_action(rule, r, t) for rule, r, step in steps
                    if "fired" in step.events and rule.action != "none")
    decision = Decision(t=t, level=level, previous_level=state.level, level_since=level_since,
                        active=active, transitions=transitions, actions=actions, nodata=nodata,
                        unwatched=tuple(unwatched))
    return decision, PolicyState(rules=new_rules, level=level, level_since=level_since, t=t)


def _instances(rule: Rule, snapshot: Snapshot, previous: Mapping[str, RuleState]) -> list[str]:
    """The signal keys this rule watches now: matching keys in the snapshot, plus active
    instances whose key vanished (they must not clear for lack of data)."""
    name, service = parse_signal(rule.signal)
    if service is not None:
        keys = {rule.signal} & set(snapshot.signals)
    else:
        keys = {k for k in snapshot.signals if parse_signal(k)[0] == name}
    keys |= {k for k, st in previous.items() if st.active}
    return sorted(keys)


def _read(rule: Rule, key: str, snapshot: Snapshot, baseline: Mapping[str, float]) -> _Reading:
    value = snapshot.signals.get(key)
    threshold: float | None = rule.threshold
    clear: float | None = rule.threshold if rule.clear_threshold is None else rule.clear_threshold
    missing = "no data" if value is None else None
    if rule.relative_to_baseline:
        reference = baseline.get(key, baseline.get(parse_signal(key)[0]))
        if reference is None or math.isnan(reference):
            threshold = clear = None
            missing = missing or "no baseline"
        else:
            threshold = rule.threshold * reference
            clear = None if clear is None else clear * reference
    return _Reading(key, value, threshold, clear, missing)


def _advance(rule: Rule, reading: _Reading, st: RuleState, t: float) -> _Step:
    if reading.missing is not None and rule.no_data == "nodata":
        return _advance_nodata(st)
    if reading.missing is not None:
        bad = still_bad = rule.no_data == "failing"
    else:
        assert reading.value is not None and reading.threshold is not None
        assert reading.clear is not None
        bad = _COMPARE[rule.comparison](reading.value, reading.threshold)
        still_bad = _COMPARE[rule.comparison](reading.value, reading.clear)
    back = ("data",) if st.nodata else ()
    step = _advance_active(rule, st, t, still_bad) if st.active else _advance_idle(rule, st, t, bad)
    return _Step(step.state, back + step.events)


def _advance_nodata(st: RuleState) -> _Step:
    """No data under the ``nodata`` mode: hold an activation, forget any pending progress."""
    events = () if st.nodata else ("nodata",)
    if st.active:
        return _Step(replace(st, clear_pending_since=None, nodata=True), events)
    return _Step(RuleState(nodata=True), events)


def _advance_idle(rule: Rule, st: RuleState, t: float, bad: bool) -> _Step:
    if not bad:
        return _Step(_IDLE)
    since = st.pending_since if st.pending_since is not None else t
    count = st.consecutive + 1
    if t - since >= rule.for_seconds and count >= rule.consecutive:
        return _Step(RuleState(pending_since=since, consecutive=count, active=True,
                               active_since=t), ("fired",))
    return _Step(RuleState(pending_since=since, consecutive=count))


def _advance_active(rule: Rule, st: RuleState, t: float, still_bad: bool) -> _Step:
    if still_bad:
        return _Step(replace(st, clear_pending_since=None, nodata=False))
    since = st.clear_pending_since if st.clear_pending_since is not None else t
    if t - since >= rule.clear_for_seconds:
        return _Step(_IDLE, ("cleared",))
    return _Step(replace(st, clear_pending_since=since, nodata=False))


def _fmt(value: float | None) -> str:
    if value is None:
        return "none"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


def _limit(rule: Rule, value: float | None, clearing: bool) -> str:
    """A threshold as written: ``0.5``, or ``3x baseline (0.9)`` with its effective value."""
    factor = rule.threshold
    if clearing and rule.clear_threshold is not None:
        factor = rule.clear_threshold
    if not rule.relative_to_baseline:
        return _fmt(value)
    return f"{_fmt(factor)}x baseline ({_fmt(value)})"


def _condition_text(rule: Rule, reading: _Reading) -> str:
    """What the instance's value is against the rule: ``error_rate = 0.62 > 0.5``."""
    if reading.missing is not None:
        return f"{reading.key}: {reading.missing} (no_data = {rule.no_data})"
    assert reading.value is not None and reading.threshold is not None
    shown = f"{reading.key} = {_fmt(reading.value)} {rule.comparison}"
    if _COMPARE[rule.comparison](reading.value, reading.threshold):
        return f"{shown} {_limit(rule, reading.threshold, False)}"
    return f"{shown} {_limit(rule, reading.clear, True)} (clear threshold)"


def _describe(rule: Rule, reading: _Reading, kind: str) -> str:
    """The reason, in words, for an event or an active rule."""
    if kind == "nodata":
        return f"{reading.key}: {reading.missing}; the rule can neither fire nor clear"
    if kind == "data":
        return f"{reading.key}: data again ({_fmt(reading.value)})"
    if kind == "cleared":
        held = f" for {_fmt(rule.clear_for_seconds)}s" if rule.clear_for_seconds else ""
        if reading.missing is not None:
            return f"{_condition_text(rule, reading)}{held}: cleared"
        return (f"{reading.key} = {_fmt(reading.value)}, not {rule.comparison} "
                f"{_limit(rule, reading.clear, True)}{held}: cleared")
    held = f" ({rule.held()})" if kind == "fired" and rule.held() else ""
    return (f"{_condition_text(rule, reading)}{held}: {rule.description or rule.name} "
            f"[{rule.level.value}, {rule.severity}]")


def _firing(rule: Rule, reading: _Reading, st: RuleState) -> Firing:
    return Firing(rule=rule.name, signal=reading.key, service=parse_signal(reading.key)[1],
                  level=rule.level, severity=rule.severity, action=_resolved_action(rule, reading),
                  value=reading.value, threshold=reading.threshold,
                  since=st.active_since if st.active_since is not None else 0.0,
                  nodata=st.nodata, reason=_describe(rule, reading, "active"))


def _transition(rule: Rule, reading: _Reading, kind: str, t: float, level_before: Level,
                level_after: Level) -> Transition:
    return Transition(t=t, rule=rule.name, signal=reading.key, kind=kind, rule_level=rule.level,
                      level_before=level_before, level_after=level_after, value=reading.value,
                      threshold=reading.clear if kind == "cleared" else reading.threshold,
                      reason=_describe(rule, reading, kind), action=_requested(rule, reading, kind))


def _requested(rule: Rule, reading: _Reading, kind: str) -> str | None:
    if kind != "fired" or rule.action == "none":
        return None
    return _resolved_action(rule, reading)


def _resolved_action(rule: Rule, reading: _Reading) -> str:
    if rule.action == "rollback-service" and parse_signal(reading.key)[1] is None:
        return "rollback-emergency"
    return rule.action


def _action(rule: Rule, reading: _Reading, t: float) -> ActionRequest:
    return ActionRequest(t=t, rule=rule.name, action=_resolved_action(rule, reading),
                         service=parse_signal(reading.key)[1], severity=rule.severity,
                         reason=_describe(rule, reading, "fired"))
