"""A MySQL dump loaded by several sessions at once (issue 16: parallel restores).

The dump stays one file, as mariadb-dump/mysqldump wrote it. While it is
decompressed, :func:`split_dump` reads it (a line at a time, an INSERT's rows in one
piece: :class:`DumpStream`) and tells apart:

- the rows (``INSERT`` statements between ``LOCK TABLES `t` WRITE;`` and
  ``UNLOCK TABLES;``): any session may load them, in any order, once the table exists;
- everything else (databases, tables, views, triggers, routines, events, the
  session settings at the head and the tail), which the main session runs in the
  dump's own order.

Order is kept where it matters: the main session has run everything before a block of
rows (its ``CREATE TABLE``) before a worker gets the rows (a *sync*), and every row
given out so far is loaded before the main session runs anything that is not plainly a
table or database definition (a *barrier*): a trigger must not fire on restored rows,
a view or routine may read them, an unknown statement may depend on them.

The dump's own ``LOCK TABLES``/``ALTER TABLE ... DISABLE KEYS`` pairs around the rows
are left out: they serialise writers of a table (a lock per session) and only speed up
MyISAM's non-unique indexes. Each worker starts with the dump's head (its ``SET``
lines: character set, time zone, unique and foreign key checks off, SQL mode), as the
single-stream load has it.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from backout import proc
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.operations import interrupt
from backout.storage.pipeline import (
    CHUNK,
    IntegrityError,
    Stall,
    metered,
    reader_stopped,
    spawn_decompress,
)

# Lines of the head every session needs (comments, /*!ver SET ... */; MariaDB's
# sandbox-mode line), up to the first statement of substance.
# MySQL 8's mysqldump adds session lines when GTIDs are on (binlog off for the load:
# every session needs it; its GTID_PURGED, global, is not head and runs once).
_HEAD = re.compile(rb"^(--[^\n]*|/\*M?![0-9]+ SET [^\n]*\*/;|/\*M!999999\\- enable the sandbox mode \*/ ?"
                   rb"|SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION\.SQL_LOG_BIN;"
                   rb"|SET @@SESSION\.SQL_LOG_BIN ?= ?0;)?\r?\n$")
_LOCK = re.compile(rb"^LOCK TABLES `((?:[^`]|``)+)` WRITE;\r?\n$")
_UNLOCK = re.compile(rb"^UNLOCK TABLES;\r?\n$")
_KEYS = re.compile(rb"^/\*!40000 ALTER TABLE `(?:[^`]|``)+` (?:DISABLE|ENABLE) KEYS \*/;\r?\n$")
_USE = re.compile(rb"^USE `((?:[^`]|``)+)`;\r?\n$")
_DELIMITER = re.compile(rb"^DELIMITER (\S+)\r?\n$")
# Statements of the main session that need no barrier: they define a database or a
# table no row given out so far belongs to (a table's rows come after its CREATE).
_PLAIN = re.compile(
    rb"^(--|\r?\n$|/\*![0-9]+ SET (@saved_cs_client|character_set_client)|"
    rb"DROP TABLE IF EXISTS `|CREATE TABLE `|"
    rb"CREATE DATABASE |USE `|/\*!40000 DROP DATABASE IF EXISTS `)")


@dataclass(frozen=True)
class Head:
    """The dump's head: every session runs it first."""

    text: bytes


@dataclass(frozen=True)
class Main:
    """Lines the main session runs, in order. ``barrier``: every row given out so far
    must be loaded first."""

    text: bytes
    barrier: bool


@dataclass(frozen=True)
class Rows:
    """One INSERT statement of ``table`` in ``database``, for any session. The first of
    a block has ``first``: the main session must have run what it was given first."""

    database: bytes
    table: bytes
    statement: bytes
    first: bool


Event = Head | Main | Rows


class _Lines:
    """Lines from any iterable (the tests give lists): an INSERT's remaining lines
    gathered one by one."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._it = iter(lines)

    def __iter__(self) -> Iterator[bytes]:
        return self._it

    def statement_rest(self) -> tuple[bytes, bool]:
        """The lines from here through the first that ends with ';' (before its line
        end), and True; at the end of the lines, all that was left, and False."""
        gathered = []
        for line in self._it:
            gathered.append(line)
            if _ends_with_semicolon(line):
                return b"".join(gathered), True
        return b"".join(gathered), False


class DumpStream(_Lines):
    """The decompressed dump, read a CHUNK at a time: its lines one by one, and an
    INSERT's remaining lines in one piece, found by the ';' that ends it (values never
    hold a raw newline: the dump tools write it as \\n, so a line ends with ';' where
    a ';' is followed by a line end). A line at a time through Python was 3.8 CPU s
    per GB of dump, on the cores the server needs for the load; MariaDB writes a row
    per line. ``count[0]``: the bytes read so far (the stall watch)."""

    def __init__(self, stream: IO[bytes], count: list[int], size: int = CHUNK) -> None:
        super().__init__(())
        self._stream = stream
        self._count = count
        self._size = size
        self._buf = b""
        self._pos = 0
        self._eof = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        parts: list[bytes] = []
        searched = self._pos  # where the line's end is looked for
        while True:
            end = self._buf.find(b"\n", searched)
            if end >= 0:
                line = self._buf[self._pos:end + 1]
                self._pos = end + 1
                return b"".join([*parts, line]) if parts else line
            moved = self._read_on(len(self._buf), parts)
            if moved is None:
                line = b"".join([*parts, self._buf[self._pos:]])
                self._pos = len(self._buf)
                if line:
                    return line
                raise StopIteration
            searched = moved

    def _read_on(self, keep: int, parts: list[bytes]) -> int | None:
        """Add the next read to the buffer; what the buffer held from ``keep`` on (a
        few bytes at most) stays in it. Returns where ``keep`` is now (the search goes
        on from there), or None at the stream's end (nothing changed).

        Unread bytes before ``keep`` stay in the buffer too while they are fewer than
        a read (a statement over two reads: one copy); more (a long line or statement
        over many reads) go to ``parts``, joined once by the caller: a buffer that
        grew by every read was copied whole at each, quadratic in the statement."""
        if self._eof:
            return None
        data = self._stream.read(self._size)
        if not data:
            self._eof = True
            return None
        self._count[0] += len(data)
        if keep - self._pos > self._size:
            parts.append(self._buf[self._pos:keep])
            self._buf = self._buf[keep:] + data
            moved = 0
        else:
            self._buf = self._buf[self._pos:] + data
            moved = keep - self._pos
        self._pos = 0
        return moved

    def statement_rest(self) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        searched = self._pos  # where the next ';' is looked for
        while True:
            semicolon = self._buf.find(b";", searched)
            if semicolon >= 0:
                after = semicolon + 1
                while after < len(self._buf) and self._buf[after] == 13:  # \r
                    after += 1
                if after < len(self._buf):
                    if self._buf[after] == 10:  # \n: the statement's last line
                        text = self._buf[self._pos:after + 1]
                        self._pos = after + 1
                        return (b"".join([*parts, text]) if parts else text), True
                    searched = semicolon + 1  # a ';' inside the line
                    continue
            # No ';' ending a line yet: read on. A ';' the buffer ends just after (its
            # line end in the next read) is looked at again.
            moved = self._read_on(semicolon if semicolon >= 0 else len(self._buf), parts)
            if moved is None:
                text = b"".join([*parts, self._buf[self._pos:]])
                self._pos = len(self._buf)
                return text, _ends_with_semicolon(text)
            searched = moved


def _ends_with_semicolon(text: bytes) -> bool:
    """Does ``text`` end a statement: ';' then only line ends (``text.rstrip(b"\\r\\n")
    .endswith(b";")`` without a copy of a long statement)?"""
    end = len(text)
    while end and text[end - 1] in (10, 13):
        end -= 1
    return end > 0 and text[end - 1] == 59


def split_dump(lines: Iterable[bytes]) -> Iterator[Event]:
    """The dump's lines as events, in the dump's order (see the module's docstring).
    ``lines``: a :class:`DumpStream` or any iterable of lines."""
    source = lines if isinstance(lines, _Lines) else _Lines(lines)
    it = iter(source)
    head: list[bytes] = []
    pending: bytes | None = None
    for line in it:
        if _HEAD.match(line):
            head.append(line)
            continue
        pending = line
        break
    yield Head(b"".join(head))
    if pending is None:
        return
    database = b""
    delimiter = b";"
    statement: list[bytes] = []  # a multi-line main statement being gathered
    plain_statement = True

    def main_lines(line: bytes) -> Iterator[Event]:
        nonlocal database, delimiter, plain_statement
        if not statement:
            plain_statement = bool(_PLAIN.match(line)) and delimiter == b";"
            if (m := _USE.match(line)) is not None:
                database = m.group(1)
            if (m := _DELIMITER.match(line)) is not None:
                delimiter = m.group(1)
                plain_statement = False
        statement.append(line)
        stripped = line.rstrip(b"\r\n")
        # a statement ends at its delimiter at the end of a line; comments, blank
        # lines and client commands (DELIMITER) between statements are whole lines
        if stripped.endswith(delimiter) or (len(statement) == 1 and (
                stripped.startswith(b"--") or not stripped or _DELIMITER.match(line))):
            yield Main(b"".join(statement), barrier=not plain_statement)
            statement.clear()

    lines_left: Iterator[bytes] = itertools.chain([pending], it)
    for line in lines_left:
        lock = _LOCK.match(line) if not statement and delimiter == b";" else None
        if lock is None:
            yield from main_lines(line)
            continue
        table = lock.group(1)
        # Only literal rows of the locked table may go to any session: a plain SQL
        # file given as BACKUP may hold an INSERT ... SELECT reading other tables
        rows_of = _rows_of(table)
        first = True
        for inner in lines_left:
            # an INSERT goes on to the line that ends it (values never hold a raw
            # newline: the dump tools write it as \n)
            if rows_of.match(inner):
                ended = _ends_with_semicolon(inner)
                rows = inner
                if not ended:
                    rest, ended = source.statement_rest()
                    rows += rest
                if not ended:  # the dump ended inside an INSERT: the main session reports it
                    yield Main(rows, barrier=True)
                    return
                yield Rows(database, table, rows, first)
                first = False
                continue
            if _UNLOCK.match(inner):
                break
            if _KEYS.match(inner):
                continue
            # Something else between LOCK and UNLOCK: run it where the rows so far
            # are loaded, in order, and the rows after it wait for it (never seen from
            # mariadb-dump or mysqldump; a hand-made SQL file may hold anything)
            yield from main_lines(inner)
            first = True


def _rows_of(table: bytes) -> re.Pattern[bytes]:
    """An INSERT (or INSERT IGNORE, REPLACE: --insert-ignore, --replace) of literal
    rows into ``table``, with or without its column list (--complete-insert)."""
    return re.compile(rb"^(?:INSERT(?: IGNORE)?|REPLACE) INTO `" + re.escape(table)
                      + rb"` (?:VALUES ?\(|VALUES\r?\n|\((?:`(?:[^`]|``)+`,? ?)+\) VALUES)")




class Session(Protocol):
    """A client session the loader writes SQL into."""

    name: str

    def send(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Return once the server has run everything sent so far."""

    def backlog(self) -> int:
        """Bytes sent and not yet written to the client."""

    def finish(self) -> None:
        """End the input; raise if the client failed."""

    def kill(self) -> None: ...


def load(events: Iterable[Event], main: Session, worker: Callable[[int], Session],
         workers: int) -> dict[str, int]:
    """Run the events (:func:`split_dump`) on ``main`` and up to ``workers`` sessions
    made by ``worker(n)``, in the order the module's docstring gives. A worker is
    started when rows come and every one started so far still has rows to write
    (a small dump costs one more client, not ``workers``). Returns what went where
    (for the log and the tests)."""
    counts = {"statements_in_parallel": 0, "syncs": 0, "barriers": 0, "workers": 0}
    head = b""
    started: list[Session] = []
    given = False  # rows given out since the last barrier
    try:
        for event in events:
            if isinstance(event, Head):
                head = event.text
                main.send(head)
            elif isinstance(event, Main):
                if event.barrier and given:
                    for session in started:
                        session.sync()
                    counts["barriers"] += 1
                    given = False
                main.send(event.text)
            else:
                if event.first:
                    main.sync()  # the table exists
                    counts["syncs"] += 1
                idle = [s for s in started if s.backlog() == 0]
                if not idle and len(started) < workers:
                    session = worker(len(started) + 1)
                    started.append(session)
                    session.send(head)
                    idle = [session]
                session = idle[0] if idle else min(started, key=lambda s: s.backlog())
                session.send(b"USE `" + event.database + b"`;\n" + event.statement
                             if event.database else event.statement)
                counts["statements_in_parallel"] += 1
                given = True
        for session in started:
            session.finish()
        main.finish()
    finally:
        counts["workers"] = len(started)
    return counts


class ClientSession:
    """A ``mariadb``/``mysql`` client fed through a pipe by a thread of its own (a
    full pipe blocks that thread, not the loader). ``sync`` sends a ``SELECT`` of a
    numbered token and waits until the client prints it: the client sends one
    statement at a time and waits for each result."""

    QUEUED_MAX = 8 << 20  # bytes waiting for the pipe, per session

    def __init__(self, env: Environment, argv: Sequence[str], secret_env: Mapping[str, str],
                 cwd: str | None, name: str) -> None:
        self.name = name
        self.env = env
        self.argv = list(argv)
        # kept while the client runs: its last line names the failure
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self.proc = proc.popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self._stderr, cwd=cwd,
                                    env=proc.child_env(env, secret_env), **proc.CHILD)
        except FileNotFoundError as exc:
            raise ExternalError(f"{name}: {self.argv[0]} is not installed") from exc
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._queued = 0
        self._room = threading.Condition()
        self._asked = 0
        self._seen = 0
        self._seen_changed = threading.Condition()
        self._ended = False
        self.error: BaseException | None = None
        self.written = 0
        self._writer = threading.Thread(target=self._write, daemon=True, name=f"{name} in")
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"{name} out")
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        assert self.proc.stdin is not None
        try:
            while (data := self._queue.get()) is not None:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                self.written += len(data)
                with self._room:
                    self._queued -= len(data)
                    self._room.notify_all()
        except (BrokenPipeError, OSError) as exc:
            self.error = exc  # the client ended: its exit code and stderr say why
        finally:
            with self._room:
                self._ended = True
                self._room.notify_all()
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            if line.startswith(b"backout-sync-"):
                with self._seen_changed:
                    self._seen = max(self._seen, int(line[13:].strip() or 0))
                    self._seen_changed.notify_all()
        with self._seen_changed:
            self._ended = True
            self._seen_changed.notify_all()

    def send(self, data: bytes) -> None:
        with self._room:
            while self._queued > self.QUEUED_MAX and not self._ended:
                self._room.wait(1)
            if self._ended:
                raise self._failed()
            self._queued += len(data)
        self._queue.put(data)

    def backlog(self) -> int:
        return self._queued

    def sync(self) -> None:
        self._asked += 1
        token = self._asked
        self.send(f"SELECT 'backout-sync-{token}';\n".encode())
        with self._seen_changed:
            while self._seen < token:
                if self._ended or self.proc.poll() is not None:
                    raise self._failed()
                self._seen_changed.wait(0.5)

    def finish(self) -> None:
        self._queue.put(None)
        self._writer.join()
        rc = self.proc.wait()
        self._reader.join(5)
        if rc != 0 or self.error is not None:  # exit 0 with input left unread fails too
            raise self._failed()
        self._stderr.close()

    def _failed(self) -> ExternalError:
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._stderr.seek(0)
        text = self.env.redact(self._stderr.read().decode(errors="replace"))
        if rc == 0:
            return ExternalError(f"{self.name}: the client ended before reading all it was "
                                 f"sent: {proc.last_line(text)}")
        return ExternalError(f"{self.name} failed (exit {rc}): {proc.last_line(text)}")

    def kill(self) -> None:
        self.proc.kill()
        self._queue.put(None)


def load_in_parallel(env: Environment, artifact: Path, session: Callable[[str], Session],
                     sessions: int, *, what: str, timeout: float = 6 * 3600,
                     stall: float | None = None) -> dict[str, int]:
    """``zstd -dc artifact`` split by :func:`split_dump` over one main session and up
    to ``sessions`` workers, each made by ``session(name)``. Cut short like a single-stream
    load: an interrupt of the step, ``stall`` seconds without a byte read, ``timeout``."""
    env.log_external(f"$ zstd -dc {artifact.name} | {sessions + 1} sessions ({what})")
    start = time.monotonic()
    with tempfile.TemporaryFile() as z_err:
        zstd = spawn_decompress(env, artifact, stdout=subprocess.PIPE, stderr=z_err)
        opened: list[Session] = []
        outcome: dict[str, int] = {}
        errors: list[BaseException] = []
        read = [0]

        stopping = threading.Event()
        guard = threading.Lock()

        def kill_all() -> None:
            # under the lock: the loader may be starting a session this very moment;
            # once stopping is set it starts none
            with guard:
                stopping.set()
                zstd.kill()
                for s in opened:
                    s.kill()

        def open_session(name: str) -> Session:
            with guard:
                if stopping.is_set():
                    raise ExternalError(f"{what}: stopped")
                made = session(name)
                opened.append(made)
                return made

        def run() -> None:
            try:
                assert zstd.stdout is not None
                main = open_session(f"{what} (main session)")
                outcome.update(load(split_dump(DumpStream(zstd.stdout, read)), main,
                                    lambda n: open_session(f"{what} (session {n})"), sessions))
            except BaseException as exc:
                errors.append(exc)
                kill_all()

        loader = threading.Thread(target=run, daemon=True, name=f"{what} loader")
        intr = interrupt.current()
        stalled = Stall(stall, lambda: read[0] + sum(getattr(s, "written", 0) for s in opened),
                        what, kill_all)
        loader.start()
        try:
            with metered(env, what, zstd.pid, artifact.stat().st_size, estimated=False):
                while loader.is_alive():
                    loader.join(interrupt.POLL)
                    stalled()
                    if intr.stop_now:
                        kill_all()
                        raise InterruptedOperation(f"{what}: stopped by {intr.signal}")
                    if time.monotonic() - start > timeout:
                        kill_all()
                        raise ExternalError(f"{what}: timed out after {timeout:.0f}s")
        except BaseException:
            kill_all()
            # every session is dead or dying: the loader ends at its next send or sync
            loader.join(30)
            zstd.wait()
            raise
        z_rc = zstd.wait(timeout=60)
        z_err.seek(0)
        z_msg = z_err.read().decode(errors="replace")
        # zstd killed by us (a session failed) or by its reader stopping says nothing of
        # the artifact: the session's error does; zstd failing by itself blames the file
        ours = (stopping.is_set() and z_rc == -signal.SIGKILL) or reader_stopped(z_rc, z_msg)
        if z_rc != 0 and not ours:
            raise IntegrityError(f"{what}: {artifact.name} does not decompress: "
                                 f"{proc.last_line(z_msg)}")
        if errors:
            raise errors[0]
        if z_rc != 0:
            raise ExternalError(f"{what}: the load stopped before the end of {artifact.name}")
    env.log_external(f"  {what}: {outcome.get('statements_in_parallel', 0)} statements over "
                     f"{outcome.get('workers', 0)} sessions, {outcome.get('syncs', 0)} syncs, "
                     f"{outcome.get('barriers', 0)} barriers, {time.monotonic() - start:.2f}s")
    return outcome
