"""``backout schedule``: checkpoints on a calendar, in the foreground (a systemd service
or a compose service runs it; contrib/systemd has the units).

The loop sleeps until the calendar's next time, runs the job (a checkpoint, its
copies, retention when asked) and goes on. A failed run is reported where someone
looks: a warning, an audit event and the notification channels of [monitor.notify];
the next run is attempted on time all the same (a pending copy is retried by it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError
from backout.notify import Notifier
from backout.policy.calendar import Calendar
from backout.state import Store


def run_schedule(calendar: Calendar, job: Callable[[], None], *, stop: threading.Event,
                 announce: Callable[[datetime], None], runs: int | None = None,
                 run_now: bool = False,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    """Run ``job`` at each time of ``calendar`` until ``stop`` is set (or ``runs`` were
    made); returns how many ran. A job that raises ends the loop (it handles what it
    can report itself)."""
    done = 0
    last = clock()
    if run_now:
        job()
        done += 1
    while (runs is None or done < runs) and not stop.is_set():
        at = calendar.next_after(last if calendar.interval else clock())
        announce(at)
        while not stop.is_set():
            left = (at - clock()).total_seconds()
            if left <= 0:
                break
            stop.wait(min(left, 1.0))
        if stop.is_set():
            break
        last = clock()
        job()
        done += 1
    return done


def report_failure(env: Environment, config: Config, store: Store, what: str,
                   error: BackoutError) -> list[str]:
    """A scheduled run failed: warn, audit, and notify ([monitor.notify]); returns the
    notification problems (a broken webhook never stops the schedule)."""
    env.warn(f"scheduled {what} failed: {error.one_line()}")
    store.record_event("schedule.failed", target=what, reason=error.message,
                       detail={"code": error.code, "exit_code": int(error.exit_code)})
    notify = config.monitor.notify
    if not (notify.webhook_url or notify.command):
        return []
    event = {"kind": "scheduled_backup_failed", "level": "YELLOW",
             "summary": f"scheduled {what} failed: {error.one_line()}", "what": what,
             "code": error.code, "exit_code": int(error.exit_code),
             "project": str(config.project_dir), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime())}
    return Notifier(notify.webhook_url, notify.webhook_format, notify.command).send(env, event)
