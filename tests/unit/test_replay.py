"""Replaying recordings through the policy (what backs ``backout policy test FILE``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backout.errors import ExitCode
from backout.policy.replay import (
    Record,
    RecordingError,
    format_transitions,
    read_records,
    replay,
    replay_decisions,
    replay_file,
)
from backout.policy.rules import DEFAULT_RULES, Level, PolicyState, Rule

DATA = Path(__file__).resolve().parents[1] / "data" / "policy"
INCIDENT = DATA / "5xx-incident.jsonl"
G, R, N = Level.GREEN, Level.RED, Level.NODATA


def test_the_5xx_incident_recording() -> None:
    transitions = replay_file(INCIDENT)
    got = [(tr.t, tr.rule, tr.kind, tr.level_before, tr.level_after, tr.action)
           for tr in transitions]
    assert got == [
        # the baseline (0.15 s) makes 0.2 s a "less than 3x baseline" note
        (0, "green-latency-vs-baseline", "fired", G, G, None),
        # above 50% from t=70; held for 60 s
        (130, "red-error-rate", "fired", G, R, "rollback-service"),
        # 0.3 at t=160 is above the clear threshold; 0.05 from t=165, held 60 s
        (225, "red-error-rate", "cleared", R, G, None),
        # one failed scrape: never silently green
        (250, "red-error-rate", "nodata", G, N, None),
        (250, "yellow-error-rate", "nodata", G, N, None),
        (255, "red-error-rate", "data", N, G, None),
        (255, "yellow-error-rate", "data", N, G, None),
    ]
    fired = transitions[1]
    assert (fired.signal, fired.value, fired.threshold) == ("error_rate{service=backend}", 0.6, 0.5)


def test_the_incident_formatted_for_people() -> None:
    lines = format_transitions(replay_file(INCIDENT), origin=0)
    assert len(lines) == 7
    assert lines[1] == (
        "+   130s  GREEN -> RED     fired    red-error-rate: error_rate{service=backend} = 0.6 "
        "> 0.5 (for 60s): API error rate > 50% for 1 minute [RED, SEV-2]"
        "  => rollback-service backend")
    assert lines[2] == ("+   225s  RED -> GREEN     cleared  red-error-rate: "
                        "error_rate{service=backend} = 0, not > 0.1 for 60s: cleared")
    assert lines[0].startswith("+     0s  GREEN            fired    green-latency-vs-baseline: ")


@pytest.mark.parametrize(("t", "origin", "prefix"), [
    (130.0, None, "t=   130s "),
    (130.5, 100.0, "+  30.5s "),
    (1_764_244_830.0, None, "2025-11-27T12:00:30Z "),
])
def test_time_formats(t: float, origin: float | None, prefix: str) -> None:
    (tr,) = replay([DEFAULT_RULES[0]], [{"t": t, "signals": {"error_rate": None}}])
    assert format_transitions([tr], origin=origin)[0].startswith(prefix)


def test_a_stricter_policy_on_the_same_recording() -> None:
    strict = Rule(name="strict", signal="error_rate", comparison=">", threshold=0.3,
                  level=Level.RED, severity="SEV-2", action="rollback-service", for_seconds=10)
    transitions = replay_file(INCIDENT, [strict])  # 0.4 at t=65; 0.3 at t=160 is not > 0.3
    assert [(tr.t, tr.kind) for tr in transitions][:2] == [(75, "fired"), (160, "cleared")]


def test_the_baseline_is_sticky_until_replaced() -> None:
    rule = Rule(name="slow", signal="lat", comparison=">", threshold=2, level=Level.YELLOW,
                severity="SEV-3", action="notify", relative_to_baseline=True)
    records = [
        {"t": 0, "signals": {"lat": 1.0}, "baseline": {"lat": 1.0}},
        {"t": 5, "signals": {"lat": 2.5}},  # > 2 x 1.0
        {"t": 10, "signals": {"lat": 2.5}, "baseline": {"lat": 2.0}},  # not > 2 x 2.0
        {"t": 15, "signals": {"lat": 2.5}, "baseline": {"other": 1.0}},  # replaced, not merged
    ]
    assert [(tr.t, tr.kind) for tr in replay([rule], records)] == [
        (5, "fired"), (10, "cleared"), (15, "nodata")]


def test_replay_decisions_continues_from_a_state() -> None:
    records = [Record(t, {"memory_percent": 99.0}) for t in (0, 5)]
    first = list(replay_decisions(DEFAULT_RULES, records[:1]))
    assert first[0].actions
    state = PolicyState.loads(json.dumps({"version": 1, "level": "RED", "rules": {
        "red-memory": {"memory_percent": {"active": True, "active_since": 0}}}}))
    again = list(replay_decisions(DEFAULT_RULES, records[1:], state))
    assert again[0].level is Level.RED and again[0].actions == ()


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", "rec.jsonl:1: invalid JSON"),
    ("[1, 2]", "rec.jsonl:1: a record must be a JSON object"),
    ('{"t": 0, "signals": {}, "extra": 1}', "unknown key 'extra'"),
    ('{"signals": {}}', "t must be a number of seconds, not None"),
    ('{"t": "0", "signals": {}}', "t must be a number"),
    ('{"t": true, "signals": {}}', "t must be a number"),
    ('{"t": 0}', "signals must be an object"),
    ('{"t": 0, "signals": {"e": "high"}}', "signals.e must be a number or null, not 'high'"),
    ('{"t": 0, "signals": {"e": true}}', "signals.e must be a number or null"),
    ('{"t": 0, "signals": {"bad key": 1}}', "signals: invalid signal 'bad key'"),
    ('{"t": 0, "signals": {}, "baseline": {"e": null}}', "baseline.e must be a number, not None"),
    ('{"t": 0, "signals": {}, "baseline": []}', "baseline must be an object"),
    ('{"t": 5, "signals": {}}\n{"t": 5, "signals": {}}', "rec.jsonl:2: t=5 is not after"),
    ('# c\n\n{"t": 5, "signals": {}}\n{"t": 1, "signals": {}}', "rec.jsonl:4: t=1 is not after"),
])
def test_malformed_recordings_name_the_line(text: str, problem: str) -> None:
    with pytest.raises(RecordingError) as info:
        read_records(text.splitlines(), "rec.jsonl")
    assert problem in info.value.message
    assert info.value.exit_code == ExitCode.USAGE


def test_comments_and_blank_lines_are_skipped() -> None:
    records = read_records(["# hello", "", "  ", '{"t": 1, "signals": {"a": null}}'])
    assert records == [Record(1.0, {"a": None})]


def test_replay_validates_plain_dict_records() -> None:
    with pytest.raises(RecordingError, match="record 1: t must be a number"):
        replay(DEFAULT_RULES, [{"t": 0, "signals": {}}, {"t": None, "signals": {}}])


def test_unreadable_recording(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot read"):
        replay_file(tmp_path)  # a directory
    with pytest.raises(RecordingError, match="cannot read"):
        replay_file(tmp_path / "missing.jsonl")


def test_an_empty_recording_has_no_transitions(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert replay_file(path) == []
