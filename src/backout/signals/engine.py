"""Container signals from the platform, per service."""

from __future__ import annotations

from dataclasses import dataclass

from backout.platforms.base import Platform


@dataclass(frozen=True)
class ContainerSignals:
    service: str
    running: bool
    health: str | None
    failing_streak: int  # consecutive failed compose healthchecks
    restart_count: int
    memory_percent: float
    cpu_percent: float
    image_id: str = ""


def container_signals(platform: Platform) -> dict[str, ContainerSignals]:
    containers = platform.containers()
    stats = platform.stats([c.id for c in containers if c.state == "running"])
    out = {}
    for c in containers:
        s = stats.get(c.id, {})
        out[c.service] = ContainerSignals(
            c.service, c.state == "running", c.health, c.failing_streak, c.restart_count,
            s.get("memory_percent", 0.0), s.get("cpu_percent", 0.0), c.image_id)
    return out
