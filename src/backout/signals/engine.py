"""Container signals from the platform, per service."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
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
    # None: no figures for any running container (the stats read failed, an engine
    # with no memory cgroup, a container gone between the list and the stats): not 0 %
    memory_percent: float | None
    cpu_percent: float | None
    image_id: str = ""


STATS_WAIT = 0.02  # seconds an evaluation waits for a fresh stats round (Docker takes
# up to a second: this is for an engine that answers at once)


class StatsReader:
    """The running containers' stats without waiting on the engine's stats cycle.

    Docker answers a stats read, even a one-shot one, at the next publication of its
    stats collector, which runs once a second while anyone reads (the first reader
    wakes it for itself alone; the others wait for the next round): the reads took 1 s
    of an evaluation's 1.1 s. So a round runs in the background: ``read`` starts one
    and waits ``wait`` seconds for it; if it is not done, the read takes the round that
    finished since the last read (started when that read ended: figures a few seconds
    old). No round is given to two reads (one sample must not count as two
    evaluations, as a rule's ``consecutive`` or ``for`` would count it): when
    evaluations come faster than the engine's rounds, a read waits for the round under
    way. The first read waits for its round. ``wait`` None: always a fresh round (a
    deploy's watch, which has no hurry). A read with a container the round it would
    take was not asked about (one started since) waits for a round that was. A failed
    round raises at the read that takes it, as the read itself did."""

    def __init__(self, platform: Platform, wait: float | None = STATS_WAIT) -> None:
        self.platform, self.wait = platform, wait
        self._lock = threading.Lock()
        # the last finished round: its stats, or what it raised (raised again by the
        # read that takes it, in the monitor's thread, where errors are handled)
        self._latest: dict[str, dict[str, float]] | Exception | None = None
        self._asked: frozenset[str] = frozenset()  # the containers that round was asked about
        self._asking: frozenset[str] = frozenset()  # those the round under way was asked about
        self._finished = 0  # rounds finished
        self._taken = 0  # the round the last read took (its number)
        self._round: threading.Thread | None = None

    def read(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        ids = list(container_ids)
        if not self._running():
            self._start(ids)
        with self._lock:
            unused = self._finished > self._taken
        assert self._round is not None
        self._round.join(self.wait if unused and self.wait is not None else None)
        with self._lock:
            latest, asked, self._taken = self._latest, self._asked, self._finished
        if not set(ids) <= asked:
            # a running container the round taken was not asked about (a switch's new
            # one): its figures come from a round asked about it, not a 0 % that reads
            # as one (a container a round was asked about and has no figures for is the
            # engine's answer: not waited for again)
            if not (self._running() and set(ids) <= self._asking):
                if self._running():
                    self._round.join()  # one round at a time
                self._start(ids)
            self._round.join()
            with self._lock:
                latest, self._taken = self._latest, self._finished
        if not self._running() and self.wait is not None:
            self._start(ids)  # the next read's round, under way meanwhile
        if isinstance(latest, Exception):
            raise latest
        return dict(latest or {})

    def _running(self) -> bool:
        return self._round is not None and self._round.is_alive()

    def _start(self, container_ids: list[str]) -> None:
        self._asking = frozenset(container_ids)
        self._round = threading.Thread(target=self._fetch, args=(container_ids,),
                                       daemon=True, name="engine stats")
        self._round.start()

    def _fetch(self, container_ids: list[str]) -> None:
        try:
            got: dict[str, dict[str, float]] | Exception = self.platform.stats(container_ids)
        except Exception as exc:  # handed to the reading thread
            got = exc
        with self._lock:
            self._latest, self._asked = got, frozenset(container_ids)
            self._finished += 1


def container_signals(platform: Platform, stats: StatsReader | None = None,
                      on_stats_error: Callable[[BackoutError], None] | None = None,
                      ) -> dict[str, ContainerSignals]:
    """Every service's container signals; ``stats``: the reader that keeps the stats
    rounds of a monitor (none: read now, and wait for it). A stats read that fails
    raises, or with ``on_stats_error`` is handed to it and the signals keep what the
    container list says (state, health, restarts: an outage must not go unseen
    because the stats failed) with memory and CPU unknown (None)."""
    containers = platform.containers()
    running = [c.id for c in containers if c.state == "running"]
    found: Mapping[str, Mapping[str, float]] | None
    try:
        found = stats.read(running) if stats is not None else platform.stats(running)
    except BackoutError as exc:
        if on_stats_error is None:
            raise
        on_stats_error(exc)
        found = None
    by_service: dict[str, list[ContainerInfo]] = {}
    for c in containers:
        by_service.setdefault(c.service, []).append(c)
    return {name: service_signals(name, group, found) for name, group in by_service.items()}


# Best first: the replica a service's health is read from.
_HEALTH_ORDER = {"healthy": 0, None: 1, "starting": 2, "unhealthy": 3}


def _health_rank(c: ContainerInfo) -> tuple[int, int]:
    return _HEALTH_ORDER.get(c.health, 3), c.failing_streak


def service_signals(service: str, containers: Sequence[ContainerInfo],
                    stats: Mapping[str, Mapping[str, float]] | None) -> ContainerSignals:
    """One service's signals from its containers (one, replicas, or the two of a
    start-first switch). The health rule is about an outage: the service is down
    only when none of them runs, and its health is that of its best running
    container (a switch's new one still starting, or one replica of three failing,
    is no outage; every replica of a bad release failing is); when none runs, its
    worst (an exited leftover must not hide the streak of the one that failed).
    Restarts add up (a crash loop in any replica shows); memory is the fullest
    one's (the one an OOM kill takes); CPU adds up; both over the running containers
    the stats have figures for (None when none has; ``stats`` None: the read
    failed). The image is what
    ``newest_running`` says runs now (what a switch is moving to), as every other
    reader of the running release sees it."""
    running = [c for c in containers if c.state == "running"]
    health = min(running, key=_health_rank) if running else max(containers, key=_health_rank)
    now = newest_running(containers).get(service)
    measured = [stats[c.id] for c in running if c.id in stats] if stats is not None else []
    return ContainerSignals(
        service, bool(running), health.health, health.failing_streak,
        sum(c.restart_count for c in containers),
        max((m["memory_percent"] for m in measured if "memory_percent" in m), default=None),
        sum(m["cpu_percent"] for m in measured if "cpu_percent" in m) if measured else None,
        (now or max(containers, key=started_epoch)).image_id)
