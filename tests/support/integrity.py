"""Proving where every acknowledged write ended up.

``AckWriter`` is a client of the test app (``POST /api/v1/items`` on the backend,
which writes one MySQL row, one Redis key, one MongoDB document and one PostgreSQL
row and answers 201 only when all four are written). It logs every acknowledged write with its token
(the item's name) and the time of the acknowledgement.

Tokens are found in the live databases and, byte for byte, in backup artifacts: a
token is short (14 bytes) and plain ASCII, so it appears verbatim in a SQL dump, an
RDB (Redis compresses only strings longer than 20 bytes), BSON and the COPY data of
a pg_dump archive (backout dumps with ``-Z0``; zstd compresses the whole bundle). ``proof`` then
checks the rule: every acknowledged write is in the live data or in the safety
backup, and the writes missing from the live data are exactly the ones the
checkpoint does not have.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cli import clean_env
from tests.support.stack import TestStack, wait_for

TOKEN = re.compile(rb"ack-[0-9a-f]{3}-\d{6}")
ARTIFACT = {"mysql": "mysql.sql.zst", "redis": "redis.rdb.zst", "mongodb": "mongodb.tar.zst",
            "postgresql": "postgresql.pgbundle.zst"}


@dataclass(frozen=True)
class Ack:
    token: str
    item_id: int
    t: float  # time.time() of the acknowledgement


@dataclass
class AckWriter:
    """A thread posting items to the backend, about 20 a second, logging the acked."""

    stack: TestStack
    tag: str = field(default_factory=lambda: secrets.token_hex(2)[:3])
    acked: list[Ack] = field(default_factory=list)
    failed: int = 0
    _n: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> AckWriter:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        url = f"{self.stack.url('backend')}/api/v1/items"
        while not self._stop.is_set():
            self._n += 1
            token = f"ack-{self.tag}-{self._n:06d}"
            req = urllib.request.Request(url, data=json.dumps({"name": token}).encode(),
                                         method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    body = json.loads(resp.read())
                    if resp.status == 201 and body.get("name") == token:
                        self.acked.append(Ack(token, int(body["id"]), time.time()))
                        self._stop.wait(0.05)
                        continue
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
                # no answer, or one cut short (the app stopped mid-response: IncompleteRead):
                # not acknowledged, so no promise to keep; the writer goes on
                pass
            self.failed += 1
            self._stop.wait(0.2)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        start = len(self.acked)
        wait_for(lambda: len(self.acked) >= start + n, timeout=timeout,
                 message=f"{n} more acknowledged writes")

    def tokens(self, before: float | None = None, after: float | None = None) -> set[str]:
        return {a.token for a in self.acked
                if (before is None or a.t < before) and (after is None or a.t > after)}


# --------------------------------------------------------------------------- reading tokens


def tokens_in_bytes(data: bytes) -> set[str]:
    return {m.decode() for m in TOKEN.findall(data)}


def tokens_in_artifact(backup_dir: Path, set_id: str, database: str) -> set[str]:
    path = backup_dir / set_id / ARTIFACT[database]
    raw = subprocess.run(["zstd", "-d", "-q", "-c", str(path)], capture_output=True, check=True,
                         timeout=120).stdout
    if database == "postgresql":
        # The bundle frames the tools' output in chunks of whatever a read returned, so
        # a token may straddle a frame header: read the archives' bytes back whole.
        from backout.engines.pgarchive import BundleReader

        reader = BundleReader(str(path))
        raw = b"".join(value for event, _kind, value in reader.feed(raw) if event == "data")
        reader.finish()
    return tokens_in_bytes(raw)


def live_tokens(stack: TestStack, database: str) -> set[str]:
    if database == "mysql":
        return {str(r[0]) for r in stack.mysql_query(
            "SELECT name FROM items WHERE name LIKE 'ack-%'")}
    if database == "postgresql":
        return {r[0] for r in stack.pg_query("SELECT name FROM items WHERE name LIKE 'ack-%'")}
    if database == "redis":
        lua = ("local out = {} for _, k in ipairs(redis.call('KEYS', 'item:*')) do "
               "out[#out + 1] = redis.call('GET', k) end return cjson.encode(out)")
        values = json.loads(stack.redis_cmd("--raw", "EVAL", lua, "0") or "[]")
        return {v for v in values if isinstance(v, str) and v.startswith("ack-")}
    docs = stack.mongo_eval("result = [d['name'] for d in db['items'].find({}, {'name': 1})"
                            " if str(d.get('name', '')).startswith('ack-')]")
    return set(docs)


# --------------------------------------------------------------------------- the proof


@dataclass
class Proof:
    database: str
    acked: int
    lost: int  # acknowledged writes not in the live data (all in the safety backup)
    missing: int  # writes in the safety backup and not in the checkpoint (ack'd or not)


def redis_overwritten(stack: TestStack, writer: AckWriter, checkpoint: set[str],
                      live: set[str], started: float) -> set[str]:
    """Checkpoint tokens the restore put back and the app then overwrote.

    The app keys Redis by the MySQL item id (``item:<id>``). A checkpoint taken without
    --quiesce dumps MySQL first and Redis a moment later, so after a restore of both the
    Redis keys run ahead of MySQL's ids: the next items reuse ids whose keys the
    checkpoint holds, and overwrite them. Such a token is not lost by the restore: its
    key now holds a write acknowledged after the rollback began."""
    lua = ("local out = {} for _, k in ipairs(redis.call('KEYS', 'item:*')) do "
           "out[#out + 1] = {k, redis.call('GET', k)} end return cjson.encode(out)")
    by_key = dict(json.loads(stack.redis_cmd("--raw", "EVAL", lua, "0") or "[]") or [])
    ids = {a.token: a.item_id for a in writer.acked}
    later = writer.tokens(after=started) & live
    return {t for t in (checkpoint - live) if t in ids
            and by_key.get(f"item:{ids[t]}") in later}


def prove(writer: AckWriter, live: set[str], checkpoint: set[str], safety: set[str],
          database: str, *, started: float, finished: float,
          overwritten: set[str] | frozenset[str] = frozenset()) -> Proof:
    """The rule, for one database restored from ``checkpoint`` between ``started``
    and ``finished`` while ``writer`` wrote.

    * every acknowledged write is in the live data or in the safety backup;
    * the acknowledged writes missing from the live data are not in the checkpoint,
      and every acknowledged write that the checkpoint lacks and that was
      acknowledged before the rollback started is missing (nothing else went back);
    * every write acknowledged after the rollback returned is live.

    ``overwritten``: checkpoint writes the app overwrote after the restore (see
    ``redis_overwritten``).

    ``missing`` (what the safety backup has and the checkpoint has not) is the number
    the data-loss window must have reported; the caller compares it per engine.
    """
    acked = writer.tokens()
    lost = acked - live
    assert lost <= safety, (f"{database}: {len(lost - safety)} acknowledged write(s) in "
                            f"neither the live data nor the safety backup: "
                            f"{sorted(lost - safety)[:5]}")
    assert not (lost & checkpoint) - overwritten, \
        (f"{database}: writes in the checkpoint were not restored: "
         f"{sorted((lost & checkpoint) - overwritten)[:5]} "
         f"({len((lost & checkpoint) - overwritten)}; {writer.failed} failed request(s))")
    assert (checkpoint & acked) - overwritten <= live, \
        f"{database}: the checkpoint was not restored whole"
    before = writer.tokens(before=started) - checkpoint
    assert before <= lost, (f"{database}: writes after the checkpoint survived the restore: "
                            f"{sorted(before - lost)[:5]}")
    assert writer.tokens(after=finished) <= live, f"{database}: writes after the rollback lost"
    missing = safety - checkpoint
    assert lost - overwritten <= missing
    return Proof(database, len(acked), len(lost), len(missing))


def manifest(backup_dir: Path, set_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((backup_dir / set_id / "manifest.json").read_text())
    return data


def check_window(window: dict[str, Any], proof: Proof, backup_dir: Path, checkpoint: str,
                 safety: str) -> None:
    """The window backout reported right before restoring (writers stopped) against
    what is actually missing: each acknowledged POST is one MySQL transaction (one
    items row), one new MongoDB document, two Redis write commands (SET, INCR); the
    Redis key count is exact against the two sets' manifests."""
    db = proof.database
    if db == "mysql":
        assert window["row_deltas"] == {"backout_app.items": proof.missing}, window
        assert window["gtid"]["transactions"] == proof.missing, window["gtid"]
    elif db == "mongodb":
        assert window["document_deltas"] == {"backout_app.items": proof.missing}, window
    elif db == "postgresql":
        assert window["row_deltas"] == {"backout_app.public.items": proof.missing}, window
        # one committed INSERT per acknowledged write, plus read-only transactions
        assert window["transactions"] is not None, window
        assert window["transactions"] >= proof.missing and window["wal"]["bytes"] > 0, window
    else:
        # Read one command before the snapshot's fork: a POST or two may fall between.
        assert 0 <= window["write_commands"] - 2 * proof.missing <= 6, window
        keys = (manifest(backup_dir, safety)["databases"]["redis"]["keys"]["db0"]
                - manifest(backup_dir, checkpoint)["databases"]["redis"]["keys"]["db0"])
        assert window["key_deltas"] == ({"db0": keys} if keys else {}), window


# --------------------------------------------------------------------------- signals


def journal_step_started(project: Path, seq: int, since_op: int, done: bool = False) -> bool:
    """Has step ``seq`` of an operation newer than ``since_op`` started (or ended)?"""
    db = project / ".backout" / "state.db"
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT s.started_at, s.status FROM steps s JOIN operations o ON "
                           "o.id = s.operation_id WHERE o.id > ? AND s.seq = ? ORDER BY o.id "
                           "DESC LIMIT 1", (since_op, seq)).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    if row is None or row[0] is None:
        return False
    return not done or row[1] in ("done", "failed", "skipped")


def last_operation_id(project: Path) -> int:
    db = project / ".backout" / "state.db"
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=5)
    try:
        row = conn.execute("SELECT MAX(id) FROM operations").fetchone()
    finally:
        conn.close()
    return int(row[0] or 0)


def run_signalled(project: Path, args: Iterable[str], *, step: int, sig: int,
                  when: str = "started", hold: float = 3.0, delay: float = 0.0,
                  timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a process group of its own (as a terminal's foreground job) and
    send ``sig`` to the group while step ``step`` runs: the step is held ``hold``
    seconds at its start (or end) by BACKOUT_FAULT_INJECT, and the signal goes out
    as soon as the journal shows the step started (``delay`` seconds later: into the
    step's own work)."""
    since = last_operation_id(project)
    point = f"step-{step}-{when}"
    argv = [sys.executable, "-m", "backout", *args]
    inject = {"BACKOUT_FAULT_INJECT": f"{point}=sleep:{hold}"} if hold else {}
    proc = subprocess.Popen(argv, cwd=project, env=clean_env(**inject, **env),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: journal_step_started(project, step, since, done=when == "done")
                 or proc.poll() is not None, timeout=timeout, interval=0.1,
                 message=f"step {step} {when}")
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    print(f"[signal {signal.Signals(sig).name} at {point}] backout {' '.join(args)} -> "
          f"{proc.returncode}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def steps_of(plan_json: dict[str, Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = plan_json["plan"]["steps"]
    return steps


def index_of(steps: list[dict[str, Any]], action: str, database: str | None = None) -> int:
    for i, s in enumerate(steps):
        inner = s["params"].get("action") if s["action"] == "deploy.rollback_step" else None
        params = s["params"].get("params", {}) if inner else s["params"]
        if (inner or s["action"]) == action and (database is None
                                                  or params.get("database") == database):
            return i
    raise AssertionError(f"no step {action} {database or ''} in the plan")


def last_plan(project: Path) -> dict[str, Any]:
    """The plan of the newest operation, as journaled."""
    conn = sqlite3.connect(project / ".backout" / "state.db", timeout=5)
    try:
        row = conn.execute("SELECT plan FROM operations ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    plan: dict[str, Any] = json.loads(row[0])
    return plan


def safety_sets_of(plan: dict[str, Any]) -> dict[str, str]:
    """database -> safety set id, from a journaled plan (a deploy's wrapped steps too)."""
    out = {}
    for step in plan["steps"]:
        wrapped = step["action"] == "deploy.rollback_step"
        action = step["params"]["action"] if wrapped else step["action"]
        params = step["params"]["params"] if wrapped else step["params"]
        if action == "rollback.db.safety":
            out[params["database"]] = params["set_id"]
    return out


def journal_steps(project: Path) -> list[tuple[str, str, str | None, str | None]]:
    """(name, status, started_at, finished_at) of the newest operation's steps."""
    conn = sqlite3.connect(project / ".backout" / "state.db", timeout=5)
    try:
        rows = conn.execute("SELECT name, status, started_at, finished_at FROM steps WHERE "
                            "operation_id = (SELECT MAX(id) FROM operations) ORDER BY seq"
                            ).fetchall()
    finally:
        conn.close()
    return [(str(r[0]), str(r[1]), r[2], r[3]) for r in rows]
