"""The store's typed methods for operations, their journal and checkpoints, on a
real SQLite file: what callers outside ``state/`` use instead of SQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from backout.state import Checkpoint, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def _op(store: Store, kind: str = "backup", keys: tuple[str, ...] = ("a", "b", "c")) -> int:
    return store.create_operation(kind, {"p": 1}, {"kind": kind, "steps": []},
                                  [(k, f"step {k}", f"why {k}") for k in keys])


def test_an_operation_is_created_with_its_steps_pending(store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKOUT_ACTOR", "ci")
    op = _op(store)
    row = store.operation(op)
    assert row is not None and type(row) is dict  # decoded, not a sqlite3.Row
    assert (row["kind"], row["params"], row["plan"], row["status"], row["created_by"],
            row["finished_at"], row["error"]) == ("backup", {"p": 1},
                                                  {"kind": "backup", "steps": []}, "running",
                                                  "ci", None, None)
    steps = store.operation_steps(op)
    assert [(s["seq"], s["key"], s["name"], s["status"], s["detail"]) for s in steps] == [
        (0, "a", "step a", "pending", None), (1, "b", "step b", "pending", None),
        (2, "c", "step c", "pending", None)]
    assert store.operation(op + 1) is None


def test_steps_are_marked_and_found_by_key(store: Store) -> None:
    op = _op(store)
    assert not store.step_started(op, "a") and store.step_status(op, "a") == "pending"
    store.mark_step_started(op, 0)
    assert store.step_started(op, "a") and store.step_status(op, "a") == "running"
    store.mark_step(op, 0, "done", {"stopped": ["web"]})
    store.mark_step(op, 1, "failed", {"error": "boom"})
    store.mark_step(op, 2, "failed", {"error": "later"})
    steps = store.operation_steps(op)
    assert steps[0]["detail"] == {"stopped": ["web"]} and steps[0]["finished_at"]
    assert steps[0]["started_at"] is not None and steps[1]["started_at"] is None
    first = store.first_failed_step(op)
    assert first is not None and (first["key"], first["name"], first["detail"]) == (
        "b", "step b", {"error": "boom"})
    assert store.step_status(op, "nope") is None and not store.step_started(op, "nope")
    assert store.first_failed_step(_op(store)) is None


def test_operations_finish_abandon_and_list(store: Store) -> None:
    first, second, third = _op(store), _op(store, "rollback.db"), _op(store, "deploy")
    assert [o["id"] for o in store.unfinished_operations()] == [first, second, third]
    store.finish_operation(second, "failed", "restore mysql: boom")
    store.abandon_operation(first, "superseded")
    assert [o["id"] for o in store.unfinished_operations()] == [third]
    history = store.history()
    assert [(h["id"], h["status"], h["error"]) for h in history] == [
        (third, "running", None), (second, "failed", "restore mysql: boom"),
        (first, "abandoned", "superseded")]
    assert "plan" not in history[0] and history[1]["finished_at"] is not None
    assert [h["id"] for h in store.history(1)] == [third]
    last = store.last_operation()
    assert last is not None and last["id"] == third


def test_the_last_change_is_a_successful_rollback_or_any_deploy(store: Store) -> None:
    assert store.last_change_finished_at() is None
    store.finish_operation(_op(store, "rollback.db"), "failed", "x")
    store.finish_operation(_op(store, "backup"), "succeeded", None)
    assert store.last_change_finished_at() is None  # neither counts
    rollback = _op(store, "rollback.service")
    store.finish_operation(rollback, "succeeded", None)
    at = store.last_change_finished_at()
    assert at == store.operation(rollback)["finished_at"]  # type: ignore[index]
    deploy = _op(store, "deploy")
    store.finish_operation(deploy, "failed", "rolled back")  # a deploy that rolled back
    assert store.last_change_finished_at() == store.operation(deploy)["finished_at"]  # type: ignore[index]


def test_a_journal_from_before_step_keys_reads_its_names_until_filled(tmp_path: Path) -> None:
    store = Store(tmp_path)
    op = _op(store)
    store.db.execute("UPDATE steps SET key = NULL WHERE operation_id = ?", (op,))
    assert [s["key"] for s in store.operation_steps(op)] == ["step a", "step b", "step c"]
    assert store.step_status(op, "step b") == "pending"
    store.fill_step_keys(op, ["a", "b", "c"])
    assert [s["key"] for s in store.operation_steps(op)] == ["a", "b", "c"]
    store.fill_step_keys(op, ["x", "y", "z"])  # only missing keys are filled
    assert [s["key"] for s in store.operation_steps(op)] == ["a", "b", "c"]


def test_checkpoints(store: Store) -> None:
    r1 = store.add_release(git_commit="a", git_dirty=False, diff_path=None, compose_config={},
                           services={})
    r2 = store.add_release(git_commit="b", git_dirty=False, diff_path=None, compose_config={},
                           services={})
    assert store.latest_checkpoint() is None and store.checkpoints(5) == []
    c1 = store.add_checkpoint(release_id=r1, label="before 42", set_id="set-1")
    c2 = store.add_checkpoint(release_id=r1, label=None, set_id="set-2")
    c3 = store.add_checkpoint(release_id=r2, label=None, set_id="set-3")
    one = store.checkpoint(c1)
    assert isinstance(one, Checkpoint)
    assert (one.id, one.release_id, one.label, one.set_id, one.status) == (
        c1, r1, "before 42", "set-1", "complete")
    assert one.created_at and one.created_by
    assert store.checkpoint(99) is None
    assert store.checkpoint_of_set("set-2") == store.checkpoint(c2)
    assert store.checkpoint_of_set("nope") is None
    assert store.latest_checkpoint() == store.checkpoint(c3)
    assert store.latest_checkpoint(release_id=r1) == store.checkpoint(c2)
    assert store.latest_checkpoint(release_id=99) is None
    assert [c.id for c in store.checkpoints(2)] == [c3, c2]
    assert [c.set_id for c in store.checkpoints_of_releases([r1])] == ["set-1", "set-2"]
    assert [c.id for c in store.checkpoints_of_releases([r2, r1])] == [c1, c2, c3]
    assert store.checkpoints_of_releases([]) == []


def test_the_step_key_column_is_a_migration(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.db")
    columns = [r[1] for r in db.execute("PRAGMA table_info(steps)")]
    db.close()
    assert "key" in columns
