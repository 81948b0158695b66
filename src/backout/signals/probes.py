"""HTTP health probes with consecutive-failure counting, per URL."""

from __future__ import annotations

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
    """Counts consecutive failed probes per service; a success resets the count."""

    consecutive: dict[str, int] = field(default_factory=dict)

    def probe(self, env: Environment, svc: ServiceConfig, timeout: float = 5.0) -> ProbeResult:
        assert svc.health_url is not None
        p = http.get(env, svc.health_url, timeout=timeout)
        ok = p.status == svc.health_status and (
            not svc.health_body or svc.health_body.encode() in p.body)
        self.consecutive[svc.name] = 0 if ok else self.consecutive.get(svc.name, 0) + 1
        detail = (f"{p.status} in {p.latency * 1000:.0f} ms" if p.status is not None
                  else f"no answer: {p.error}")
        return ProbeResult(svc.name, ok, p.status, p.latency, detail)
