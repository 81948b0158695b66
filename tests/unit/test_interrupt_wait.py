"""``Interrupt.wait``: a child's exit code, its interruption, its timeout and the stall
tick, whether the exit wakes the wait (a pidfd, Linux) or ``Popen.wait`` looks for it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from backout.errors import InterruptedOperation
from backout.operations import interrupt
from tests.support.descriptors import high_descriptors

HAS_PIDFD = hasattr(os, "pidfd_open")


@pytest.fixture()
def intr() -> Iterator[interrupt.Interrupt]:
    """A fresh state; no descriptor (a pidfd) left open by the test's waits."""
    fds = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    yield interrupt.reset()
    interrupt.reset()
    if fds is not None:
        assert set(os.listdir("/proc/self/fd")) <= fds


@pytest.fixture(params=["pidfd", "popen-wait"])
def how(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pidfd" and not HAS_PIDFD:
        pytest.skip("no os.pidfd_open here")
    if request.param == "popen-wait" and HAS_PIDFD:
        def refuse(pid: int, flags: int = 0) -> int:
            raise OSError(38, "Function not implemented")
        monkeypatch.setattr(os, "pidfd_open", refuse)
    return str(request.param)


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_returns_the_exit_code(intr: interrupt.Interrupt, how: str) -> None:
    child = _child("import time, sys; time.sleep(0.3); sys.exit(3)")
    assert intr.wait(child, 30, "child") == 3
    assert child.returncode == 3


def test_a_child_already_reaped_is_not_watched(intr: interrupt.Interrupt, how: str) -> None:
    child = _child("import sys; sys.exit(5)")
    child.wait()
    assert intr.wait(child, 30, "child") == 5


def test_interrupted_stops_the_child_and_raises(intr: interrupt.Interrupt, how: str) -> None:
    child = _child("import time; time.sleep(60)")
    stopped: list[bool] = []
    looks = 0

    def tick() -> None:
        nonlocal looks
        looks += 1
        if looks == 2:  # the signal arrives while the child runs
            intr.enter((1, "backup"), "dump", abortable=True)
            intr.request("SIGINT")

    def stop() -> None:
        stopped.append(True)
        child.kill()

    with pytest.raises(InterruptedOperation, match="child: stopped by SIGINT"):
        intr.wait(child, 60, "child", on_stop=stop, tick=tick)
    assert stopped == [True] and child.returncode is not None and child.returncode < 0


def test_not_abortable_waits_for_the_end(intr: interrupt.Interrupt, how: str) -> None:
    intr.enter((1, "rollback"), "start writers", abortable=False)
    intr.request("SIGINT")
    child = _child("import time, sys; time.sleep(0.3); sys.exit(0)")
    assert intr.wait(child, 30, "child") == 0


def test_timeout(intr: interrupt.Interrupt, how: str) -> None:
    child = _child("import time; time.sleep(60)")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            intr.wait(child, 0.3, "child")
    finally:
        child.kill()
        child.wait()


def test_the_tick_runs_between_looks_and_may_raise(intr: interrupt.Interrupt, how: str) -> None:
    child = _child("import time; time.sleep(60)")
    calls = 0

    def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("stalled")

    try:
        with pytest.raises(RuntimeError, match="stalled"):
            intr.wait(child, 60, "child", tick=tick)
    finally:
        child.kill()
        child.wait()
    assert calls == 3


class _CountedPoll:
    """select.poll, each wait recorded: (its timeout in ms, ended by a ready fd)."""

    waits: list[tuple[float, bool]]

    def __init__(self, real: Any) -> None:
        self.real = real
        self.waits = []

    def register(self, fd: int, mask: int) -> None:
        self.real.register(fd, mask)

    def poll(self, timeout: float) -> Any:
        ready = self.real.poll(timeout)
        self.waits.append((timeout, bool(ready)))
        return ready


@pytest.mark.skipif(not HAS_PIDFD, reason="no os.pidfd_open here")
def test_the_exit_wakes_the_wait(intr: interrupt.Interrupt,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One wait of up to POLL per look, ended by the exit itself: with POLL at 60 s a
    child that exits at once is seen after one wait, not after a minute, and nothing
    looks in between (Popen.wait's own polling woke ~80 times a second)."""
    monkeypatch.setattr(interrupt, "POLL", 60.0)
    made: list[_CountedPoll] = []
    real = select.poll

    def counted() -> _CountedPoll:
        made.append(_CountedPoll(real()))
        return made[-1]

    monkeypatch.setattr(select, "poll", counted)
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1

    child = _child("import time, sys; time.sleep(0.2); sys.exit(7)")
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(intr.wait(child, None, "child",
                                                                  tick=tick)), daemon=True)
    waiter.start()
    waiter.join(20)  # a wait the exit does not end would sit out its minute
    assert got == [7] and ticks == 0
    assert len(made) == 1 and made[0].waits == [(60000.0, True)]


@pytest.mark.skipif(not HAS_PIDFD, reason="no os.pidfd_open here")
def test_a_child_another_thread_is_reaping_does_not_spin(intr: interrupt.Interrupt) -> None:
    """The pidfd stays readable once the child has exited; while another thread holds
    Popen's wait lock, poll() says None: the wait must not turn into a busy loop."""
    child = _child("import sys; sys.exit(4)")
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has exited, unreaped
    lock = child._waitpid_lock  # type: ignore[attr-defined]  # what Popen.wait holds
    lock.acquire()
    threading.Timer(0.5, lock.release).start()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1

    assert intr.wait(child, 30, "child", tick=tick) == 4
    assert 1 <= ticks <= 10  # a look every POLL (0.1 s) while the lock is held


def test_a_descriptor_past_1023(intr: interrupt.Interrupt, how: str) -> None:
    """A long-running process may hold a thousand descriptors: the pidfd is then
    numbered past FD_SETSIZE, which select() refuses (ValueError)."""
    with high_descriptors():
        child = _child("import time, sys; time.sleep(0.2); sys.exit(6)")
        assert intr.wait(child, 30, "child") == 6
