"""The exclusive operation lock: two mutating operations never run at once.

The kernel's ``flock`` is the source of truth (it dies with its holder, so a
``kill -9`` never leaves a lock that blocks forever); next to it the holder writes
who it is (pid, host, process start time, command) so the one refused can be told
who holds it, and the one taking over after a crash can say whose lock it was.
A clean release empties the record, so a non-empty record under a free lock is
the trace of a holder that died.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from backout.errors import LockedError
from backout.state.dirs import private_dir

LOCK_NAME = "lock"
MONITOR_LOCK_NAME = "monitor.lock"  # one monitor per project (not an operation lock)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if gone.

    With the pid it identifies a process uniquely: a recycled pid has another
    start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    start_time: str | None
    command: str
    since: str

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {self.since})"

    def is_alive(self) -> bool | None:
        """True/False on this host; None when the holder is on another host."""
        if self.host != socket.gethostname():
            return None
        started = process_start_time(self.pid)
        return started is not None and started == self.start_time


class OperationLock:
    def __init__(self, state_dir: Path, name: str = LOCK_NAME) -> None:
        self.path = state_dir / name
        self._fd: int | None = None
        self.took_over: LockHolder | None = None

    def acquire(self, command: str) -> OperationLock:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd, retries=10)
            os.close(fd)
            who = holder.describe() if holder else "another process (still starting)"
            raise LockedError(
                f"another backout operation holds the lock: {who}",
                fix="wait for it to finish (see `backout status`), then retry",
            ) from None
        previous = self._read_holder(fd)
        if previous is not None:
            # Free lock, yet a record: its holder died without releasing (kill -9,
            # power loss). The kernel already dropped its flock; we take over.
            self.took_over = previous
        me = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            start_time=process_start_time(os.getpid()),
            command=command,
            since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OperationLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> LockHolder | None:
        """Who holds the lock now, without taking it (for ``backout status``)."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read_holder(fd, retries=10)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _read_holder(fd: int, retries: int = 0) -> LockHolder | None:
        for attempt in range(retries + 1):
            raw = os.pread(fd, 4096, 0)
            if raw:
                try:
                    return LockHolder(**json.loads(raw))
                except (ValueError, TypeError):
                    pass
            if attempt < retries:
                time.sleep(0.05)  # the holder is between flock and writing its record
        return None
