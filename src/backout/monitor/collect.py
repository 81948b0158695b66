"""Collecting one ``Snapshot`` of every signal the policy reads, per service.

Signals (``name{service=NAME}``, see backout.policy.rules):
- ``health_consecutive_failures``: consecutive failed HTTP probes of the
  service's health URL, or Docker's healthcheck failing streak, whichever is
  larger (so a service whose only health signal is a compose healthcheck is
  watched too); a container that is not running counts as a failed probe.
- from the service's ``metrics_url`` (Prometheus text, scraped directly):
  ``error_rate`` (5xx share of requests over the window, or since the service's
  process started again if that is later; scrapes and health probes excluded),
  ``p95_latency_seconds``, ``circuit_breakers_open``, ``db_pool_utilization`` (in
  use / size), ``auth_failure_ratio``, ``queue_lag``.
- from the engine: ``memory_percent`` (from the last stats round that finished:
  ``StatsReader``; not collected for a service with no figures in it, whether the read
  failed or the engine has none), ``restarts`` (since the monitor started). A failed
  stats read keeps the rest: state, health and restarts come from the container list.
- ``log_errors``: error lines in the window, by the service's log pattern.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from backout.adapters import http
from backout.backup.freshness import freshness
from backout.config import Config, ServiceConfig
from backout.environment import Environment
from backout.errors import BackoutError
from backout.platforms.base import Platform
from backout.policy import promtext, series
from backout.policy.rules import Snapshot, signal_key
from backout.signals.engine import StatsReader, container_signals
from backout.signals.logs import LogWatcher
from backout.signals.probes import ProbeTracker
from backout.state import Store

REQUESTS = 'http_requests_total{path!~"/metrics|/health.*|/api/v1/health/check|/healthy-check"}'
ERRORS = ('http_requests_total{status=~"5..",'
          'path!~"/metrics|/health.*|/api/v1/health/check|/healthy-check"}')
LATENCY = 'http_request_duration_seconds{path!~"/metrics|/health.*|/api/v1/health/check|/healthy-check"}'
LATENCY_COUNT = ('http_request_duration_seconds_count'
                 '{path!~"/metrics|/health.*|/api/v1/health/check|/healthy-check"}')
# Events (requests, logins) a share needs since a restart before it is rated on its own.
MIN_EVENTS = 20


@dataclass
class ServiceView:
    """What the live screen shows for one service."""

    service: str
    state: str = "?"
    health: str | None = None
    probe: str = ""
    latency_ms: float | None = None
    memory_percent: float | None = None
    cpu_percent: float | None = None
    restarts: int = 0
    log_errors: int = 0
    last_errors: list[str] = field(default_factory=list)


# Threads one evaluation asks on at most: the engine's figures and every service's
# answers at once on a usual stack; a larger one queues the rest.
MAX_FETCHES = 16


@dataclass(frozen=True)
class Fetched:
    """One service's answers to an evaluation: health URL and /metrics (None: none
    configured), and whether its new log lines could be read."""

    health: http.Probe | None
    metrics: http.Probe | None
    logs_read: bool


@dataclass
class Collector:
    env: Environment
    config: Config
    platform: Platform
    window: float = 15.0
    probes: ProbeTracker = field(default_factory=ProbeTracker)
    logs: LogWatcher = field(default_factory=LogWatcher)
    restarts_at_start: dict[str, int] = field(default_factory=dict)
    store: series.SeriesStore | None = None
    images: dict[str, str] = field(default_factory=dict)  # running service -> image ID
    # The state store, for the age of the last good backup ([backups] rpo_hours).
    state: Store | None = None
    _rpo: tuple[float, float | None] | None = None  # (read at, backup_rpo_ratio)
    stats: StatsReader | None = None

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = series.SeriesStore(self.window * 2 + 30)
        if self.stats is None:
            self.stats = StatsReader(self.platform)

    def collect(self, t: float | None = None) -> tuple[Snapshot, dict[str, ServiceView]]:
        t = time.time() if t is None else t
        started = self.probes.clock()  # the probes' failures are spaced from here
        signals: dict[str, float | None] = {}
        views: dict[str, ServiceView] = {}
        watched = {name: svc for name, svc in self.config.services.items()
                   if svc.kind != "database"}
        # Every service's health URL, /metrics and new log lines, and the engine's
        # figures, asked at once: an evaluation waits for the slowest answer, not for
        # the sum of them. What they say is then read in order, below.
        with ThreadPoolExecutor(max_workers=min(MAX_FETCHES, 1 + len(watched)),
                                thread_name_prefix="backout-collect") as pool:
            engine_read = pool.submit(container_signals, self.platform, self.stats,
                                      self._stats_failed)
            fetches = {name: pool.submit(self._fetch, svc) for name, svc in watched.items()}
            try:
                engine = engine_read.result()
            except BackoutError as exc:
                self.env.warn(f"engine signals unavailable: {exc.one_line()}")
                engine = {}
            fetched = {name: f.result() for name, f in fetches.items()}
        if engine:
            self.images = {name: c.image_id for name, c in engine.items() if c.running}
        for name, svc in watched.items():
            got = fetched[name]
            view = views[name] = ServiceView(name)
            c = engine.get(name)
            failures = 0
            if c is not None:
                view.state = "running" if c.running else "down"
                view.health, view.restarts = c.health, c.restart_count
                view.memory_percent, view.cpu_percent = c.memory_percent, c.cpu_percent
                if not c.running:
                    signals[signal_key("memory_percent", name)] = None  # no data
                elif c.memory_percent is not None:
                    signals[signal_key("memory_percent", name)] = c.memory_percent
                # else running and no figures (the stats read failed, or the engine has
                # none for it): not collected this evaluation, as when a failed read
                # dropped every engine signal; no data would turn the level NODATA
                # (and notify twice) for one failed read
                base = self.restarts_at_start.setdefault(name, c.restart_count)
                if c.restart_count < base:
                    # a container went away (a switch's old one, a replaced one): count
                    # from what is left, not below zero
                    base = self.restarts_at_start[name] = c.restart_count
                signals[signal_key("restarts", name)] = float(c.restart_count - base)
                failures = c.failing_streak
            if got.health is not None:
                probe = self.probes.judge(svc, got.health, at=started)
                view.probe, view.latency_ms = probe.detail, probe.latency * 1000
                failures = max(failures, self.probes.consecutive.get(name, 0))
            elif c is not None and not c.running:
                failures = max(failures, 1)
            if svc.health_url or c is not None:
                signals[signal_key("health_consecutive_failures", name)] = float(failures)
            if got.metrics is not None:
                self._scrape(name, got.metrics, t, signals)
            if got.logs_read:
                view.log_errors = self.logs.errors_in(name, self.window)
                view.last_errors = self.logs.last_lines(name)
                signals[signal_key("log_errors", name)] = float(view.log_errors)
            else:
                signals[signal_key("log_errors", name)] = None
        self._external(signals)
        if self.state is not None and self.config.backups.rpo_hours > 0:
            signals["backup_rpo_ratio"] = self._rpo_ratio(t)
        return Snapshot(t, signals), views

    def _fetch(self, svc: ServiceConfig) -> Fetched:
        """One service's answers (on a thread of the evaluation's pool): its health URL,
        its /metrics page, its log lines since the last read (into ``self.logs``, whose
        state is the service's own)."""
        health = http.get(self.env, svc.health_url, timeout=5) if svc.health_url else None
        metrics = http.get(self.env, svc.metrics_url, timeout=5) if svc.metrics_url else None
        try:
            self.logs.read(self.platform, svc)
            logs_read = True
        except BackoutError:
            logs_read = False
        return Fetched(health, metrics, logs_read)

    def _stats_failed(self, exc: BackoutError) -> None:
        self.env.warn(f"memory and CPU figures unavailable this evaluation: {exc.one_line()}")

    def _rpo_ratio(self, t: float) -> float | None:
        """The age of the last good backup over the RPO; the sets are read at most every
        30 s (their manifests are on disk, not in memory)."""
        if self._rpo is None or t - self._rpo[0] >= 30:
            assert self.state is not None
            self._rpo = (t, freshness(self.config, self.state).rpo_ratio)
        return self._rpo[1]

    def _external(self, signals: dict[str, float | None]) -> None:
        """Configured extra signals: commands (a data-corruption check, user report
        counts) and PromQL queries for teams that already run Prometheus."""
        from backout.signals.external import command_value, promql

        mon = self.config.monitor
        for signal, command in mon.commands:
            signals[signal] = command_value(self.env, command)
        for signal, query in mon.promql:
            assert mon.prometheus_url is not None
            signals[signal] = promql(self.env, mon.prometheus_url, query)

    def _scrape(self, name: str, probe: http.Probe, t: float,
                signals: dict[str, float | None]) -> None:
        """The service's /metrics answer ``probe`` into the series, and its signals."""
        assert self.store is not None
        if probe.status == 200:
            page = promtext.parse(probe.body.decode(errors="replace"))
            self.store.add(name, t, page.samples, only_grows=page.only_grows)
        store, full = self.store, self.window
        # A new container (a deploy, a rollback, a restart) is rated on its own: the
        # old one's healthy requests would otherwise hide a broken release's errors
        # until they left the window.
        since = store.window_since_restart(name, end=t, window=full)
        sel = series.Selector.parse

        def window(den: str) -> float:
            # A share of the few events since a restart says little (2 failed logins
            # of 2): under MIN_EVENTS the whole window rates it, the old process's too.
            if since >= full:
                return full
            rate = series.sum_rate(store, name, sel(den), end=t, window=since)
            return since if rate is not None and rate * since >= MIN_EVENTS else full

        def put(signal: str, value: float | None) -> None:
            signals[signal_key(signal, name)] = value

        def share(num: str, den: str) -> float | None:
            # Scraped fine but nothing happened in the window (no requests, no logins):
            # that is known, not missing: no failures. None stays for a failed scrape
            # or absent series, which the policy treats as no data.
            w = window(den)
            value = series.ratio(store, name, sel(num), sel(den), end=t, window=w)
            if value is None and series.sum_rate(store, name, sel(den), end=t, window=w) == 0.0:
                return 0.0
            return value

        put("error_rate", share(ERRORS, REQUESTS))
        put("p95_latency_seconds", series.quantile_over_window(
            store, name, 0.95, sel(LATENCY), end=t, window=window(LATENCY_COUNT)))
        put("circuit_breakers_open", series.latest(store, name, sel("circuit_breakers_open"),
                                                   end=t, max_age=full))
        in_use = series.latest(store, name, sel("db_pool_in_use"), end=t, max_age=full)
        size = series.latest(store, name, sel("db_pool_size"), end=t, max_age=full)
        put("db_pool_utilization", in_use / size if in_use is not None and size else None)
        put("auth_failure_ratio", share("auth_failures_total", "auth_attempts_total"))
        put("queue_lag", series.latest(store, name, sel("queue_lag"), end=t, max_age=full))


def describe(views: dict[str, ServiceView]) -> list[dict[str, Any]]:
    return [vars(v) for v in views.values()]
