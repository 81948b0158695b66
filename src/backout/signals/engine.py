"""Container signals from the platform, per service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backout.platforms.base import ContainerInfo, Platform, newest_running, started_epoch


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
    by_service: dict[str, list[ContainerInfo]] = {}
    for c in containers:
        by_service.setdefault(c.service, []).append(c)
    return {name: service_signals(name, group, stats) for name, group in by_service.items()}


# Best first: the replica a service's health is read from.
_HEALTH_ORDER = {"healthy": 0, None: 1, "starting": 2, "unhealthy": 3}


def _health_rank(c: ContainerInfo) -> tuple[int, int]:
    return _HEALTH_ORDER.get(c.health, 3), c.failing_streak


def service_signals(service: str, containers: Sequence[ContainerInfo],
                    stats: Mapping[str, Mapping[str, float]]) -> ContainerSignals:
    """One service's signals from its containers (one, replicas, or the two of a
    start-first switch). The health rule is about an outage: the service is down
    only when none of them runs, and its health is that of its best running
    container (a switch's new one still starting, or one replica of three failing,
    is no outage; every replica of a bad release failing is); when none runs, its
    worst (an exited leftover must not hide the streak of the one that failed).
    Restarts add up (a crash loop in any replica shows); memory is the fullest
    one's (the one an OOM kill takes); CPU adds up. The image is what
    ``newest_running`` says runs now (what a switch is moving to), as every other
    reader of the running release sees it."""
    running = [c for c in containers if c.state == "running"]
    health = min(running, key=_health_rank) if running else max(containers, key=_health_rank)
    now = newest_running(containers).get(service)
    return ContainerSignals(
        service, bool(running), health.health, health.failing_streak,
        sum(c.restart_count for c in containers),
        max((stats.get(c.id, {}).get("memory_percent", 0.0) for c in running), default=0.0),
        sum(stats.get(c.id, {}).get("cpu_percent", 0.0) for c in running),
        (now or max(containers, key=started_epoch)).image_id)
