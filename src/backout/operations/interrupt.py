"""What SIGINT and SIGTERM mean while an operation runs.

A terminal's Ctrl-C goes to its whole foreground process group. backout's children
(dump and load pipes, ``docker compose``) run in sessions of their own
(``backout.proc.CHILD``), so the signal reaches backout alone, and backout decides:

* The first SIGINT or SIGTERM asks the operation to wind down safely. The step
  under way finishes; only a long step whose effect the plan can undo (a dump, a
  restore, the deploy's watch) is cut short, by stopping its child. The executor
  then skips the remaining steps and runs the plan's always and on-failure steps
  (put the safety backup back, start the writers, roll the deploy back), and the
  operation ends ``interrupted``. Cleanup steps are never cut short.
* A second signal exits at once. The operation stays unfinished (the journal says
  where) and ``backout resume`` finishes it.

A Python signal handler only runs between bytecodes of the main thread, so long
waits poll this module (``check``, ``sleep``, ``wait``) instead of blocking.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from backout.errors import InterruptedOperation

POLL = 0.1  # seconds between looks at a child or the flag


class Interrupt:
    """The interrupt state of this process: asked for or not, and by which signal."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: str | None = None
        self.count = 0
        # May the step under way be cut short? Set by the executor per step.
        self.abortable = False
        self.operation: tuple[int, str] | None = None  # (id, kind) being run
        self.step: str | None = None

    def request(self, name: str) -> None:
        self.count += 1
        self.signal = self.signal or name
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def stop_now(self) -> bool:
        """Should the step under way stop its child now?"""
        return self.requested and self.abortable

    def check(self, what: str) -> None:
        """Raise InterruptedOperation if the step under way is to be cut short."""
        if self.stop_now:
            raise InterruptedOperation(f"{what}: stopped by {self.signal}")

    def sleep(self, seconds: float) -> None:
        """time.sleep that ends early when the step is to be cut short."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self.stop_now:
            time.sleep(min(POLL, left))

    def wait(self, child: subprocess.Popen[Any], timeout: float | None, what: str,
             on_stop: Callable[[], None] | None = None,
             tick: Callable[[], None] | None = None) -> int:
        """``child.wait(timeout)`` that stops the child (``on_stop``, default: kill
        it) and raises InterruptedOperation when the step is to be cut short.
        ``tick`` runs at every poll (a stall watch raises from it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with exit_watch(child) as exited:
            while (rc := exited(POLL)) is None:
                if tick is not None:
                    tick()
                if self.stop_now:
                    (on_stop or child.kill)()
                    child.wait()
                    raise InterruptedOperation(f"{what}: stopped by {self.signal}")
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(child.args, timeout or 0)
        return rc

    def enter(self, operation: tuple[int, str], step: str, *, abortable: bool) -> None:
        self.operation, self.step, self.abortable = operation, step, abortable

    def leave(self) -> None:
        self.step, self.abortable = None, False


@contextlib.contextmanager
def exit_watch(child: subprocess.Popen[Any]) -> Iterator[Callable[[float], int | None]]:
    """``exited(seconds)``: the child's exit code once it has exited, waiting up to
    ``seconds`` for it; None while it runs. On Linux the wait wakes when the child
    exits (a pidfd); ``Popen.wait(timeout)`` instead looks ever less often (0.5 ms
    doubling to 50 ms, from the start at each call): some 80 wake-ups a second, each
    taking the GIL from the threads that move a dump's bytes. With one core taken by
    another process, a 1 GB MySQL backup took 41.5-45.2 s with it (five runs) and
    39.4-44.5 s without (three; issue 16). Without a pidfd (another OS, an old kernel,
    a child already reaped), ``Popen.wait`` as before."""
    pidfd = None
    if child.returncode is None and hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(child.pid)
    try:
        watch = None
        if pidfd is not None:
            watch = select.poll()  # not select(): a descriptor past 1023 is refused there
            watch.register(pidfd, select.POLLIN)

        def exited(seconds: float) -> int | None:
            if watch is not None:
                if not watch.poll(seconds * 1000):  # readable once the child has exited
                    return child.poll()
                if (rc := child.poll()) is not None:
                    return rc
                # exited, and another thread is reaping it now (Popen's wait lock): the
                # pidfd stays readable, so waiting on it again would spin
            try:
                return child.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                return None

        yield exited
    finally:
        if pidfd is not None:
            os.close(pidfd)


_current = Interrupt()


def current() -> Interrupt:
    return _current


def reset() -> Interrupt:
    """A fresh state (a new operation in the same process, and tests)."""
    global _current
    _current = Interrupt()
    return _current


@contextlib.contextmanager
def handling(notify: Callable[[str], None]) -> Iterator[Interrupt]:
    """Install the SIGINT/SIGTERM handlers for the duration of an operation.

    ``notify`` tells the operator what the first signal does; a second one raises
    KeyboardInterrupt (the CLI says `backout resume` will finish). Outside the main
    thread (tests) nothing is installed.
    """
    state = reset()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        state.request(name)
        if state.count > 1:
            raise KeyboardInterrupt
        where = f" ({state.step})" if state.step else ""
        notify(f"{name} received: finishing the step under way{where} safely, then the "
               "cleanup steps (safety backup back if needed, writers started); press Ctrl-C "
               "again to stop at once and leave it to `backout resume`")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    except KeyboardInterrupt:
        raise  # the operation it left unfinished stays named, for the exit message
    else:
        state.operation = None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
