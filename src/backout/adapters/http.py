"""HTTP probes with the standard library (no dependency for a GET).

Loopback is never reached through a proxy: with ``http_proxy`` set and
``no_proxy`` unset (common on company machines), urllib would send a probe of
127.0.0.1 to the proxy, which answers for a host it cannot see; a healthy service
would look down. Other hosts honour the proxy settings as usual.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Any

from backout.environment import Environment

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def urlopen(url: str | urllib.request.Request, *, timeout: float) -> IO[bytes]:
    """``urllib.request.urlopen``, direct (no proxy) for a loopback host."""
    full = url.full_url if isinstance(url, urllib.request.Request) else url
    if is_loopback(urllib.parse.urlsplit(full).hostname):
        response: Any = _DIRECT.open(url, timeout=timeout)
    else:
        response = urllib.request.urlopen(url, timeout=timeout)
    return response  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Probe:
    url: str
    status: int | None  # None: no HTTP answer at all
    latency: float
    body: bytes
    error: str | None


def get(env: Environment, url: str, *, timeout: float = 5.0, limit: int = 1 << 20) -> Probe:
    start = time.monotonic()
    try:
        with urlopen(url, timeout=timeout) as resp:
            body = resp.read(limit)
            status = int(resp.status)  # type: ignore[attr-defined]
        error = None
    except urllib.error.HTTPError as exc:
        status, body, error = exc.code, exc.read(limit) if exc.fp else b"", None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        status, body, error = None, b"", str(reason)
    latency = time.monotonic() - start
    env.log_external(f"GET {url}  ({latency:.3f}s, {status if status is not None else error})")
    return Probe(url, status, latency, body, error)
