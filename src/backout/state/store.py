"""The state store: one SQLite file under ``.backout/``, WAL mode, no server.

Schema changes are migrations applied in order and recorded in the store itself
(``schema_migrations``), so an older store is upgraded in place and a newer one
(written by a newer backout) is refused rather than misread.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from backout.errors import BackoutError, ExitCode
from backout.state.dirs import private_dir

DB_NAME = "state.db"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        CREATE TABLE releases (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            git_commit TEXT,
            git_dirty INTEGER NOT NULL DEFAULT 0,
            diff_path TEXT,
            compose_config TEXT NOT NULL,   -- JSON, secrets redacted
            services TEXT NOT NULL,         -- JSON: service -> {image, image_id, digests, retained_as}
            status TEXT NOT NULL,           -- recorded | deployed | rolled_back | failed
            note TEXT
        );
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            release_id INTEGER REFERENCES releases(id),
            label TEXT,
            path TEXT,
            status TEXT NOT NULL            -- complete | failed
        );
        CREATE TABLE operations (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            params TEXT NOT NULL,           -- JSON
            plan TEXT NOT NULL,             -- JSON list of steps
            status TEXT NOT NULL,           -- running | succeeded | failed | interrupted
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            finished_at TEXT,
            error TEXT
        );
        CREATE TABLE steps (
            id INTEGER PRIMARY KEY,
            operation_id INTEGER NOT NULL REFERENCES operations(id),
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            reason TEXT NOT NULL,
            status TEXT NOT NULL,           -- pending | running | done | failed
            started_at TEXT,
            finished_at TEXT,
            detail TEXT,
            UNIQUE (operation_id, seq)
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            actor TEXT NOT NULL,
            host TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            reason TEXT,
            detail TEXT
        );
        CREATE INDEX events_ts ON events(ts);
        """,
    ),
    (
        "key-value facts (expected images after an operation)",
        """
        CREATE TABLE facts (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,            -- JSON
            updated_at TEXT NOT NULL
        );
        """,
    ),
    (
        "incidents and their timeline",
        """
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            opened_at TEXT NOT NULL,
            rule TEXT NOT NULL,
            level TEXT NOT NULL,            -- RED | YELLOW
            severity TEXT NOT NULL,         -- SEV-0 .. SEV-4
            reason TEXT NOT NULL,
            status TEXT NOT NULL,           -- open | escalated | resolved
            resolved_at TEXT
        );
        CREATE TABLE incident_events (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents(id),
            ts TEXT NOT NULL,
            kind TEXT NOT NULL,             -- detected | action | verified | escalated | resolved | notified | notify_failed
            detail TEXT NOT NULL            -- JSON
        );
        """,
    ),
    (
        "verification results of backup sets",
        """
        CREATE TABLE verifications (
            id INTEGER PRIMARY KEY,
            set_id TEXT NOT NULL,
            verified_at TEXT NOT NULL,
            kind TEXT NOT NULL,             -- checksum | restore-test
            ok INTEGER NOT NULL,
            detail TEXT                     -- what was checked, or the problem found
        );
        CREATE INDEX verifications_set ON verifications(set_id, id);
        """,
    ),
    (
        "stable step keys in the journal",
        """
        -- The step's key in its plan (``dump:mysql``), NULL in journals written before
        -- keys existed: filled from the plan when such an operation is resumed.
        ALTER TABLE steps ADD COLUMN key TEXT;
        """,
    ),
    (
        "copies of backup sets in repositories",
        """
        CREATE TABLE set_copies (
            set_id TEXT NOT NULL,
            repository TEXT NOT NULL,       -- [repositories.<name>]
            status TEXT NOT NULL,           -- pending | copied | forgotten
            snapshot TEXT,                  -- the repository's id of the copy
            completed_at TEXT,              -- the set's (retention decides by it)
            attempts INTEGER NOT NULL DEFAULT 0,
            attempted_at TEXT,
            copied_at TEXT,
            verified_at TEXT,               -- last check of the copy that passed
            error TEXT,                     -- the last attempt's problem (pending)
            PRIMARY KEY (set_id, repository)
        );
        """,
    ),
]


class OperationRow(TypedDict):
    """One operation as journaled; ``params`` and ``plan`` decoded from JSON."""

    id: int
    kind: str
    params: dict[str, Any]
    plan: dict[str, Any]
    status: str  # running | succeeded | failed | interrupted | abandoned
    created_at: str
    created_by: str
    finished_at: str | None
    error: str | None


class OperationSummary(TypedDict):
    """An operation without its plan (``backout history``)."""

    id: int
    kind: str
    status: str
    created_at: str
    created_by: str
    finished_at: str | None
    error: str | None


class StepRow(TypedDict):
    """One journaled step; ``detail`` (its result, or the error) decoded from JSON."""

    seq: int
    key: str  # the plan's step key (its name in journals older than keys)
    name: str
    status: str  # pending | running | done | failed | skipped
    started_at: str | None
    finished_at: str | None
    detail: Any


@dataclass(frozen=True)
class Checkpoint:
    """A backup set linked to the release that ran when it was taken."""

    id: int
    created_at: str
    created_by: str
    release_id: int | None
    label: str | None
    set_id: str  # the backup set's id (the ``path`` column)
    status: str  # complete | failed

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Checkpoint:
        return cls(id=int(row["id"]), created_at=row["created_at"],
                   created_by=row["created_by"], release_id=row["release_id"],
                   label=row["label"], set_id=row["path"], status=row["status"])


class StoreError(BackoutError):
    exit_code = ExitCode.EXTERNAL
    code = "state_store"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def actor() -> str:
    """Who is acting: BACKOUT_ACTOR (CI job, on-call name) or the login user."""
    explicit = os.environ.get("BACKOUT_ACTOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        try:
            private_dir(state_dir)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.path}: {exc}",
                             fix="check the file's permissions; restore .backout/ from backup "
                                 "if it is damaged") from exc
        except OSError as exc:
            raise StoreError(f"state store {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of writes; nested inside another, it joins the outer one."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise StoreError(
                f"state store {self.path} has schema {current}, newer than this backout "
                f"understands ({len(MIGRATIONS)})", fix="upgrade backout")
        for version, (name, sql) in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            with self.transaction() as db:
                # executescript would COMMIT our transaction; run statements one by one.
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                           (version, name, now()))

    def schema_version(self) -> int:
        row = self.db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # -- audit log ---------------------------------------------------------
    def record_event(self, action: str, *, target: str | None = None, reason: str | None = None,
                     detail: Mapping[str, Any] | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO events (ts, actor, host, action, target, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now(), actor(), socket.gethostname(), action, target, reason,
             json.dumps(detail or {}, sort_keys=True)),
        )
        return int(cur.lastrowid or 0)

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [_row(r, json_fields=("detail",)) for r in rows]

    # -- facts -------------------------------------------------------------
    def set_fact(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO facts (key, value, updated_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                        " updated_at = excluded.updated_at", (key, json.dumps(value), now()))

    def fact(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    # -- verifications of backup sets -------------------------------------
    def record_verification(self, set_id: str, *, ok: bool, kind: str,
                            detail: str | None = None) -> None:
        """A full check of a set (every byte read: sha256, format, counts), or a
        restore test, and its result."""
        self.db.execute("INSERT INTO verifications (set_id, verified_at, kind, ok, detail)"
                        " VALUES (?, ?, ?, ?, ?)", (set_id, now(), kind, int(ok), detail))

    def last_verifications(self) -> dict[str, dict[str, Any]]:
        """set id -> its newest verification {verified_at, kind, ok, detail}."""
        rows = self.db.execute(
            "SELECT v.set_id, v.verified_at, v.kind, v.ok, v.detail FROM verifications v"
            " JOIN (SELECT set_id, MAX(id) AS id FROM verifications GROUP BY set_id) last"
            " ON last.id = v.id")
        return {r["set_id"]: {"verified_at": r["verified_at"], "kind": r["kind"],
                              "ok": bool(r["ok"]), "detail": r["detail"]} for r in rows}

    # -- copies of sets in repositories ----------------------------------------
    def copy_pending(self, set_id: str, repository: str, completed_at: str | None,
                     error: str | None = None) -> None:
        """A copy to make (or that failed: ``error``); retried by the next run."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO set_copies (set_id, repository, status, completed_at, attempts,"
                " attempted_at, error) VALUES (?, ?, 'pending', ?, ?, ?, ?)"
                " ON CONFLICT (set_id, repository) DO UPDATE SET status = 'pending',"
                " completed_at = COALESCE(excluded.completed_at, completed_at),"
                " attempts = attempts + excluded.attempts,"
                " attempted_at = COALESCE(excluded.attempted_at, attempted_at),"
                " error = excluded.error",
                (set_id, repository, completed_at, int(error is not None),
                 now() if error is not None else None, error))

    def copy_done(self, set_id: str, repository: str, *, snapshot: str,
                  completed_at: str | None) -> None:
        """Copied and its check passed."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO set_copies (set_id, repository, status, snapshot, completed_at,"
                " attempts, attempted_at, copied_at, verified_at)"
                " VALUES (?, ?, 'copied', ?, ?, 1, ?, ?, ?)"
                " ON CONFLICT (set_id, repository) DO UPDATE SET status = 'copied',"
                " snapshot = excluded.snapshot,"
                " completed_at = COALESCE(excluded.completed_at, completed_at),"
                " attempts = attempts + 1, attempted_at = excluded.attempted_at,"
                " copied_at = excluded.copied_at, verified_at = excluded.verified_at,"
                " error = NULL",
                (set_id, repository, snapshot, completed_at, stamp, stamp, stamp))

    def copy_verified(self, set_id: str, repository: str) -> None:
        self.db.execute("UPDATE set_copies SET verified_at = ? WHERE set_id = ? AND"
                        " repository = ?", (now(), set_id, repository))

    def copy_forgotten(self, set_id: str, repository: str) -> None:
        """Retention removed it from the repository."""
        self.db.execute("UPDATE set_copies SET status = 'forgotten' WHERE set_id = ? AND"
                        " repository = ?", (set_id, repository))

    def set_copies(self, *, include_forgotten: bool = False
                   ) -> dict[str, dict[str, dict[str, Any]]]:
        """set id -> repository -> its copy {status, snapshot, copied_at, verified_at, ...}
        (copies retention removed only with ``include_forgotten``)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for row in self.db.execute("SELECT * FROM set_copies WHERE status != 'forgotten' OR ?"
                                   " ORDER BY set_id, repository", (int(include_forgotten),)):
            item = _row(row)
            out.setdefault(item.pop("set_id"), {})[item.pop("repository")] = item
        return out

    def pending_copies(self, repository: str) -> list[str]:
        """Set ids whose copy to ``repository`` is still to make, oldest first."""
        return [r["set_id"] for r in self.db.execute(
            "SELECT set_id FROM set_copies WHERE repository = ? AND status = 'pending'"
            " ORDER BY set_id", (repository,))]

    # -- operations and their journal ---------------------------------------
    def create_operation(self, kind: str, params: Mapping[str, Any], plan: Mapping[str, Any],
                         steps: Sequence[tuple[str, str, str]]) -> int:
        """A running operation with its steps ``(key, name, reason)`` pending, atomically."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO operations (kind, params, plan, status, created_at, created_by)"
                " VALUES (?, ?, ?, 'running', ?, ?)",
                (kind, json.dumps(params), json.dumps(plan), now(), actor()))
            op_id = int(cur.lastrowid or 0)
            for seq, (key, name, reason) in enumerate(steps):
                db.execute("INSERT INTO steps (operation_id, seq, key, name, reason, status)"
                           " VALUES (?, ?, ?, ?, ?, 'pending')", (op_id, seq, key, name, reason))
        return op_id

    def operation(self, op_id: int) -> OperationRow | None:
        row = self.db.execute("SELECT * FROM operations WHERE id = ?", (op_id,)).fetchone()
        return _operation(row) if row else None

    def last_operation(self) -> OperationRow | None:
        row = self.db.execute("SELECT * FROM operations ORDER BY id DESC LIMIT 1").fetchone()
        return _operation(row) if row else None

    def unfinished_operations(self) -> list[OperationRow]:
        """Operations a crash or kill left ``running``, oldest first."""
        rows = self.db.execute("SELECT * FROM operations WHERE status = 'running' ORDER BY id")
        return [_operation(r) for r in rows]

    def history(self, limit: int = 20) -> list[OperationSummary]:
        rows = self.db.execute("SELECT id, kind, status, created_at, created_by, finished_at,"
                               " error FROM operations ORDER BY id DESC LIMIT ?", (limit,))
        return [OperationSummary(id=r["id"], kind=r["kind"], status=r["status"],
                                 created_at=r["created_at"], created_by=r["created_by"],
                                 finished_at=r["finished_at"], error=r["error"]) for r in rows]

    def finish_operation(self, op_id: int, status: str, error: str | None) -> None:
        self.db.execute("UPDATE operations SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                        (status, now(), error, op_id))

    def abandon_operation(self, op_id: int, why: str) -> None:
        self.finish_operation(op_id, "abandoned", why)

    def last_change_finished_at(self) -> str | None:
        """When the last successful rollback, or the last deploy (any outcome: one that
        rolled itself back finishes as failed), finished."""
        row = self.db.execute("SELECT MAX(finished_at) FROM operations WHERE (status = "
                              "'succeeded' AND kind LIKE 'rollback%') OR kind = 'deploy'"
                              ).fetchone()
        return str(row[0]) if row and row[0] else None

    def operation_steps(self, op_id: int) -> list[StepRow]:
        """Every step of an operation as journaled, in plan order."""
        rows = self.db.execute("SELECT seq, COALESCE(key, name) AS key, name, status, started_at,"
                               " finished_at, detail FROM steps WHERE operation_id = ?"
                               " ORDER BY seq", (op_id,))
        return [_step(r) for r in rows]

    def fill_step_keys(self, op_id: int, keys: Sequence[str]) -> None:
        """Give the steps of a journal written before keys existed their plan's keys."""
        with self.transaction() as db:
            for seq, key in enumerate(keys):
                db.execute("UPDATE steps SET key = ? WHERE operation_id = ? AND seq = ?"
                           " AND key IS NULL", (key, op_id, seq))

    def mark_step_started(self, op_id: int, seq: int) -> None:
        self.db.execute("UPDATE steps SET status = 'running', started_at = ?"
                        " WHERE operation_id = ? AND seq = ?", (now(), op_id, seq))

    def mark_step(self, op_id: int, seq: int, status: str, detail: Any = None) -> None:
        """A step's outcome (done, failed, skipped, or pending again) and its result."""
        self.db.execute("UPDATE steps SET status = ?, finished_at = ?, detail = ?"
                        " WHERE operation_id = ? AND seq = ?",
                        (status, now(), json.dumps(detail) if detail is not None else None,
                         op_id, seq))

    def first_failed_step(self, op_id: int) -> StepRow | None:
        row = self.db.execute("SELECT seq, COALESCE(key, name) AS key, name, status, started_at,"
                              " finished_at, detail FROM steps WHERE operation_id = ? AND"
                              " status = 'failed' ORDER BY seq LIMIT 1", (op_id,)).fetchone()
        return _step(row) if row else None

    def step_status(self, op_id: int, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM steps WHERE operation_id = ? AND"
                              " COALESCE(key, name) = ?", (op_id, key)).fetchone()
        return str(row["status"]) if row else None

    def step_started(self, op_id: int, key: str) -> bool:
        """Did the operation ever start the step (journaled, even if it died inside)?"""
        row = self.db.execute("SELECT started_at FROM steps WHERE operation_id = ? AND"
                              " COALESCE(key, name) = ?", (op_id, key)).fetchone()
        return row is not None and row["started_at"] is not None

    # -- checkpoints -------------------------------------------------------
    def add_checkpoint(self, *, release_id: int, label: str | None, set_id: str) -> int:
        cur = self.db.execute(
            "INSERT INTO checkpoints (created_at, created_by, release_id, label, path, status)"
            " VALUES (?, ?, ?, ?, ?, 'complete')", (now(), actor(), release_id, label, set_id))
        return int(cur.lastrowid or 0)

    def checkpoint(self, cp_id: int) -> Checkpoint | None:
        row = self.db.execute("SELECT * FROM checkpoints WHERE id = ?", (cp_id,)).fetchone()
        return Checkpoint.from_row(row) if row else None

    def checkpoint_of_set(self, set_id: str) -> Checkpoint | None:
        row = self.db.execute("SELECT * FROM checkpoints WHERE path = ? ORDER BY id LIMIT 1",
                              (set_id,)).fetchone()
        return Checkpoint.from_row(row) if row else None

    def latest_checkpoint(self, release_id: int | None = None) -> Checkpoint | None:
        """The newest checkpoint (of ``release_id``, when given)."""
        row = self.db.execute(
            "SELECT * FROM checkpoints" + (" WHERE release_id = ?" if release_id is not None
                                           else "") + " ORDER BY id DESC LIMIT 1",
            (release_id,) if release_id is not None else ()).fetchone()
        return Checkpoint.from_row(row) if row else None

    def checkpoints(self, limit: int) -> list[Checkpoint]:
        """The newest checkpoints, newest first."""
        rows = self.db.execute("SELECT * FROM checkpoints ORDER BY id DESC LIMIT ?", (limit,))
        return [Checkpoint.from_row(r) for r in rows]

    def checkpoints_of_releases(self, release_ids: Iterable[int]) -> list[Checkpoint]:
        ids = list(release_ids)
        if not ids:
            return []
        rows = self.db.execute(f"SELECT * FROM checkpoints WHERE release_id IN "
                               f"({','.join('?' * len(ids))}) ORDER BY id", ids)
        return [Checkpoint.from_row(r) for r in rows]

    # -- incidents ---------------------------------------------------------
    def open_incident(self, *, rule: str, level: str, severity: str, reason: str,
                      values: Mapping[str, Any]) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO incidents (opened_at, rule, level, severity, reason,"
                             " status) VALUES (?, ?, ?, ?, ?, 'open')",
                             (now(), rule, level, severity, reason))
            incident_id = int(cur.lastrowid or 0)
            db.execute("INSERT INTO incident_events (incident_id, ts, kind, detail)"
                       " VALUES (?, ?, 'detected', ?)",
                       (incident_id, now(), json.dumps({"rule": rule, "values": dict(values),
                                                        "reason": reason}, sort_keys=True)))
        return incident_id

    def incident_event(self, incident_id: int, kind: str, detail: Mapping[str, Any]) -> None:
        self.db.execute("INSERT INTO incident_events (incident_id, ts, kind, detail)"
                        " VALUES (?, ?, ?, ?)",
                        (incident_id, now(), kind, json.dumps(dict(detail), sort_keys=True)))
        if kind in ("resolved", "escalated"):
            self.db.execute("UPDATE incidents SET status = ?, resolved_at = CASE WHEN ? = "
                            "'resolved' THEN ? ELSE resolved_at END WHERE id = ?",
                            (kind, kind, now(), incident_id))

    def open_incidents(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM incidents WHERE status != 'resolved' ORDER BY id")
        return [dict(r) for r in rows]

    def incidents(self, limit: int = 20) -> list[dict[str, Any]]:
        out = []
        for row in self.db.execute("SELECT * FROM incidents ORDER BY id DESC LIMIT ?", (limit,)):
            item = dict(row)
            item["timeline"] = [_row(e, json_fields=("detail",)) for e in self.db.execute(
                "SELECT ts, kind, detail FROM incident_events WHERE incident_id = ? ORDER BY id",
                (row["id"],))]
            out.append(item)
        return out

    # -- releases ----------------------------------------------------------
    def add_release(self, *, git_commit: str | None, git_dirty: bool, diff_path: str | None,
                    compose_config: Mapping[str, Any], services: Mapping[str, Any],
                    status: str = "recorded", note: str | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO releases (created_at, created_by, git_commit, git_dirty, diff_path,"
            " compose_config, services, status, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now(), actor(), git_commit, int(git_dirty), diff_path,
             json.dumps(compose_config, sort_keys=True), json.dumps(services, sort_keys=True),
             status, note),
        )
        return int(cur.lastrowid or 0)

    def update_release(self, release_id: int, **fields: Any) -> None:
        allowed = {"services", "status", "note", "diff_path"}
        sets, values = [], []
        for key, value in fields.items():
            if key not in allowed:
                raise ValueError(key)
            sets.append(f"{key} = ?")
            values.append(json.dumps(value, sort_keys=True) if key == "services" else value)
        self.db.execute(f"UPDATE releases SET {', '.join(sets)} WHERE id = ?", (*values, release_id))

    def releases(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM releases ORDER BY id DESC"
        rows = self.db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [_row(r, json_fields=("services", "compose_config")) for r in rows]

    def release(self, release_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM releases WHERE id = ?", (release_id,)).fetchone()
        return _row(row, json_fields=("services", "compose_config")) if row else None


def _operation(row: sqlite3.Row) -> OperationRow:
    return OperationRow(id=row["id"], kind=row["kind"], params=json.loads(row["params"]),
                        plan=json.loads(row["plan"]), status=row["status"],
                        created_at=row["created_at"], created_by=row["created_by"],
                        finished_at=row["finished_at"], error=row["error"])


def _step(row: sqlite3.Row) -> StepRow:
    return StepRow(seq=row["seq"], key=row["key"], name=row["name"], status=row["status"],
                   started_at=row["started_at"], finished_at=row["finished_at"],
                   detail=json.loads(row["detail"]) if row["detail"] is not None else None)


def _row(row: sqlite3.Row, json_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(row)
    for key in json_fields:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out


def peek_ids(state_dir: Path) -> dict[str, list[int]]:
    """Release and checkpoint ids, newest first, read without creating or migrating
    anything (for shell completion, which must be quick and never change state).
    An absent or unreadable store has none."""
    path = state_dir / DB_NAME
    if not path.is_file():
        return {"releases": [], "checkpoints": []}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return {"releases": [], "checkpoints": []}
    try:
        found: dict[str, list[int]] = {}
        for key, sql in (("releases", "SELECT id FROM releases ORDER BY id DESC LIMIT 50"),
                         ("checkpoints", "SELECT id FROM checkpoints WHERE status = "
                                         "'complete' ORDER BY id DESC LIMIT 50")):
            try:
                found[key] = [int(r[0]) for r in db.execute(sql)]
            except sqlite3.Error:
                found[key] = []
        return found
    finally:
        db.close()
