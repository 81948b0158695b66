"""HTTP health probes with consecutive-failure counting, per URL."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backout.adapters import http
from backout.config import ServiceConfig
from backout.environment import Environment


@dataclass
class ProbeResult:
    service: str
    ok: bool
    status: int | None
    latency: float
    detail: str


@dataclass
class ProbeTracker:
    """Counts consecutive failed probes per service; a success resets the count.

    A failure counts only ``spacing`` seconds or more after the last one counted: an
    evaluation the engine's events start early (a container's exit, then its restart
    a moment later) must not turn one moment of an outage into "failed twice", which
    a rule on consecutive failures would read as two intervals of failing."""

    consecutive: dict[str, int] = field(default_factory=dict)
    spacing: float = 0.0
    clock: Callable[[], float] = time.monotonic
    counted_at: dict[str, float] = field(default_factory=dict)

    def probe(self, env: Environment, svc: ServiceConfig, timeout: float = 5.0, *,
              at: float | None = None) -> ProbeResult:
        """``at``: when the evaluation started (this tracker's clock): failures are spaced
        by evaluation, not by when a slow answer or an earlier probe let this one end."""
        assert svc.health_url is not None
        return self.judge(svc, http.get(env, svc.health_url, timeout=timeout), at=at)

    def judge(self, svc: ServiceConfig, p: http.Probe, *, at: float | None = None) -> ProbeResult:
        """The answer ``p`` to the service's health URL, counted as ``probe`` counts it
        (fetched elsewhere: the collector asks every service at once)."""
        ok = p.status == svc.health_status and (
            not svc.health_body or svc.health_body.encode() in p.body)
        self.count(svc.name, ok, at=at)
        detail = (f"{p.status} in {p.latency * 1000:.0f} ms" if p.status is not None
                  else f"no answer: {p.error}")
        return ProbeResult(svc.name, ok, p.status, p.latency, detail)

    def count(self, service: str, ok: bool, *, at: float | None = None) -> None:
        if ok:
            self.consecutive[service] = 0
            self.counted_at.pop(service, None)
            return
        now = self.clock() if at is None else at
        last = self.counted_at.get(service)
        if last is None or now - last >= self.spacing:
            self.consecutive[service] = self.consecutive.get(service, 0) + 1
            self.counted_at[service] = now
