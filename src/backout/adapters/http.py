"""HTTP probes with the standard library (no dependency for a GET)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from backout.environment import Environment


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
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(limit)
            status = int(resp.status)
        error = None
    except urllib.error.HTTPError as exc:
        status, body, error = exc.code, exc.read(limit) if exc.fp else b"", None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        status, body, error = None, b"", str(reason)
    latency = time.monotonic() - start
    env.log_external(f"GET {url}  ({latency:.3f}s, {status if status is not None else error})")
    return Probe(url, status, latency, body, error)
