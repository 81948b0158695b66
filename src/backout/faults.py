"""Fault-injection points for tests of crash safety (documented, off by default).

``BACKOUT_FAULT_INJECT="<point>=<action>[,<point>=<action>]"`` where action is
``kill`` (SIGKILL ourselves, as a crash would), ``sleep:<seconds>`` or
``fail`` (raise). Operations call ``hit("<point>")`` at the places a crash
matters (after taking the lock, before and after each journaled step), so a test
can prove that ``backout resume`` finishes what a ``kill -9`` interrupted.
"""

from __future__ import annotations

import os
import signal
import time

ENV_VAR = "BACKOUT_FAULT_INJECT"


class InjectedFault(RuntimeError):
    pass


def hit(point: str) -> None:
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name != point:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("sleep:"):
            time.sleep(float(action.split(":", 1)[1]))
        elif action == "fail":
            raise InjectedFault(f"injected failure at {point}")
