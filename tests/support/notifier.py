"""A Notifier that records every event instead of delivering it (monitor tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backout.environment import Environment
from backout.notify import Notifier


@dataclass(frozen=True)
class RecordingNotifier(Notifier):
    """Records every event it is asked to send; answers ``problems`` (what a failed
    webhook or command would have reported)."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    problems: tuple[str, ...] = ()

    def send(self, env: Environment, event: dict[str, Any]) -> list[str]:
        self.sent.append(dict(event))
        return list(self.problems)
