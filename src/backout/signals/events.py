"""The engine's events as a wake-up for the monitor loop.

A health check Docker reports failing, a container exiting, an OOM kill or a
restart should be acted on at once, not at the next interval (issue 16). A
background thread reads the platform's event stream and sets ``wake``; the loop
waits on it between evaluations. It decides nothing: it only changes *when* the
next snapshot is taken (the policy stays pure). When the stream breaks (the
engine restarted, the socket went away) the thread opens it again after a pause;
the loop's interval covers the gap.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from backout.environment import Environment
from backout.errors import BackoutError
from backout.platforms.base import EngineEvent, EventStream, Platform


class EventWaker:
    """Sets ``wake`` for every event the platform reports, from a daemon thread."""

    def __init__(self, env: Environment, platform: Platform, *, retry_seconds: float = 5.0,
                 on_event: Callable[[EngineEvent], None] | None = None) -> None:
        self.env = env
        self.platform = platform
        self.retry_seconds = retry_seconds
        self.on_event = on_event
        self.wake = threading.Event()
        self.last: EngineEvent | None = None
        self.events = 0
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._stream: EventStream | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start listening; False (and no thread) when the platform has no events."""
        try:
            stream = self.platform.events()
        except BackoutError as exc:
            # The engine may come back: listen from then on (the loop's own reads
            # will say it is down).
            self.env.warn(f"engine events unavailable, retrying: {exc.one_line()}")
            stream = None
        else:
            if stream is None:
                return False
        self._stream = stream
        self._thread = threading.Thread(target=self._listen, name="backout-engine-events",
                                        daemon=True)
        self._thread.start()
        return True

    def _listen(self) -> None:
        while not self._stopped.is_set():
            stream = self._stream
            if stream is None:
                try:
                    stream = self.platform.events()
                except BackoutError:
                    stream = None
                if stream is None:
                    self._stopped.wait(self.retry_seconds)
                    continue
                with self._lock:
                    self._stream = stream
                if self._stopped.is_set():
                    break
            try:
                for event in stream:
                    self.last = event
                    self.events += 1
                    if self.on_event is not None:
                        self.on_event(event)
                    self.wake.set()
            except BackoutError as exc:
                self.env.warn(f"engine event stream ended: {exc.one_line()}")
            with self._lock:
                self._stream = None
            with contextlib.suppress(OSError):
                stream.close()
            self._stopped.wait(self.retry_seconds)
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        if self._thread is not None:
            self._thread.join(timeout)
