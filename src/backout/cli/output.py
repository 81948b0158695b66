"""Rendering results: human text on a terminal, stable JSON with ``--json``."""

from __future__ import annotations

import json
from typing import Any

from backout.environment import Environment


def emit(env: Environment, command: str, data: dict[str, Any], human: list[str] | str) -> None:
    """Write one command result. JSON: ``{"ok": true, "command": ..., **data}``."""
    if env.json:
        payload = {"ok": True, "command": command, **data}
        env.stdout.write(env.redact(json.dumps(payload, indent=2, sort_keys=True, default=str)) + "\n")
    else:
        text = human if isinstance(human, str) else "\n".join(human)
        if text:
            env.stdout.write(env.redact(text) + "\n")
    env.stdout.flush()


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def table(rows: list[list[str]], headers: list[str]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()
    return [fmt(headers)] + [fmt(r) for r in rows]
