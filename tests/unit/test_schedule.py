"""``backout schedule``: the calendar specs (pure), the loop (a fake clock, a stop
event), and what a failed run does (warning, audit event, notification through the
real command hook)."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backout.backup.schedule import report_failure, run_schedule
from backout.config.load import parse_document
from backout.environment import Environment
from backout.errors import ExternalError
from backout.policy.calendar import CalendarError, parse
from backout.state import Store

T = datetime(2026, 12, 3, 10, 7, 30, tzinfo=UTC)  # a Thursday


@pytest.mark.parametrize(("spec", "after", "expected"), [
    ("hourly", T, datetime(2026, 12, 3, 11, 0, tzinfo=UTC)),
    ("daily", T, datetime(2026, 12, 4, 0, 0, tzinfo=UTC)),
    ("weekly", T, datetime(2026, 12, 7, 0, 0, tzinfo=UTC)),  # next Monday
    ("monthly", T, datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ("minutely", T, datetime(2026, 12, 3, 10, 8, tzinfo=UTC)),
    ("02:30", T, datetime(2026, 12, 4, 2, 30, tzinfo=UTC)),
    ("*:0/15", T, datetime(2026, 12, 3, 10, 15, tzinfo=UTC)),
    ("*:*/20", T, datetime(2026, 12, 3, 10, 20, tzinfo=UTC)),
    ("0/6:00", T, datetime(2026, 12, 3, 12, 0, tzinfo=UTC)),
    ("Mon..Fri 02:30", T, datetime(2026, 12, 4, 2, 30, tzinfo=UTC)),  # Friday
    ("Sat,Sun 04:00", T, datetime(2026, 12, 5, 4, 0, tzinfo=UTC)),
    ("Fri..Mon 10:00", T, datetime(2026, 12, 4, 10, 0, tzinfo=UTC)),  # wraps the week
    ("10:15", T, datetime(2026, 12, 3, 10, 15, tzinfo=UTC)),  # later today
    ("10:07", T, datetime(2026, 12, 4, 10, 7, tzinfo=UTC)),  # strictly after
    ("every 15m", T, T + timedelta(minutes=15)),
    ("every 6h", T, T + timedelta(hours=6)),
])
def test_next_time(spec: str, after: datetime, expected: datetime) -> None:
    assert parse(spec).next_after(after) == expected


@pytest.mark.parametrize(("spec", "problem"), [
    ("sometimes", "the time needs HH:MM"),
    ("25:00", "hour '25' is out of range"),
    ("*:61", "minute '61' is out of range"),
    ("Funday 02:00", "weekday 'funday'"),
    ("every 0m", "at least 1"),
    ("Mon 02:00 extra", "expected [WEEKDAYS] HH:MM"),
    ("x:00", "hour 'x' is not a number"),
])
def test_bad_specs_say_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(CalendarError, match=problem.replace("[", r"\[").replace("*", r"\*")):
        parse(spec)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def test_the_loop_runs_at_each_time_and_stops_on_request() -> None:
    clock = FakeClock(T)
    stop = threading.Event()
    ran: list[datetime] = []
    announced: list[datetime] = []

    def job() -> None:
        ran.append(clock.now)
        if len(ran) == 3:
            stop.set()

    def announce(at: datetime) -> None:
        announced.append(at)
        clock.now = at  # time passes until the announced moment

    done = run_schedule(parse("*:0/15"), job, stop=stop, announce=announce, clock=clock)
    assert done == 3
    assert ran == [T.replace(minute=15, second=0), T.replace(minute=30, second=0),
                   T.replace(minute=45, second=0)]
    assert announced == ran


def test_run_now_and_a_run_limit() -> None:
    clock = FakeClock(T)
    ran: list[datetime] = []

    def announce(at: datetime) -> None:
        clock.now = at

    done = run_schedule(parse("every 1h"), lambda: ran.append(clock.now),
                        stop=threading.Event(), announce=announce, runs=2, run_now=True,
                        clock=clock)
    assert done == 2 and ran == [T, T + timedelta(hours=1)]


def test_a_stop_while_waiting_runs_nothing() -> None:
    stop = threading.Event()
    stop.set()
    ran: list[int] = []
    assert run_schedule(parse("daily"), lambda: ran.append(1), stop=stop,
                        announce=lambda at: None) == 0
    assert ran == []


def test_a_failed_run_is_warned_audited_and_notified(tmp_path: Path) -> None:
    received = tmp_path / "event.json"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nopen({str(received)!r}, 'w').write(sys.stdin.read())\n")
    config = parse_document("backout.toml", f'[monitor.notify]\ncommand = "{sys.executable} '
                                            f'{hook}"\n', tmp_path)
    store = Store(config.state_dir)
    problems = report_failure(Environment(), config, store, "checkpoint",
                              ExternalError("repository offsite: connection refused"))
    assert problems == []
    event = json.loads(received.read_text())
    assert event["kind"] == "scheduled_backup_failed" and event["level"] == "YELLOW"
    assert "connection refused" in event["summary"] and event["exit_code"] == 6
    assert store.events()[0]["action"] == "schedule.failed"
