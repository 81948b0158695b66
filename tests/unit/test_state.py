"""The state store and the operation lock, on real SQLite and real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backout.errors import ExitCode, LockedError
from backout.state import OperationLock, Store
from backout.state.store import MIGRATIONS, StoreError


def test_store_is_wal_and_records_migrations(tmp_path: Path) -> None:
    store = Store(tmp_path / ".backout")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version() == len(MIGRATIONS)
    rows = store.db.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert [tuple(r) for r in rows] == [(i + 1, name) for i, (name, _) in enumerate(MIGRATIONS)]
    store.close()
    # reopening applies nothing twice
    again = Store(tmp_path / ".backout")
    assert again.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)


def test_store_upgrades_an_older_schema_in_place(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.record_event("x")
    for table in ("facts", "incident_events", "incidents", "verifications",  # migrations 2..
                  "set_copies"):  # migration 6
        store.db.execute(f"DROP TABLE {table}")
    store.db.execute("ALTER TABLE steps DROP COLUMN key")  # migration 5
    store.db.execute("DELETE FROM schema_migrations WHERE version > 1")
    store.close()
    upgraded = Store(tmp_path)
    assert upgraded.schema_version() == len(MIGRATIONS)
    upgraded.set_fact("k", {"a": 1})
    assert upgraded.fact("k") == {"a": 1}
    assert upgraded.events()[0]["action"] == "x"  # data of the old schema kept


def test_store_refuses_newer_schema(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this backout"):
        Store(tmp_path)


def test_events_and_releases_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKOUT_ACTOR", "alice")
    store = Store(tmp_path)
    store.record_event("release.record", target="release 1", reason="pre-migration",
                       detail={"commit": "abc"})
    rid = store.add_release(git_commit="abc", git_dirty=False, diff_path=None,
                            compose_config={"services": {}}, services={"web": {"image_id": "sha256:1"}})
    event = store.events()[0]
    assert (event["actor"], event["action"], event["reason"]) == ("alice", "release.record", "pre-migration")
    assert event["detail"] == {"commit": "abc"}
    assert store.release(rid)["services"] == {"web": {"image_id": "sha256:1"}}  # type: ignore[index]


def test_incident_timeline(tmp_path: Path) -> None:
    store = Store(tmp_path)
    iid = store.open_incident(rule="error-rate-red", level="RED", severity="SEV-2",
                              reason="error_rate 0.62 > 0.5 for 60s", values={"error_rate": 0.62})
    store.incident_event(iid, "action", {"rollback": "service backend"})
    assert [i["id"] for i in store.open_incidents()] == [iid]
    store.incident_event(iid, "resolved", {"verified": True})
    assert store.open_incidents() == []
    [incident] = store.incidents()
    assert incident["status"] == "resolved" and incident["resolved_at"]
    assert [e["kind"] for e in incident["timeline"]] == ["detected", "action", "resolved"]
    assert incident["timeline"][0]["detail"]["values"] == {"error_rate": 0.62}


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from backout.state import OperationLock
    lock = OperationLock(Path(sys.argv[1])).acquire("release record")
    print("locked", flush=True)
    time.sleep(60)
""")


def _start_holder(state_dir: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_locker_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(LockedError) as info:
            OperationLock(tmp_path).acquire("rollback")
        assert info.value.exit_code == ExitCode.LOCKED
        assert f"pid {holder.pid}" in info.value.message
        assert "`release record`" in info.value.message
        seen = OperationLock(tmp_path).holder()
        assert seen is not None and seen.pid == holder.pid and seen.is_alive()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    holder = _start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = OperationLock(tmp_path).acquire("rollback")
    try:
        assert lock.took_over is not None
        assert lock.took_over.pid == holder.pid
        assert lock.took_over.is_alive() is False
        # and while we hold it, others are refused
        with pytest.raises(LockedError, match="`rollback`"):
            OperationLock(tmp_path).acquire("other")
    finally:
        lock.release()
    # a clean release leaves nothing to take over
    again = OperationLock(tmp_path).acquire("next")
    assert again.took_over is None
    again.release()


def test_pid_reuse_is_not_mistaken_for_the_holder(tmp_path: Path) -> None:
    from backout.state.lock import LockHolder

    me = LockHolder(pid=os.getpid(), host=os.uname().nodename, start_time="1",
                    command="x", since=time.strftime("%Y"))
    assert me.is_alive() is False  # same pid, other start time: a different process
