"""The one operation guard (operations/guard.py), used by every mutating command,
the deploy and the monitor's automatic rollback: the lock, a takeover recorded in
the audit log every time, and what happens while an interrupted operation waits."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config
from backout.environment import Environment
from backout.errors import ExitCode, LockedError, UsageError
from backout.operations.executor import Executor, RunContext, register_action
from backout.operations.guard import Unfinished, guard, refusal
from backout.operations.plan import Plan, Step
from backout.operations.runner import run_locked
from backout.state import OperationLock, Store
from tests.support.fakes import run_context

RAN: list[str] = []


@register_action("test.guard.step")
def _step(_ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    RAN.append(params["name"])
    return {"ran": params["name"]}


@pytest.fixture(autouse=True)
def _reset(monkeypatch: pytest.MonkeyPatch) -> None:
    RAN.clear()
    # An in-process CLI run earlier in the session stops "backout" from propagating.
    monkeypatch.setattr(logging.getLogger("backout"), "propagate", True)


def _plan(kind: str = "test", always: bool = False) -> Plan:
    return Plan(kind, {}, (Step("one", "test.guard.step", "first", {"name": "one"}),
                           Step("two", "test.guard.step", "cleanup", {"name": "two"},
                                always=always)), summary=f"{kind} plan")


def _dead_holder(state_dir: Path, command: str = "rollback db") -> int:
    """The lock record a holder that died (kill -9) leaves: written, never released."""
    pid = 2 ** 22 + 12345  # above pid_max on Linux by default: no such process
    (state_dir / "lock").write_text(json.dumps({
        "pid": pid, "host": socket.gethostname(), "start_time": "1", "command": command,
        "since": "2026-01-01T00:00:00Z"}))
    return pid


def _interrupted(store: Store, kind: str, always: bool = False) -> int:
    """An operation a crash left running, after its first step."""
    ex = Executor(store, run_context(store))
    plan = _plan(kind, always)
    op = ex.start(plan)
    store.mark_step_started(op, 0)
    store.mark_step(op, 0, "done", {"ran": "one"})
    return op


def test_a_takeover_is_warned_and_audited_every_time(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    for attempt in (1, 2):
        pid = _dead_holder(tmp_path, command=f"deploy {attempt}")
        with caplog.at_level(logging.WARNING, logger="backout"), \
                guard(Environment(), store, tmp_path, "backup") as lock:
            assert lock.took_over is not None and lock.took_over.pid == pid
        assert f"took over the lock left by `deploy {attempt}` (pid {pid}" in caplog.text
    events = [e for e in store.events() if e["action"] == "lock.takeover"]
    assert [e["target"] for e in events] == ["deploy 2", "deploy 1"]
    assert events[0]["detail"]["pid"] == pid
    assert events[0]["reason"] == "previous holder died without releasing"
    # released cleanly: nothing to take over next time
    with guard(Environment(), store, tmp_path, "backup") as lock:
        assert lock.took_over is None
    assert len([e for e in store.events() if e["action"] == "lock.takeover"]) == 2


def test_the_lock_is_held_inside_and_released_after(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with guard(Environment(), store, tmp_path, "rollback db"):
        with pytest.raises(LockedError) as info:
            OperationLock(tmp_path).acquire("other")
        assert "`rollback db`" in info.value.message
        assert info.value.exit_code == ExitCode.LOCKED
    OperationLock(tmp_path).acquire("other").release()


def test_an_interrupted_operation_is_refused_with_the_resume_hint(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _interrupted(store, "rollback.db")
    last = _interrupted(store, "deploy")
    with pytest.raises(UsageError) as info, guard(Environment(), store, tmp_path, "backup"):
        RAN.append("body")  # never: refused before the block runs
    assert RAN == []
    assert info.value.message == f"operation #{last} (deploy) was interrupted and is unfinished"
    assert info.value.fix == "run `backout resume` first"
    assert info.value.exit_code == ExitCode.USAGE == 2
    OperationLock(tmp_path).acquire("next").release()  # the refusal released the lock
    assert refusal(store.unfinished_operations()[-1]).message == info.value.message


def test_resume_and_the_commands_that_allow_it_run_with_one_waiting(tmp_path: Path) -> None:
    store = Store(tmp_path)
    op = _interrupted(store, "rollback.db")
    with guard(Environment(), store, tmp_path, "resume", unfinished=Unfinished.ALLOW):
        RAN.append("body")
    assert RAN == ["body"]
    assert [o["id"] for o in store.unfinished_operations()] == [op]


def test_a_new_backup_abandons_interrupted_backups_after_their_cleanup(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    with_cleanup = _interrupted(store, "checkpoint", always=True)
    without = _interrupted(store, "backup", always=False)
    with caplog.at_level(logging.WARNING, logger="backout"), \
            guard(Environment(), store, tmp_path, "backup",
                  unfinished=Unfinished.ABANDON_BACKUPS, abandon_with=Executor(store, run_context(store))):
        RAN.append("body")
    # Only the cleanup (always) step of the first ran; the normal step was done before.
    assert RAN == ["two", "body"]
    assert store.unfinished_operations() == []
    for op in (with_cleanup, without):
        row = store.operation(op)
        assert row is not None and row["status"] == "abandoned"
        assert row["error"] == "superseded by a new backup after an interruption"
        assert f"operation #{op} (" in caplog.text


def test_a_new_backup_refuses_other_interrupted_operations(tmp_path: Path) -> None:
    store = Store(tmp_path)
    backup = _interrupted(store, "backup")
    restore = _interrupted(store, "rollback.db")
    with pytest.raises(UsageError, match=f"operation #{restore} \\(rollback.db\\) was "
                                         "interrupted"), \
            guard(Environment(), store, tmp_path, "backup",
                  unfinished=Unfinished.ABANDON_BACKUPS, abandon_with=Executor(store, run_context(store))):
        RAN.append("body")
    assert RAN == []
    # the backup before it was abandoned (as before the guard existed), the restore waits
    assert store.operation(backup)["status"] == "abandoned"  # type: ignore[index]
    assert [o["id"] for o in store.unfinished_operations()] == [restore]


# --------------------------------------------------------------------------- the monitor


def _config(tmp: Path) -> Config:
    return Config(path=tmp / "backout.toml", project_dir=tmp)


def test_the_monitors_automatic_rollback_audits_a_takeover(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    pid = _dead_holder(config.state_dir, command="rollback emergency")
    outcome = run_locked(Environment(), config, store, None, _plan(),  # type: ignore[arg-type]
                         "monitor auto-rollback (rollback.service)")
    assert outcome.status == "succeeded" and RAN == ["one", "two"]
    [event] = [e for e in store.events() if e["action"] == "lock.takeover"]
    assert (event["target"], event["detail"]["pid"]) == ("rollback emergency", pid)


def test_the_monitors_automatic_rollback_waits_for_resume(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    op = _interrupted(store, "rollback.db")
    with pytest.raises(UsageError, match=f"operation #{op} \\(rollback.db\\)"):
        run_locked(Environment(), config, store, None, _plan(),  # type: ignore[arg-type]
                   "monitor auto-rollback (rollback.service)")
    assert RAN == []
