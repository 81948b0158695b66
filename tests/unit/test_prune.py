"""Retention (``backups prune``) as a pure function: table tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backout.storage.prune import Candidate, prune

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(day_offset: int, hour: int, minute: int = 0) -> datetime:
    """A time on NOW's day + day_offset (negative: days before)."""
    base = NOW.replace(hour=0, minute=0) + timedelta(days=day_offset)
    return base.replace(hour=hour, minute=minute)


def sets(*times: datetime) -> list[Candidate]:
    """Candidates named s1, s2, ... in the order given."""
    return [Candidate(f"s{i}", t) for i, t in enumerate(times, start=1)]


# Four days, two or three sets each; s9 is the newest.
HISTORY = sets(at(-3, 1), at(-3, 22),            # s1, s2
               at(-2, 3), at(-2, 4), at(-2, 23),  # s3, s4, s5
               at(-1, 9), at(-1, 10),             # s6, s7
               at(0, 6), at(0, 11))               # s8, s9


@pytest.mark.parametrize(("candidates", "keep_last", "keep_daily", "protected", "kept", "removed"), [
    pytest.param([], 3, 3, {}, set(), [], id="nothing to prune"),
    pytest.param(HISTORY, 0, 0, {}, {"s9"}, ["s8", "s7", "s6", "s5", "s4", "s3", "s2", "s1"],
                 id="the newest is always kept"),
    pytest.param(HISTORY, 3, 0, {}, {"s9", "s8", "s7"},
                 ["s6", "s5", "s4", "s3", "s2", "s1"], id="keep_last"),
    pytest.param(HISTORY, 20, 0, {}, {f"s{i}" for i in range(1, 10)}, [],
                 id="keep_last larger than the number of sets"),
    pytest.param(HISTORY, 0, 1, {}, {"s9"}, ["s8", "s7", "s6", "s5", "s4", "s3", "s2", "s1"],
                 id="keep_daily=1 is today"),
    pytest.param(HISTORY, 0, 3, {}, {"s9", "s7", "s5"}, ["s8", "s6", "s4", "s3", "s2", "s1"],
                 id="keep_daily keeps the newest of each day"),
    pytest.param(HISTORY, 0, 30, {}, {"s9", "s7", "s5", "s2"}, ["s8", "s6", "s4", "s3", "s1"],
                 id="keep_daily beyond the oldest set"),
    pytest.param(HISTORY, 2, 3, {}, {"s9", "s8", "s7", "s5"}, ["s6", "s4", "s3", "s2", "s1"],
                 id="keep_last and keep_daily together"),
    pytest.param(HISTORY, 1, 0, {"s1": "checkpoint of the previous release (4)"},
                 {"s9", "s1"}, ["s8", "s7", "s6", "s5", "s4", "s3", "s2"], id="protected"),
    pytest.param(HISTORY, 1, 0, {"gone": "checkpoint of the current release (5)"},
                 {"s9"}, ["s8", "s7", "s6", "s5", "s4", "s3", "s2", "s1"],
                 id="a protected id that is not a set is ignored"),
])
def test_prune_table(candidates: list[Candidate], keep_last: int, keep_daily: int,
                     protected: dict[str, str], kept: set[str], removed: list[str]) -> None:
    decision = prune(candidates, now=NOW, keep_last=keep_last, keep_daily=keep_daily,
                     protected=protected)
    assert set(decision.keep) == kept
    assert decision.remove == removed  # newest first
    assert not set(decision.keep) & set(decision.remove)
    assert set(decision.keep) | set(decision.remove) == {c.id for c in candidates}


def test_reasons_are_given() -> None:
    decision = prune(HISTORY, now=NOW, keep_last=2, keep_daily=3,
                     protected={"s1": "checkpoint of the previous release (4)"})
    assert decision.keep["s9"] == "newest set"
    assert decision.keep["s8"] == "among the 2 newest"
    assert decision.keep["s5"] == "newest of 2026-11-25 (keep_daily=3)"
    assert decision.keep["s1"] == "checkpoint of the previous release (4)"


def test_protection_wins_over_other_reasons() -> None:
    decision = prune(HISTORY, now=NOW, keep_last=1, keep_daily=0,
                     protected={"s9": "checkpoint of the current release (5)"})
    assert decision.keep == {"s9": "checkpoint of the current release (5)"}


def test_input_order_does_not_matter() -> None:
    forward = prune(HISTORY, now=NOW, keep_last=2, keep_daily=3, protected={})
    backward = prune(list(reversed(HISTORY)), now=NOW, keep_last=2, keep_daily=3, protected={})
    assert forward == backward


def test_same_time_is_ordered_by_id() -> None:
    same = [Candidate("20261127T110000Z-aaaa", at(0, 11)), Candidate("20261127T110000Z-bbbb", at(0, 11))]
    decision = prune(same, now=NOW, keep_last=0, keep_daily=0, protected={})
    assert decision.keep == {"20261127T110000Z-bbbb": "newest set"}
    assert decision.remove == ["20261127T110000Z-aaaa"]


def test_newest_kept_even_when_it_is_older_than_the_daily_horizon() -> None:
    old = sets(at(-40, 1), at(-30, 1))
    decision = prune(old, now=NOW, keep_last=0, keep_daily=7, protected={})
    assert decision.keep == {"s2": "newest set"}
    assert decision.remove == ["s1"]


def test_daily_uses_utc_days() -> None:
    # 23:30 and 00:30 UTC are two days, whatever the local time zone says
    late = Candidate("late", datetime(2026, 11, 26, 23, 30, tzinfo=UTC))
    early = Candidate("early", datetime(2026, 11, 27, 0, 30, tzinfo=UTC))
    decision = prune([late, early], now=NOW, keep_last=0, keep_daily=2, protected={})
    assert set(decision.keep) == {"late", "early"}
