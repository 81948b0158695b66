"""Steady HTTP traffic on 127.0.0.1 from a background thread, counting failures.

The error-rate rules judge requests, so the demo (and the tests) need traffic as
production would have it. Bounded in time, so a forgotten one cannot run forever.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

from backout.adapters import http


class Traffic:
    def __init__(self, url: str, period: float = 0.05, limit: float = 600.0) -> None:
        self.url, self.period, self.limit = url, period, limit
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.sent += 1
            try:
                http.urlopen(self.url, timeout=10).read()
            except (urllib.error.URLError, OSError):
                self.failed += 1
            self.stop.wait(self.period)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
