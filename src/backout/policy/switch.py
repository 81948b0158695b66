"""How a service's container is switched to another image: start-first or stop-first.

Start-first (the new container beside the old one, healthy before the old one is
drained) needs nothing that only one container of the service can hold at a time.
This module reads the resolved stack definition and decides, with the reasons an
operator reads in the plan. Pure: no I/O. The mechanics are the platform's
(``Platform.start_beside`` and friends); a Swarm platform maps the same choice
onto its own ``update_config.order``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from backout.errors import UsageError

START_FIRST = "start-first"
STOP_FIRST = "stop-first"
ORDERS = (START_FIRST, STOP_FIRST)

# What a proxy in front of the switched service needs before the old container may go.
PROXY_MODES = ("nginx-reload", "nginx-resolver", "labels")
NGINX_RELOAD = ("nginx", "-s", "reload")
DEFAULT_GRACE = 10.0  # Docker's own default stop timeout


@dataclass(frozen=True)
class Blocker:
    """Why two containers of a service cannot run side by side. ``hard``: they
    physically cannot (a second container would not start); otherwise they could,
    but it is unsafe unless the operator says otherwise."""

    reason: str
    hard: bool


@dataclass(frozen=True)
class SwitchOrder:
    order: str  # START_FIRST | STOP_FIRST
    reasons: tuple[str, ...]  # why stop-first (or what was overridden)
    source: str  # "default", "backout.toml", "--order"

    @property
    def start_first(self) -> bool:
        return self.order == START_FIRST

    def describe(self) -> str:
        head = self.order + ("" if self.source == "default" else f" ({self.source})")
        return head + (f": {'; '.join(self.reasons)}" if self.reasons else "")

    def to_json(self) -> dict[str, Any]:
        return {"order": self.order, "reasons": list(self.reasons), "source": self.source}


def blockers(service: str, spec: Mapping[str, Any], *,
             database_services: Collection[str] = (),
             single_writer_volumes: Collection[str] | None = None) -> list[Blocker]:
    """Everything that stands in the way of two containers of ``service``.

    ``spec`` is the service as ``docker compose config --format json`` resolves it.
    ``single_writer_volumes``: the named volumes only one container may write; None
    means every named volume the service mounts read-write.
    """
    out: list[Blocker] = []
    fixed = sorted({str(p.get("published")) for p in spec.get("ports") or []
                    if isinstance(p, Mapping) and p.get("published")})
    if fixed:
        out.append(Blocker(f"a fixed host port ({', '.join(fixed)}): a second container "
                           "cannot bind it", hard=True))
    if spec.get("container_name"):
        out.append(Blocker(f"container_name {spec['container_name']}: Docker allows one "
                           "container of that name", hard=True))
    deploy = spec.get("deploy") or {}
    replicas = int(deploy.get("replicas") or spec.get("scale") or 1)
    if replicas > 1:
        out.append(Blocker(f"{replicas} replicas: the start-first switch replaces one "
                           "container per service", hard=True))
    if service in database_services:
        out.append(Blocker("a database: two servers on one data directory corrupt it",
                           hard=False))
    for mount in spec.get("volumes") or []:
        if not isinstance(mount, Mapping) or mount.get("type") != "volume" \
                or mount.get("read_only") or not mount.get("source"):
            continue
        source = str(mount["source"])
        if single_writer_volumes is None or source in single_writer_volumes:
            out.append(Blocker(f"volume {source} mounted read-write: two containers would "
                               "write it at once", hard=False))
    update_order = (deploy.get("update_config") or {}).get("order")
    if update_order == STOP_FIRST:
        out.append(Blocker("deploy.update_config.order is stop-first in the compose file",
                           hard=False))
    return out


def choose(service: str, spec: Mapping[str, Any], *, configured: str | None = None,
           requested: str | None = None, database_services: Collection[str] = (),
           single_writer_volumes: Collection[str] | None = None) -> SwitchOrder:
    """The order for this switch. ``requested`` (``--order``) beats ``configured``
    (``[services.NAME] switch``), which beats the default: start-first unless
    something blocks it. An explicit start-first over a hard blocker is refused."""
    found = blockers(service, spec, database_services=database_services,
                     single_writer_volumes=single_writer_volumes)
    explicit, source = ((requested, "--order") if requested else
                        (configured, "backout.toml") if configured else (None, "default"))
    if explicit == STOP_FIRST:
        return SwitchOrder(STOP_FIRST, ("asked for",), source)
    if explicit == START_FIRST:
        hard = [b.reason for b in found if b.hard]
        if hard:
            where = "--order" if source == "--order" else f"[services.{service}] switch"
            raise UsageError(f"{service} cannot switch start-first: {'; '.join(hard)}",
                             fix=f"drop {where} start-first, or remove that from the "
                                 "compose file (publish no fixed host port, no container_name)")
        return SwitchOrder(START_FIRST, tuple(f"overrides: {b.reason}" for b in found), source)
    if found:
        return SwitchOrder(STOP_FIRST, tuple(b.reason for b in found), source)
    return SwitchOrder(START_FIRST, (), source)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def duration_seconds(value: Any, default: float) -> float:
    """A compose duration ("1m30s", "20s", "500ms", or a number of seconds)."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    parts = _DURATION.findall(str(value))
    if not parts or "".join(n + u for n, u in parts) != str(value).replace(" ", ""):
        return default
    return sum(float(n) * _UNIT[u] for n, u in parts)


def stop_grace(spec: Mapping[str, Any]) -> float:
    """How long the old container may take to finish its in-flight requests."""
    return duration_seconds(spec.get("stop_grace_period"), DEFAULT_GRACE)


def ready_timeout(spec: Mapping[str, Any], configured: int | None = None) -> float:
    """How long to wait for the new container to become healthy: the configured
    bound, else what its healthcheck allows (start period + retries x interval, plus
    timeouts) with a margin, at least 60 s."""
    if configured:
        return float(configured)
    check = spec.get("healthcheck") or {}
    interval = duration_seconds(check.get("interval"), 30.0)
    timeout = duration_seconds(check.get("timeout"), 30.0)
    start = duration_seconds(check.get("start_period"), 0.0)
    retries = int(check.get("retries") or 3)
    return max(60.0, start + (retries + 1) * (interval + timeout) + 10)


_RESOLVER = re.compile(r"^\s*resolver\s+([^;]*);", re.M)
_VALID = re.compile(r"\bvalid=(\d+)(s|m|h)?\b")


def nginx_mode(config_text: str, service: str) -> tuple[str, float] | None:
    """How an nginx configuration (``nginx -T``) reaches ``service``: ("nginx-resolver",
    valid seconds) when it re-resolves names through a resolver, ("nginx-reload", 0)
    when a ``proxy_pass`` names the service statically (resolved once at load), or
    None when it does not name the service at all."""
    names = re.search(rf"(?<![\w.-]){re.escape(service)}(?![\w-])", _strip_comments(config_text))
    if names is None:
        return None
    text = _strip_comments(config_text)
    resolver = _RESOLVER.search(text)
    if resolver and "$" in text:
        valid = _VALID.search(resolver.group(1))
        seconds = float(valid.group(1)) * {"s": 1, "m": 60, "h": 3600}[valid.group(2) or "s"] \
            if valid else 600.0  # without valid=: the answer's TTL (Docker's DNS says 600 s)
        return "nginx-resolver", seconds
    return "nginx-reload", 0.0


# at a line's start or after another directive (`location / { proxy_connect_timeout 1s; }`)
_CONNECT_TIMEOUT = re.compile(r"(?:^|[;{])\s*proxy_connect_timeout\s+([0-9a-z]+)\s*;", re.M)
_NGINX_TIME = re.compile(r"(\d+)(ms|s|m|h|d)?")
_NGINX_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
NGINX_CONNECT_DEFAULT = 60.0  # nginx's own default proxy_connect_timeout
# Above this, init says what a resolver nginx's connect timeout costs in a switch.
CONNECT_TIMEOUT_ADVISED = 2.0


def nginx_connect_timeout(config_text: str) -> float:
    """The longest ``proxy_connect_timeout`` an nginx configuration (``nginx -T``) sets,
    else nginx's default, 60 s. Behind a resolver it is how long a request waits that
    nginx sent to the old container's address in the moment between that container
    leaving Docker's network and nginx's reload (bench 5: the stretch equals it)."""
    found = []
    for value in _CONNECT_TIMEOUT.findall(_strip_comments(config_text)):
        parts = _NGINX_TIME.findall(value)
        if parts and "".join(n + u for n, u in parts) == value:  # nginx's "1m30s" too
            found.append(sum(float(n) * _NGINX_UNIT[u or "s"] for n, u in parts))
    return max(found, default=NGINX_CONNECT_DEFAULT)


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())
