"""``backout verify``: the runbook's post-rollback checks, automated.

Checks, each reported by name: every service's container runs (and is healthy
where it has a healthcheck) without restarting during a settle period; every
health URL answers as configured; recent logs hold no more error lines than
allowed; every database answers; every service runs the image the last
operation targeted.

The health probes, the log reads and the database checks ask different things of
different services: they run at once (each in its own thread), after the container
check, and are reported in the fixed order above.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from backout import engines
from backout.adapters import http
from backout.config import Config, DatabaseConfig, ServiceConfig
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import BackoutError
from backout.platforms.base import ContainerInfo, Platform
from backout.state import Store

EXPECTED_IMAGES = "expected_images"


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "container backend", "health backend", "logs backend", "database mysql"
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Checked(Protocol):
    """One line of a report of checks (verify's, doctor's)."""
    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    def to_json(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=Checked)


@dataclass
class CheckReport(Generic[C]):
    """Checks in the order they ran; ok only when every one is (verify, doctor)."""
    checks: list[C] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[C]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks],
                "failed": [c.name for c in self.failed]}


VerifyResult = CheckReport[Check]


def _container_checks(platform: Platform, services: list[str], settle: float) -> list[Check]:
    def by_service() -> dict[str, list[ContainerInfo]]:
        out: dict[str, list[ContainerInfo]] = {}
        for c in platform.containers():
            out.setdefault(c.service, []).append(c)
        return out

    first = by_service()
    if settle > 0:
        time.sleep(settle)
    second = by_service()
    checks = []
    for svc in services:
        now = second.get(svc, [])
        if not now:
            checks.append(Check(f"container {svc}", False, "no container"))
            continue
        problems = []
        for c in now:
            if c.state != "running":
                problems.append(f"{c.name} is {c.state}")
            elif c.health not in (None, "healthy"):
                problems.append(f"{c.name} health is {c.health}")
            before = next((b for b in first.get(svc, []) if b.id == c.id), None)
            if before is None:
                problems.append(f"{c.name} was replaced during the settle period")
            elif c.restart_count > before.restart_count:
                problems.append(f"{c.name} restarted {c.restart_count - before.restart_count} "
                                f"time(s) in {settle:.0f}s (restart loop)")
        checks.append(Check(f"container {svc}", not problems,
                            "; ".join(problems) or f"running{', healthy' if now[0].health else ''}"))
    return checks


def _health_check(env: Environment, svc: ServiceConfig) -> list[Check]:
    assert svc.health_url is not None
    probe = http.get(env, svc.health_url)
    if probe.status is None:
        return [Check(f"health {svc.name}", False, f"{svc.health_url}: {probe.error}")]
    problems = []
    if probe.status != svc.health_status:
        problems.append(f"status {probe.status}, expected {svc.health_status}")
    if svc.health_body and svc.health_body.encode() not in probe.body:
        problems.append(f"body lacks {svc.health_body!r}")
    return [Check(f"health {svc.name}", not problems,
                  "; ".join(problems) or f"{probe.status} in {probe.latency * 1000:.0f} ms")]


def _log_checks(platform: Platform, config: Config, since: datetime) -> list[Check]:
    checks = []
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    for svc in config.services.values():
        if svc.kind == "database":
            continue
        text = platform.logs(svc.name, stamp)
        pattern = re.compile(svc.log_error_pattern)
        lines = [line for line in text.splitlines() if pattern.search(line)]
        ok = len(lines) <= svc.log_error_allowance
        detail = (f"{len(lines)} error line(s) since {stamp} (allowed {svc.log_error_allowance})"
                  + (f"; last: {lines[-1][:160]}" if lines else ""))
        checks.append(Check(f"logs {svc.name}", ok, detail))
    return checks


def _database_check(env: Environment, config: Config, platform: Platform,
                    db: DatabaseConfig) -> list[Check]:
    access = EngineAccess(env, config, db, platform)
    try:
        return [Check(f"database {db.name}", True,
                      f"answers ({engines.get(db.type).answer(access)})")]
    except BackoutError as exc:
        return [Check(f"database {db.name}", False, exc.one_line())]


def _at_once(checks: list[Callable[[], list[Check]]]) -> list[Check]:
    """Run independent checks concurrently; their results in the order given. Daemon
    threads, not a pool: a second Ctrl-C leaves at once instead of waiting for the
    probes under way (their children die with their threads: PR_SET_PDEATHSIG)."""
    results: list[list[Check] | BaseException] = [[] for _ in checks]

    def run(i: int, check: Callable[[], list[Check]]) -> None:
        try:
            results[i] = check()
        except BaseException as exc:  # raised below, in the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, check), daemon=True, name=f"verify-{i}")
               for i, check in enumerate(checks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out: list[Check] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out += result
    return out


def _image_checks(platform: Platform, store: Store) -> list[Check]:
    expected: dict[str, str] | None = store.fact(EXPECTED_IMAGES)
    if not expected:
        return []
    running = platform.running_images()
    checks = []
    for svc, image_id in sorted(expected.items()):
        actual = running.get(svc)
        ok = actual == image_id
        checks.append(Check(f"image {svc}", ok,
                            f"runs {str(actual)[7:19]}" + ("" if ok else
                                                           f", expected {image_id[7:19]}")))
    return checks


def run_verify(env: Environment, config: Config, store: Store, platform: Platform, *,
               settle: float | None = None, since: datetime | None = None) -> VerifyResult:
    settle = config.verify.settle_seconds if settle is None else settle
    if since is None:
        # Errors logged before the last rollback or deploy finished are what it was
        # fixing (a deploy that rolled itself back finished as "failed").
        since = datetime.now(UTC) - timedelta(seconds=config.verify.log_window_seconds)
        finished = store.last_change_finished_at()
        if finished:
            since = max(since, datetime.fromisoformat(finished))
    services = sorted(set(platform.definition().get("services", {})))
    checks: list[Check] = []
    checks += _container_checks(platform, services, settle)
    checks += _at_once([
        *(partial(_health_check, env, svc) for svc in config.services.values()
          if svc.health_url),
        partial(_log_checks, platform, config, since),
        *(partial(_database_check, env, config, platform, db)
          for db in config.databases.values()),
    ])
    checks += _image_checks(platform, store)
    store.record_event("verify", target="stack", reason="ok" if all(c.ok for c in checks)
                       else "failed: " + ", ".join(c.name for c in checks if not c.ok))
    return VerifyResult(checks)
