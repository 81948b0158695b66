"""The monitor's stats rounds (issue 16: an evaluation in 250 ms). Docker answers a
stats read at its collector's next round, once a second: an evaluation no longer
waits for it, it takes the last round that finished and starts the next."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from backout.errors import ExternalError
from backout.signals.engine import StatsReader


class Engine:
    """A platform whose stats rounds the test finishes: each call takes the next
    answer, and waits for ``go`` when ``held``."""

    def __init__(self, *answers: dict[str, dict[str, float]] | ExternalError) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []
        self.go = threading.Event()
        self.held = False
        self.entered = threading.Event()

    def stats(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        self.calls.append(list(container_ids))
        self.entered.set()
        if self.held:
            assert self.go.wait(10)
        answer = self.answers.pop(0)
        if isinstance(answer, ExternalError):
            raise answer
        return answer


def mem(value: float) -> dict[str, dict[str, float]]:
    return {"c1": {"memory_percent": value, "cpu_percent": 1.0}}


def test_the_first_read_waits_for_its_round() -> None:
    engine = Engine(mem(10))
    engine.held = True
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    threading.Timer(0.2, engine.go.set).start()
    assert reader.read(["c1"]) == mem(10)  # not {}: it waited


def test_a_slow_round_is_used_by_a_later_read_and_not_started_twice() -> None:
    engine = Engine(mem(10), mem(20), mem(30))
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    assert reader.read(["c1"]) == mem(10)
    engine.held = True
    engine.entered.clear()
    # round 2 does not finish in time: the evaluation goes on with round 1's figures
    assert reader.read(["c1"]) == mem(10)
    assert engine.entered.wait(5)
    assert reader.read(["c1", "c2"]) == mem(10)  # still running: not started again
    assert len(engine.calls) == 2
    engine.go.set()
    reader._round.join(5)  # type: ignore[union-attr]
    engine.held = False
    # the next read takes round 2 (it finished), then starts round 3 with today's ids
    got = reader.read(["c1", "c2"])
    assert got in (mem(20), mem(30))  # round 3 may finish within the wait, or not
    assert engine.calls[-1] == ["c1", "c2"]


def test_a_round_that_finishes_within_the_wait_is_used_at_once() -> None:
    engine = Engine(mem(10), mem(20))
    reader = StatsReader(engine, wait=5.0)  # type: ignore[arg-type]
    assert reader.read(["c1"]) == mem(10)
    assert reader.read(["c1"]) == mem(20)  # fresh: the fakes' rounds are instant


def test_a_failed_round_raises_at_the_read_that_uses_it() -> None:
    engine = Engine(mem(10), ExternalError("engine gone"), mem(30))
    reader = StatsReader(engine, wait=5.0)  # type: ignore[arg-type]
    assert reader.read(["c1"]) == mem(10)
    with pytest.raises(ExternalError, match="engine gone"):
        reader.read(["c1"])
    assert reader.read(["c1"]) == mem(30)  # and the next round reads again
