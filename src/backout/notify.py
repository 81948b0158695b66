"""Notifications on level changes and incident steps: a webhook (generic JSON or a
Slack-compatible payload) and a command hook (the event as JSON on stdin).

A failure to notify is logged and recorded, never raised: a broken webhook must
never block a rollback.
"""

from __future__ import annotations

import json
import shlex
import urllib.request
from dataclasses import dataclass
from typing import Any

from backout import proc
from backout.adapters import http
from backout.environment import Environment
from backout.errors import BackoutError


@dataclass(frozen=True)
class Notifier:
    webhook_url: str | None = None
    webhook_format: str = "json"  # json | slack
    command: str | None = None
    timeout: float = 5.0

    def send(self, env: Environment, event: dict[str, Any]) -> list[str]:
        """Deliver ``event``; returns the problems (empty when all channels worked)."""
        problems = []
        if self.webhook_url:
            body = (slack_payload(event) if self.webhook_format == "slack" else event)
            try:
                req = urllib.request.Request(self.webhook_url, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"},
                                             method="POST")
                with http.urlopen(req, timeout=self.timeout) as resp:
                    status = int(getattr(resp, "status", 200))
                    if status >= 300:
                        problems.append(f"webhook answered {status}")
                env.log_external(f"POST {self.webhook_url} (notification)")
            except (OSError, ValueError) as exc:
                problems.append(f"webhook failed: {exc}")
        if self.command:
            try:
                result = proc.run(env, shlex.split(self.command), timeout=self.timeout,
                                  input_text=json.dumps(event), check=False,
                                  what="notify command")
                if not result.ok:
                    problems.append(f"notify command exited {result.returncode}")
            except BackoutError as exc:
                problems.append(f"notify command failed: {exc.message}")
        for problem in problems:
            env.warn(f"notification not delivered: {problem}")
        return problems


def slack_payload(event: dict[str, Any]) -> dict[str, Any]:
    level = event.get("level", "")
    icon = {"RED": ":red_circle:", "YELLOW": ":large_yellow_circle:",
            "GREEN": ":large_green_circle:"}.get(level, ":information_source:")
    text = f"{icon} backout: {event.get('summary', event.get('kind', 'event'))}"
    return {"text": text, "attachments": [{"fields": [
        {"title": k, "value": str(v), "short": True} for k, v in event.items()
        if k not in ("summary",) and isinstance(v, str | int | float)]}]}
