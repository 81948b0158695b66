"""Signals from outside the stack: a Prometheus server (PromQL) and custom commands."""

from __future__ import annotations

import json
import shlex
import urllib.parse

from backout import proc
from backout.adapters import http
from backout.environment import Environment
from backout.errors import BackoutError


def promql(env: Environment, base_url: str, query: str, timeout: float = 5.0) -> float | None:
    """An instant query's single value; None when the result is empty (no data)."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    probe = http.get(env, url, timeout=timeout)
    if probe.status != 200:
        return None
    try:
        data = json.loads(probe.body)
        result = data["data"]["result"]
        if data["data"]["resultType"] == "scalar":
            return float(result[1])
        if not result:
            return None
        return float(result[0]["value"][1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def command_value(env: Environment, command: str, timeout: float = 10.0) -> float | None:
    """The number a command prints (last line); None when it fails or prints none.

    The command is split like a shell would (no shell runs it) and inherits no
    credentials from backout's environment.
    """
    try:
        result = proc.run(env, shlex.split(command), timeout=timeout, check=False,
                          what="signal command")
    except BackoutError:
        return None
    if not result.ok:
        return None
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    try:
        return float(lines[-1]) if lines else None
    except ValueError:
        return None
