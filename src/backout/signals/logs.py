"""Error lines in container logs, per window, by each service's configured pattern."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backout.config import ServiceConfig
from backout.platforms.base import Platform


@dataclass
class LogWatcher:
    """Reads only what is new since the last read; keeps the last matching lines."""

    since: dict[str, datetime] = field(default_factory=dict)
    recent: dict[str, deque[tuple[datetime, str]]] = field(default_factory=dict)

    def read(self, platform: Platform, svc: ServiceConfig, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        start = self.since.get(svc.name, now - timedelta(seconds=60))
        text = platform.logs(svc.name, start.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), timestamps=True)
        pattern = re.compile(svc.log_error_pattern)
        lines = self.recent.setdefault(svc.name, deque(maxlen=200))
        for line in text.splitlines():
            stamp, _, text = line.partition(" ")
            try:
                ts = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                ts, text = now, line
            if ts >= start and pattern.search(text):
                lines.append((ts, text))
        self.since[svc.name] = now

    def errors_in(self, service: str, window: float, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=window)
        return sum(1 for ts, _ in self.recent.get(service, ()) if ts >= cutoff)

    def last_lines(self, service: str, n: int = 3) -> list[str]:
        return [text for _, text in list(self.recent.get(service, ()))[-n:]]
