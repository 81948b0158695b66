"""Container signals from the platform, per service."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backout.errors import BackoutError
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


STATS_WAIT = 0.1  # seconds an evaluation waits for this round's stats


class StatsReader:
    """The running containers' stats without waiting on the engine's stats cycle.

    Docker answers a stats read, even a one-shot one, at the next publication of its
    stats collector, which runs once a second while anyone reads (the first reader
    wakes it for itself alone; the others wait for the next round): the reads took 1 s
    of an evaluation's 1.1 s. Each ``read`` starts a round in the background and waits
    ``wait`` seconds for it; a round not done by then is used by a later read, which
    gets the last finished round (started an evaluation earlier: memory and CPU a few
    seconds old). A round still running is not started again. The first read waits
    for its round: a monitor starts with real figures. A failed round raises at the
    read that would use it, as the read itself did."""

    def __init__(self, platform: Platform, wait: float = STATS_WAIT) -> None:
        self.platform, self.wait = platform, wait
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, float]] | BackoutError | None = None
        self._round: threading.Thread | None = None

    def read(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        if self._round is None or not self._round.is_alive():
            ids = list(container_ids)
            self._round = threading.Thread(target=self._fetch, args=(ids,), daemon=True,
                                           name="engine stats")
            self._round.start()
        with self._lock:
            first = self._latest is None
        self._round.join(None if first else self.wait)
        with self._lock:
            latest = self._latest
        if isinstance(latest, BackoutError):
            raise latest
        return dict(latest or {})

    def _fetch(self, container_ids: list[str]) -> None:
        try:
            got: dict[str, dict[str, float]] | BackoutError = self.platform.stats(container_ids)
        except BackoutError as exc:
            got = exc
        with self._lock:
            self._latest = got


def container_signals(platform: Platform,
                      stats: StatsReader | None = None) -> dict[str, ContainerSignals]:
    """Every service's container signals; ``stats``: the reader that keeps the stats
    rounds of a monitor (none: read now, and wait for it)."""
    containers = platform.containers()
    running = [c.id for c in containers if c.state == "running"]
    found = stats.read(running) if stats is not None else platform.stats(running)
    by_service: dict[str, list[ContainerInfo]] = {}
    for c in containers:
        by_service.setdefault(c.service, []).append(c)
    return {name: service_signals(name, group, found) for name, group in by_service.items()}


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
