"""The decision matrix as a pure function: every default rule, table-driven.

Evaluations run every ``STEP`` seconds as the live monitor would; each test
feeds a sequence of snapshots and looks at when rules fire and clear.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import pytest

from backout.policy.rules import (
    DEFAULT_RULES,
    Decision,
    Level,
    PolicyState,
    Rule,
    RuleError,
    RuleState,
    Snapshot,
    canonical_signal,
    check_unique_names,
    evaluate,
    merge_rules,
    parse_signal,
    signal_key,
)

STEP = 5
RULES = {rule.name: rule for rule in DEFAULT_RULES}
Signals = Mapping[str, float | None]


def run(rules: Sequence[Rule], frames: Iterable[tuple[float, Signals]],
        baseline: Mapping[str, float] | None = None,
        state: PolicyState | None = None) -> tuple[list[Decision], PolicyState]:
    current = state or PolicyState()
    decisions = []
    for t, signals in frames:
        decision, current = evaluate(rules, Snapshot(t, signals), current, baseline)
        decisions.append(decision)
    return decisions, current


def steady(key: str, value: float | None, start: float, end: float) -> list[tuple[float, Signals]]:
    """``key`` at ``value`` every STEP seconds from start to end inclusive."""
    return [(float(t), {key: value}) for t in range(int(start), int(end) + 1, STEP)]


def times(decisions: list[Decision], kind: str) -> list[float]:
    return [tr.t for d in decisions for tr in d.transitions if tr.kind == kind]


def active_at(decisions: list[Decision], t: float, rule: str) -> bool:
    (decision,) = [d for d in decisions if d.t == t]
    return any(f.rule == rule for f in decision.active)


def rule(**fields: object) -> Rule:
    base: dict[str, object] = dict(name="r", signal="s", comparison=">", threshold=10.0,
                                   level=Level.RED, severity="SEV-2", action="notify")
    base.update(fields)
    return Rule(**base)  # type: ignore[arg-type]


# --- the matrix, rule by rule -----------------------------------------------------------

# name, level, severity, action, signal, comparison, threshold, for_seconds, no_data
MATRIX = [
    ("red-error-rate", "RED", "SEV-2", "rollback-service", "error_rate", ">", 0.5, 60, "nodata"),
    ("red-health-check", "RED", "SEV-0", "rollback-emergency", "health_consecutive_failures",
     ">=", 2, 0, "nodata"),
    ("red-db-pool-exhausted", "RED", "SEV-2", "rollback-service", "db_pool_utilization", ">=",
     1.0, 0, "nodata"),
    ("red-auth-failures", "RED", "SEV-2", "rollback-service", "auth_failure_ratio", ">", 0.9, 0,
     "nodata"),
    ("red-memory", "RED", "SEV-2", "rollback-service", "memory_percent", ">", 95, 0, "nodata"),
    ("red-data-corruption", "RED", "SEV-1", "rollback-emergency", "data_corruption", ">", 0, 0,
     "nodata"),
    ("yellow-error-rate", "YELLOW", "SEV-2", "notify", "error_rate", ">", 0.1, 300, "nodata"),
    ("yellow-p95-latency", "YELLOW", "SEV-3", "notify", "p95_latency_seconds", ">", 5, 0,
     "nodata"),
    ("yellow-circuit-breakers", "YELLOW", "SEV-3", "notify", "circuit_breakers_open", ">=", 3, 0,
     "nodata"),
    ("yellow-user-reports", "YELLOW", "SEV-3", "notify", "user_reports", ">", 5, 0, "nodata"),
    # issue 17: not in the runbook's matrix; collected only with [backups] rpo_hours
    ("yellow-backup-rpo", "YELLOW", "SEV-3", "notify", "backup_rpo_ratio", ">", 1, 0, "nodata"),
    ("green-latency-vs-baseline", "GREEN", "SEV-4", "none", "p95_latency_seconds", "<", 3, 0,
     "passing"),
    ("green-queue-lag", "GREEN", "SEV-4", "none", "queue_lag", "<", 1000, 0, "passing"),
    ("green-single-restart", "GREEN", "SEV-4", "none", "restarts", "==", 1, 0, "passing"),
]


def test_default_rules_are_the_runbook_matrix() -> None:
    got = [(r.name, r.level.value, r.severity, r.action, r.signal, r.comparison, r.threshold,
            r.for_seconds, r.no_data) for r in DEFAULT_RULES]
    assert got == MATRIX
    assert RULES["green-latency-vs-baseline"].relative_to_baseline
    assert not any(r.relative_to_baseline for r in DEFAULT_RULES if r.name != "green-latency-vs-baseline")
    check_unique_names(DEFAULT_RULES)


# name, signal key, bad value, value between clear and fire thresholds (None: no hysteresis),
# good value
SWINGS = [
    ("red-error-rate", "error_rate{service=backend}", 0.6, 0.3, 0.05),
    ("red-health-check", "health_consecutive_failures{service=backend}", 2, 1, 0),
    ("red-db-pool-exhausted", "db_pool_utilization{service=backend}", 1.0, 0.95, 0.5),
    ("red-auth-failures", "auth_failure_ratio{service=backend}", 0.95, 0.6, 0.1),
    ("red-memory", "memory_percent{service=backend}", 96, 92, 50),
    ("red-data-corruption", "data_corruption", 1, None, 0),
    ("yellow-error-rate", "error_rate{service=backend}", 0.2, 0.07, 0.01),
    ("yellow-p95-latency", "p95_latency_seconds{service=backend}", 6, 4.5, 1),
    ("yellow-circuit-breakers", "circuit_breakers_open", 3, 2, 1),
    ("yellow-user-reports", "user_reports", 6, None, 5),
    ("green-latency-vs-baseline", "p95_latency_seconds{service=backend}", 2.0, None, 4.0),
    ("green-queue-lag", "queue_lag", 10, None, 5000),
    ("green-single-restart", "restarts{service=backend}", 1, None, 0),
]
BASELINE = {"p95_latency_seconds": 1.0}
SWING_IDS = [s[0] for s in SWINGS]


@pytest.mark.parametrize(("name", "key", "bad", "between", "good"), SWINGS, ids=SWING_IDS)
def test_fires_exactly_after_its_for_duration(name: str, key: str, bad: float,
                                              between: float | None, good: float) -> None:
    r = RULES[name]
    decisions, _ = run([r], steady(key, good, 0, 20) + steady(key, bad, 25, 25 + r.for_seconds + 20),
                       BASELINE)
    assert times(decisions, "fired") == [25 + r.for_seconds]
    if r.for_seconds:
        assert not active_at(decisions, 25 + r.for_seconds - STEP, name)
    assert not active_at(decisions, 20, name)
    assert active_at(decisions, 25 + r.for_seconds + 20, name)


@pytest.mark.parametrize(("name", "key", "bad", "between", "good"), SWINGS, ids=SWING_IDS)
def test_clears_only_after_the_clear_condition_held(name: str, key: str, bad: float,
                                                    between: float | None, good: float) -> None:
    r = RULES[name]
    fire_at = r.for_seconds
    recover = fire_at + 30
    frames = steady(key, bad, 0, recover - STEP) + steady(key, good, recover, recover + 700)
    decisions, _ = run([r], frames, BASELINE)
    assert times(decisions, "fired") == [fire_at]
    assert times(decisions, "cleared") == [recover + r.clear_for_seconds]
    if r.clear_for_seconds:
        assert active_at(decisions, recover + r.clear_for_seconds - STEP, name)


@pytest.mark.parametrize(("name", "key", "bad", "between", "good"),
                         [s for s in SWINGS if s[3] is not None],
                         ids=[s[0] for s in SWINGS if s[3] is not None])
def test_hysteresis_keeps_a_rule_active_between_the_thresholds(
        name: str, key: str, bad: float, between: float, good: float) -> None:
    r = RULES[name]
    recover = r.for_seconds + 30
    frames = steady(key, bad, 0, recover - STEP) + steady(key, between, recover, recover + 900)
    decisions, _ = run([r], frames, BASELINE)
    assert times(decisions, "fired") == [r.for_seconds]
    assert times(decisions, "cleared") == []
    # ... and the same value never fires a fresh rule.
    fresh, _ = run([r], steady(key, between, 0, 900), BASELINE)
    assert times(fresh, "fired") == []


# name, value, fires (sustained long enough)
BOUNDARIES = [
    ("red-error-rate", 0.5, False), ("red-error-rate", 0.5001, True),
    ("red-health-check", 1, False), ("red-health-check", 2, True),
    ("red-db-pool-exhausted", 0.99, False), ("red-db-pool-exhausted", 1.0, True),
    ("red-auth-failures", 0.9, False), ("red-auth-failures", 0.91, True),
    ("red-memory", 95, False), ("red-memory", 95.1, True),
    ("red-data-corruption", 0, False), ("red-data-corruption", 1, True),
    ("yellow-error-rate", 0.1, False), ("yellow-error-rate", 0.11, True),
    ("yellow-p95-latency", 5, False), ("yellow-p95-latency", 5.01, True),
    ("yellow-circuit-breakers", 2, False), ("yellow-circuit-breakers", 3, True),
    ("yellow-user-reports", 5, False), ("yellow-user-reports", 6, True),
    ("green-latency-vs-baseline", 3.0, False), ("green-latency-vs-baseline", 2.99, True),
    ("green-queue-lag", 1000, False), ("green-queue-lag", 999, True),
    ("green-single-restart", 0, False), ("green-single-restart", 1, True),
    ("green-single-restart", 2, False),
]


@pytest.mark.parametrize(("name", "value", "fires"), BOUNDARIES,
                         ids=[f"{n}={v}" for n, v, _ in BOUNDARIES])
def test_thresholds_at_their_boundary(name: str, value: float, fires: bool) -> None:
    r = RULES[name]
    decisions, _ = run([r], steady(r.signal, value, 0, r.for_seconds + STEP), BASELINE)
    assert bool(times(decisions, "fired")) is fires


@pytest.mark.parametrize(("name", "key", "bad", "between", "good"), SWINGS, ids=SWING_IDS)
def test_no_data_for_each_default_rule(name: str, key: str, bad: float,
                                       between: float | None, good: float) -> None:
    r = RULES[name]
    decisions, state = run([r], steady(key, None, 0, 900), BASELINE)
    assert times(decisions, "fired") == []
    if r.no_data == "nodata":
        assert decisions[-1].level is Level.NODATA
        assert decisions[-1].nodata == (f"{name}: {key}",)
        assert times(decisions, "nodata") == [0]  # reported once, not every evaluation
        assert state.instance(name, key).nodata
    else:  # the GREEN notes: no data means the note does not hold, and says nothing
        assert r.no_data == "passing"
        assert decisions[-1].level is Level.GREEN
        assert decisions[-1].nodata == ()


# --- no-data modes ----------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "fired", "level_during_gap"), [
    ("failing", [30], Level.RED),  # None counts as bad: the for-timer keeps running
    ("passing", [], Level.GREEN),  # None counts as good: the pending timer restarts
    ("nodata", [], Level.NODATA),  # its own state: the pending timer restarts
])
def test_no_data_while_pending(mode: str, fired: list[float], level_during_gap: Level) -> None:
    r = rule(for_seconds=30, no_data=mode)
    frames = [*steady("s", 20, 0, 15), *steady("s", None, 20, 30), *steady("s", 20, 35, 45)]
    decisions, _ = run([r], frames)
    assert times(decisions, "fired")[:1] == fired
    assert decisions[6].level is level_during_gap  # t=30
    if mode != "failing":  # the timer restarted at t=35 when data came back
        assert not active_at(decisions, 45, "r")


@pytest.mark.parametrize(("mode", "cleared", "still_active", "level"), [
    ("failing", [], True, Level.RED),  # no data keeps it firing
    ("passing", [40], False, Level.GREEN),  # no data counts towards clearing
    ("nodata", [], True, Level.RED),  # held: no data is no evidence of recovery
])
def test_no_data_while_active(mode: str, cleared: list[float], still_active: bool,
                              level: Level) -> None:
    r = rule(no_data=mode, clear_for_seconds=20)
    decisions, state = run([r], [*steady("s", 20, 0, 15), *steady("s", None, 20, 200)])
    assert times(decisions, "fired") == [0]
    assert times(decisions, "cleared") == cleared
    assert active_at(decisions, 200, "r") is still_active
    assert decisions[-1].level is level
    if mode == "nodata":
        assert decisions[-1].nodata == ("r: s",)
        assert decisions[-1].active[0].nodata
        assert state.instance("r", "s").clear_pending_since is None


def test_data_returning_is_a_transition_and_can_fire_at_once() -> None:
    decisions, _ = run([rule()], [(0, {"s": None}), (5, {"s": None}), (10, {"s": 20})])
    assert [(tr.t, tr.kind) for d in decisions for tr in d.transitions] == [
        (0, "nodata"), (10, "data"), (10, "fired")]
    assert [d.level for d in decisions] == [Level.NODATA, Level.NODATA, Level.RED]


def test_nan_is_no_data() -> None:
    decisions, _ = run([rule()], [(0, {"s": float("nan")})])
    assert decisions[0].level is Level.NODATA


# --- baselines --------------------------------------------------------------------------

@pytest.mark.parametrize(("baseline", "value", "fires"), [
    pytest.param({"lat": 0.5}, 1.6, True, id="above 3x the bare-name baseline"),
    pytest.param({"lat": 0.5}, 1.5, False, id="at 3x the baseline"),
    pytest.param({"lat": 0.5, "lat{service=api}": 1.0}, 1.6, False,
                 id="the per-service baseline wins"),
    pytest.param({'lat{service="api"}': 0.1}, 0.31, True, id="quoted keys are canonicalised"),
])
def test_baseline_relative_threshold(baseline: dict[str, float], value: float,
                                     fires: bool) -> None:
    r = rule(signal="lat", threshold=3, relative_to_baseline=True, level=Level.YELLOW)
    decisions, _ = run([r], [(0, {"lat{service=api}": value})], baseline)
    assert bool(decisions[0].active) is fires
    if fires:
        assert "3x baseline" in decisions[0].active[0].reason


@pytest.mark.parametrize(("mode", "level"), [("nodata", Level.NODATA), ("passing", Level.GREEN),
                                             ("failing", Level.YELLOW)])
def test_a_missing_baseline_is_no_data(mode: str, level: Level) -> None:
    r = rule(signal="lat", threshold=3, relative_to_baseline=True, level=Level.YELLOW,
             no_data=mode)
    decisions, _ = run([r], [(0, {"lat": 2.0})], baseline={"other": 1.0})
    assert decisions[0].level is level
    if mode == "nodata":
        assert "no baseline" in decisions[0].transitions[0].reason


def test_baseline_relative_clear_threshold() -> None:
    r = rule(signal="lat", threshold=3, relative_to_baseline=True, clear_threshold=2)
    frames = [(0, {"lat": 2.0}), (5, {"lat": 1.2}), (10, {"lat": 0.9})]
    decisions, _ = run([r], frames, {"lat": 0.5})
    assert times(decisions, "fired") == [0]  # 2.0 > 3 x 0.5
    assert times(decisions, "cleared") == [10]  # 1.2 is above 2 x 0.5, 0.9 is not
    cleared = decisions[2].transitions[0]
    assert cleared.threshold == 1.0
    assert "not > 2x baseline (1)" in cleared.reason


# --- flapping, durations, consecutive counts --------------------------------------------

def test_flapping_around_the_threshold_never_fires_a_for_rule() -> None:
    values = [0.6, 0.4] * 40
    frames = [(i * STEP, {"error_rate": v}) for i, v in enumerate(values)]
    decisions, _ = run([RULES["red-error-rate"]], frames)
    assert times(decisions, "fired") == []


def test_brief_dips_below_the_clear_threshold_do_not_clear() -> None:
    r = RULES["red-error-rate"]  # clear below 0.1 for 60 s
    frames = steady("error_rate", 0.6, 0, 60)
    for i, t in enumerate(range(65, 600, STEP)):
        frames.append((t, {"error_rate": 0.0 if i % 6 else 0.3}))  # good 25 s, then a spike
    decisions, _ = run([r], frames)
    assert times(decisions, "fired") == [60]
    assert times(decisions, "cleared") == []
    assert len([d for d in decisions if d.actions]) == 1


def test_for_duration_with_uneven_evaluation_times() -> None:
    r = rule(for_seconds=60)
    decisions, _ = run([r], [(0, {"s": 20}), (33, {"s": 20}), (59.9, {"s": 20}), (61, {"s": 20})])
    assert times(decisions, "fired") == [61]


@pytest.mark.parametrize(("pattern", "fired_at"), [
    ("FFF", [10]),
    ("FF.FFF", [25]),  # a good evaluation resets the count
    ("FF", []),
    ("F.F.F.F", []),
])
def test_consecutive_count(pattern: str, fired_at: list[float]) -> None:
    r = rule(signal="probe_failed", comparison=">=", threshold=1, consecutive=3)
    frames = [(i * STEP, {"probe_failed": 1.0 if c == "F" else 0.0})
              for i, c in enumerate(pattern)]
    decisions, _ = run([r], frames)
    assert times(decisions, "fired") == fired_at
    if fired_at:
        assert "3 consecutive times" in decisions[-1].transitions[0].reason


def test_for_and_consecutive_together_both_apply() -> None:
    r = rule(for_seconds=10, consecutive=4)
    decisions, _ = run([r], steady("s", 20, 0, 30))
    assert times(decisions, "fired") == [15]  # 10 s reached at t=10, 4th evaluation at t=15


def test_health_check_red_after_exactly_two_failed_probes() -> None:
    streak = [0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0]
    frames = [(i * STEP, {"health_consecutive_failures{service=nginx}": float(v)})
              for i, v in enumerate(streak)]
    decisions, _ = run(DEFAULT_RULES, frames)
    assert [d.level for d in decisions][:4] == [Level.GREEN, Level.GREEN, Level.RED, Level.RED]
    assert times(decisions, "cleared") == [20 + 30]


# --- actions and transitions ------------------------------------------------------------

def test_an_action_is_requested_once_per_activation() -> None:
    r = RULES["red-memory"]
    key = "memory_percent{service=model-server}"
    frames = (steady(key, 99, 0, 300) + steady(key, 50, 305, 400) + steady(key, 99, 405, 500))
    decisions, _ = run([r], frames)
    actions = [a for d in decisions for a in d.actions]
    assert [(a.t, a.action, a.service) for a in actions] == [
        (0, "rollback-service", "model-server"), (405, "rollback-service", "model-server")]
    assert actions[0].severity == "SEV-2"
    assert "memory_percent{service=model-server} = 99 > 95" in actions[0].reason


def test_a_restarted_monitor_does_not_fire_again() -> None:
    r = RULES["red-error-rate"]
    first, state = run([r], steady("error_rate{service=backend}", 0.9, 0, 90))
    assert len([a for d in first for a in d.actions]) == 1
    restored = PolicyState.loads(state.dumps())
    second, _ = run([r], steady("error_rate{service=backend}", 0.9, 95, 400), state=restored)
    assert [a for d in second for a in d.actions] == []
    assert all(d.level is Level.RED for d in second)


def test_rules_without_action_request_nothing() -> None:
    decisions, _ = run([RULES["green-queue-lag"]], [(0, {"queue_lag": 5})])
    assert decisions[0].active and decisions[0].actions == ()
    assert decisions[0].transitions[0].action is None


def test_each_service_is_its_own_instance() -> None:
    frames = [(t, {"error_rate{service=backend}": 0.7, "error_rate{service=frontend}": 0.0,
                   "error_rate": 0.35}) for t in range(0, 61, STEP)]
    decisions, state = run([RULES["red-error-rate"]], frames)
    last = decisions[-1]
    assert [(f.signal, f.service) for f in last.active] == [("error_rate{service=backend}",
                                                             "backend")]
    assert [(a.action, a.service) for a in last.actions] == [("rollback-service", "backend")]
    assert set(state.rules["red-error-rate"]) == {"error_rate{service=backend}"}  # idle: dropped


def test_a_scoped_rule_watches_only_its_service() -> None:
    r = rule(signal="error_rate{service=frontend}")
    decisions, _ = run([r], [(0, {"error_rate{service=backend}": 50, "error_rate": 50})])
    assert decisions[0].unwatched == ("r",)
    decisions, _ = run([r], [(0, {'error_rate{service="frontend"}': 50})])
    assert decisions[0].active[0].service == "frontend"


def test_a_stack_wide_service_rollback_becomes_an_emergency_rollback() -> None:
    decisions, _ = run([RULES["red-auth-failures"]], [(0, {"auth_failure_ratio": 0.99})])
    (action,) = decisions[0].actions
    assert (action.action, action.service) == ("rollback-emergency", None)
    assert decisions[0].active[0].action == "rollback-emergency"


def test_transitions_carry_levels_values_and_thresholds() -> None:
    decisions, _ = run(DEFAULT_RULES, steady("error_rate{service=backend}", 0.6, 0, 60))
    (fired,) = decisions[-1].transitions
    assert (fired.rule, fired.kind, fired.rule_level) == ("red-error-rate", "fired", Level.RED)
    assert (fired.level_before, fired.level_after) == (Level.GREEN, Level.RED)
    assert (fired.value, fired.threshold, fired.action) == (0.6, 0.5, "rollback-service")
    assert fired.reason == ("error_rate{service=backend} = 0.6 > 0.5 (for 60s): "
                            "API error rate > 50% for 1 minute [RED, SEV-2]")
    json.dumps(decisions[-1].to_json())  # streamable as JSON lines


def test_an_active_rule_between_thresholds_says_so() -> None:
    decisions, _ = run([RULES["red-error-rate"]],
                       [*steady("error_rate", 0.6, 0, 60), (65, {"error_rate": 0.3})])
    assert "0.3 > 0.1 (clear threshold)" in decisions[-1].active[0].reason


# --- levels -----------------------------------------------------------------------------

@pytest.mark.parametrize(("signals", "level"), [
    pytest.param({}, Level.GREEN, id="nothing watched"),
    pytest.param({"queue_lag": 10}, Level.GREEN, id="a GREEN note"),
    pytest.param({"p95_latency_seconds": 9}, Level.YELLOW, id="YELLOW"),
    pytest.param({"p95_latency_seconds": 9, "memory_percent": 99}, Level.RED, id="RED wins"),
    pytest.param({"memory_percent": None}, Level.NODATA, id="no data is not green"),
    pytest.param({"memory_percent": None, "p95_latency_seconds": 9}, Level.YELLOW,
                 id="YELLOW outranks NODATA"),
    pytest.param({"memory_percent": None, "queue_lag": None}, Level.NODATA,
                 id="GREEN notes do not hide NODATA"),
])
def test_overall_level(signals: Signals, level: Level) -> None:
    decisions, _ = run(DEFAULT_RULES, [(0, signals)])
    assert decisions[0].level is level


def test_level_since_and_previous_level() -> None:
    frames = [(0, {"memory_percent": 50}), (5, {"memory_percent": 99}), (10, {"memory_percent": 99})]
    decisions, state = run([RULES["red-memory"]], frames)
    assert [(d.previous_level, d.level, d.level_since) for d in decisions] == [
        (Level.GREEN, Level.GREEN, 0), (Level.GREEN, Level.RED, 5), (Level.RED, Level.RED, 5)]
    assert (state.level, state.level_since, state.t) == (Level.RED, 5, 10)


def test_unwatched_rules_are_listed() -> None:
    decisions, _ = run(DEFAULT_RULES, [(0, {"error_rate": 0.0, "queue_lag": 3})])
    assert "red-error-rate" not in decisions[0].unwatched
    assert "red-memory" in decisions[0].unwatched
    assert "green-queue-lag" not in decisions[0].unwatched


def test_an_active_instance_whose_signal_vanishes_is_held_as_no_data() -> None:
    r = rule(signal="s", clear_for_seconds=0)
    decisions, _ = run([r], [(0, {"s{service=a}": 20}), (5, {"s{service=b}": 0})])
    assert [f.signal for f in decisions[1].active] == ["s{service=a}"]
    assert decisions[1].nodata == ("r: s{service=a}",)


def test_state_of_removed_rules_and_idle_instances_is_dropped() -> None:
    _, state = run([rule(), rule(name="other")], [(0, {"s": 20})])
    assert set(state.rules) == {"r", "other"}
    _, state = run([rule()], [(5, {"s": 0})], state=state)
    assert state.rules == {}


# --- state persistence ------------------------------------------------------------------

def test_state_json_round_trip_mid_incident() -> None:
    frames = [
        *steady("error_rate{service=backend}", 0.7, 0, 60),
        (65, {"error_rate{service=backend}": 0.0, "memory_percent": None, "s": 20}),
    ]
    _, state = run([*DEFAULT_RULES, rule(for_seconds=30)], frames)
    assert state.instance("red-error-rate", "error_rate{service=backend}").clear_pending_since == 65
    assert state.instance("red-memory", "memory_percent").nodata
    assert state.instance("r", "s").pending_since == 65
    text = state.dumps()
    assert PolicyState.loads(text) == state
    assert PolicyState.from_json(json.loads(text)) == state


@pytest.mark.parametrize("text", [
    "not json",
    "[]",
    '{"version": 2, "rules": {}, "level": "GREEN"}',
    '{"version": 1, "rules": {}, "level": "PURPLE"}',
    '{"version": 1, "level": "GREEN"}',
    '{"version": 1, "rules": {"r": {"s": {"consecutive": -1}}}, "level": "GREEN"}',
    '{"version": 1, "rules": {"r": {"s": {"active": "yes"}}}, "level": "GREEN"}',
    '{"version": 1, "rules": {"r": {"s": {"pending_since": "x"}}}, "level": "GREEN"}',
    '{"version": 1, "rules": {"r": {"bad key!": {}}}, "level": "GREEN"}',
    '{"version": 1, "rules": {}, "level": "GREEN", "t": true}',
])
def test_invalid_state_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid policy state"):
        PolicyState.loads(text)


def test_minimal_state_json_loads_with_defaults() -> None:
    state = PolicyState.loads('{"version": 1, "rules": {"r": {"s": {"active": true}}}, '
                              '"level": "RED"}')
    assert state.instance("r", "s") == RuleState(active=True)
    assert state.t is None


# --- rule validation and helpers --------------------------------------------------------

@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"name": " "}, "name", "must not be empty"),
    ({"signal": "error rate"}, "signal", "invalid signal"),
    ({"signal": "s{pod=a}"}, "signal", "invalid signal"),
    ({"comparison": "=>"}, "comparison", "must be one of"),
    ({"level": "NODATA"}, "level", "must be one of RED, YELLOW, GREEN"),
    ({"level": "BLUE"}, "level", "must be one of"),
    ({"severity": "SEV-5"}, "severity", "must be one of"),
    ({"action": "rollback"}, "action", "must be one of"),
    ({"no_data": "ignore"}, "no_data", "must be one of"),
    ({"threshold": float("nan")}, "threshold", "NaN"),
    ({"for_seconds": -1}, "for_seconds", "negative"),
    ({"clear_for_seconds": -1}, "clear_for_seconds", "negative"),
    ({"consecutive": 0}, "consecutive", "at least 1"),
    ({"clear_threshold": 11.0}, "clear_threshold", "at most the threshold (10)"),
    ({"comparison": "<", "clear_threshold": 9.0}, "clear_threshold", "at least the threshold"),
    ({"comparison": "==", "clear_threshold": 10.0}, "clear_threshold", "not allowed"),
])
def test_invalid_rules(fields: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        rule(**fields)
    assert info.value.field == field
    assert message in info.value.message


def test_rule_accepts_a_level_string_and_canonicalises_its_signal() -> None:
    r = rule(level="YELLOW", signal=' s { service = "api" } ')
    assert r.level is Level.YELLOW
    assert (r.signal, r.service) == ("s{service=api}", "api")


@pytest.mark.parametrize(("key", "parsed"), [
    ("error_rate", ("error_rate", None)),
    ("error_rate{service=backend}", ("error_rate", "backend")),
    ('error_rate{service="model-server"}', ("error_rate", "model-server")),
    ("error_rate{ service = web.1 }", ("error_rate", "web.1")),
])
def test_signal_keys(key: str, parsed: tuple[str, str | None]) -> None:
    assert parse_signal(key) == parsed
    assert canonical_signal(key) == signal_key(*parsed)


@pytest.mark.parametrize("key", ["", "1x", "a{service=}", "a{service=b", 'a{service="b}', "a b"])
def test_invalid_signal_keys(key: str) -> None:
    with pytest.raises(ValueError):
        parse_signal(key)
    with pytest.raises(ValueError):
        Snapshot(0, {key: 1.0})


def test_merge_rules_replaces_by_name_and_appends() -> None:
    custom = replace(RULES["red-memory"], threshold=90.0)
    extra = rule(name="extra")
    merged = merge_rules(DEFAULT_RULES, [custom, extra])
    assert len(merged) == len(DEFAULT_RULES) + 1
    assert merged[4] == custom and merged[-1] == extra


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate rule name 'r'"):
        evaluate([rule(), rule()], Snapshot(0, {}), PolicyState())
