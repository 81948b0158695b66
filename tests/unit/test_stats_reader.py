"""The monitor's stats rounds (issue 16: an evaluation in 250 ms). Docker answers a
stats read at its collector's next round, once a second: an evaluation does not wait
for it; it takes a fresh round if one comes within a short wait, else the round that
finished since the last evaluation, and never the same round twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from backout.errors import ExternalError
from backout.signals.engine import StatsReader

Stats = dict[str, dict[str, float]]


def mem(value: float, *ids: str) -> Stats:
    return {cid: {"memory_percent": value, "cpu_percent": 1.0} for cid in ids or ("c1",)}


class Engine:
    """A platform whose stats rounds the test finishes one by one: call i answers
    mem(10 * i) for the containers it is asked about (or raises ``errors[i]``) once
    ``release(i)`` was called, at once when ``instant``."""

    def __init__(self, *, instant: bool = False,
                 errors: dict[int, Exception] | None = None) -> None:
        self.instant = instant
        self.errors = errors or {}
        self.calls: list[list[str]] = []
        self._go: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, i: int) -> threading.Event:
        with self._lock:
            return self._go.setdefault(i, threading.Event())

    def release(self, i: int, after: float = 0.0) -> None:
        threading.Timer(after, self._event(i).set).start()

    def stats(self, container_ids: Sequence[str]) -> Stats:
        with self._lock:
            i = len(self.calls)
            self.calls.append(list(container_ids))
        if not self.instant:
            assert self._event(i).wait(10)
        if i in self.errors:
            raise self.errors[i]
        return mem(10.0 * i, *container_ids)


def calls_reach(engine: Engine, n: int) -> None:
    """Wait until the n-th round has called the platform (a round's thread runs on
    its own)."""
    deadline = time.monotonic() + 10
    while len(engine.calls) < n:
        assert time.monotonic() < deadline, engine.calls
        time.sleep(0.001)


def finished(reader: StatsReader) -> None:
    assert reader._round is not None
    reader._round.join(10)
    assert not reader._round.is_alive()


def test_the_first_read_waits_for_its_round() -> None:
    engine = Engine()
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    engine.release(0, after=0.2)
    assert reader.read(["c1"]) == mem(0)  # not {}: it waited


def test_no_round_is_given_twice_and_a_late_one_is_taken_by_the_next_read() -> None:
    engine = Engine()
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    engine.release(0)
    assert reader.read(["c1"]) == mem(0)
    # the next read's round started at once (round 1, not finished): a read now
    # waits for it rather than taking round 0 a second time
    calls_reach(engine, 2)
    engine.release(1, after=0.2)
    assert reader.read(["c1"]) == mem(10)
    # round 2 (started by that read) finishes before the next read: that read starts
    # round 3, which is late, and takes round 2
    engine.release(2)
    finished(reader)
    assert reader.read(["c1"]) == mem(20)
    calls_reach(engine, 4)
    time.sleep(0.05)
    assert len(engine.calls) == 4  # round 3 still running: no fifth
    # and round 3 goes to the read after, which waits for it
    engine.release(3, after=0.2)
    assert reader.read(["c1"]) == mem(30)


def test_a_container_the_round_does_not_know_waits_for_the_round_under_way() -> None:
    """A switch's new container is not in the round started before it: its figures
    come from the round under way (asked about it), not a 0 % that reads as one."""
    engine = Engine()
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    engine.release(0)
    assert reader.read(["c1"]) == mem(0)
    engine.release(1)
    finished(reader)  # round 1: c1 alone
    engine.release(2, after=0.2)
    assert reader.read(["c1", "new"]) == mem(20, "c1", "new")
    assert engine.calls[2] == ["c1", "new"]


def test_a_new_container_gets_a_round_asked_about_it_even_behind_a_late_one() -> None:
    """The round under way (started before the container existed) is late: the read
    waits for it, then for one asked about the new container, not a 0 % for it."""
    engine = Engine()
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    engine.release(0)
    assert reader.read(["c1"]) == mem(0)
    calls_reach(engine, 2)  # round 1, asked about c1 alone, held
    engine.release(1, after=0.1)
    engine.release(2, after=0.2)
    assert reader.read(["c1", "new"]) == mem(20, "c1", "new")
    assert engine.calls[2] == ["c1", "new"]


def test_a_container_a_round_was_asked_about_is_not_waited_for_again() -> None:
    """A running container the engine gives no figures for (its answer, every round):
    the reads do not wait a round for it each time."""

    class Silent(Engine):
        def stats(self, container_ids: Sequence[str]) -> Stats:
            got = super().stats(container_ids)
            return {cid: v for cid, v in got.items() if cid != "mute"}

    engine = Silent()
    reader = StatsReader(engine, wait=0.0)  # type: ignore[arg-type]
    engine.release(0)
    assert reader.read(["c1", "mute"]) == mem(0)
    engine.release(1)
    finished(reader)  # round 1, asked about both, answered for c1 alone
    # round 2 is not released while this read runs: it must not wait for it
    assert reader.read(["c1", "mute"]) == mem(10)
    assert reader._round is not None and reader._round.is_alive()  # round 2, still held
    engine.release(2)


def test_a_round_that_finishes_within_the_wait_is_taken_instead() -> None:
    engine = Engine(instant=True)
    reader = StatsReader(engine, wait=5.0)  # type: ignore[arg-type]
    assert reader.read(["c1"]) == mem(0)
    finished(reader)  # round 1, started at the end of the first read
    assert reader.read(["c1"]) == mem(20)  # round 2, fresh; round 1 is never used


def test_without_a_wait_every_read_is_a_round_of_its_own() -> None:
    """A deploy's watch: figures as of each evaluation, and no rounds in between."""
    engine = Engine(instant=True)
    reader = StatsReader(engine, wait=None)  # type: ignore[arg-type]
    assert [reader.read(["c1"]) for _ in range(3)] == [mem(0), mem(10), mem(20)]
    assert len(engine.calls) == 3


def test_a_failed_round_raises_at_the_read_that_takes_it() -> None:
    engine = Engine(instant=True, errors={2: ExternalError("engine gone")})
    reader = StatsReader(engine, wait=5.0)  # type: ignore[arg-type]
    assert reader.read(["c1"]) == mem(0)
    finished(reader)
    with pytest.raises(ExternalError, match="engine gone"):
        reader.read(["c1"])  # round 2, fresh, failed
    finished(reader)
    assert reader.read(["c1"]) == mem(40)  # and the next rounds read again


def test_any_error_of_a_round_is_raised_in_the_reading_thread() -> None:
    """Not printed by the round's thread (a traceback on stderr): raised where the
    monitor handles errors, as when it read the stats itself."""

    class Broken:
        def stats(self, container_ids: Sequence[str]) -> Stats:
            raise RuntimeError("bug in a platform")

    reader = StatsReader(Broken(), wait=5.0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="bug in a platform"):
        reader.read(["c1"])
