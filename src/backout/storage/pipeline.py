"""Streaming a producer's output through zstd into a file, then proving the file.

Write path: ``producer | zstd > file``; nothing is buffered whole in memory and the
file is fsync'd. A dump is complete only if every stage exited 0. Given a checker,
the backup is proven in the same pass (issue 16: the second read of the file cost
more than the dump): the producer's bytes go through the format-specific checker
(the MySQL trailer and rows, the RDB structure and CRC, the tar of BSON) on their
way to zstd, and zstd's output to the file and to sha256; the counts describe the
very bytes zstd compressed. backout's own checkers run in a process of their own
between the producer and zstd (``proofchild``: ``producer | proof | zstd``), any
other, and those of a producer that is Python itself, in a thread here. A ``zstd
-t`` beside it decompresses the bytes written to the file, as they are written (in
C), against the frame's checksum of those bytes: a
file that does not give them back fails the backup then, not at the restore that
needs it. (It read the file back once written, 0.12 s per 100 MB, 1.2 s per GB, on
the wall clock after the dump; beside the dump it costs a core's spare cycles.) So
nothing reads the file back at backup time: a file changed on disk after it was
written (a storage fault, a mount that does not keep what it was given) is found by
the sha256 of ``scan``, which every restore and `backups verify` runs first.

Verify path (``scan``, one read of the file, for `backups verify` and restores):
Python reads the compressed file, hashes it (sha256) and feeds it to ``zstd -d``;
the decompressed stream goes to the checker. A zero-byte, truncated or corrupt
artifact fails here even if a checksum exists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from backout import proc
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError
from backout.errors import (
    IntegrityError as IntegrityError,  # defined there: checkers need no pipeline
)
from backout.operations import interrupt

CHUNK = 1 << 20
STDIN = Path("-")
TEST_TIMEOUT = 3600.0  # zstd -t of what is already written: far faster than the dump


class ProofProcessError(ExternalError):
    """The process checking a dump as it is written failed or gave no verdict: the
    backup is not proven (nothing says the database is at fault)."""

    code = "proof_failed"


class StalledError(ExternalError):
    """The data of a dump or restore stopped moving (a hung database or engine)."""

    code = "stalled"


class NothingStreamedError(ExternalError):
    """A producer writing into a FIFO (``stream_to_file(into=...)``) ended before a
    byte came through it: nothing was dumped, so the caller may take another way."""


class Stall:
    """Called at every poll of a child: raises StalledError (after ``stop()``) when
    ``progress()`` has not changed for ``seconds``. None disables it."""

    def __init__(self, seconds: float | None, progress: Callable[[], int | None], what: str,
                 stop: Callable[[], None]) -> None:
        self.seconds = seconds
        self.progress = progress
        self.what = what
        self.stop = stop
        self.last: int | None = None
        self.since = time.monotonic()

    def __call__(self) -> None:
        if self.seconds is None:
            return
        value = self.progress()
        now = time.monotonic()
        if value is None or value != self.last:
            self.last, self.since = value, now
            return
        if now - self.since > self.seconds:
            self.stop()
            raise StalledError(f"{self.what}: no data moved for {self.seconds:.0f}s "
                               "(the database or the Docker Engine stopped answering)",
                               fix="check `docker info` and the database's logs; "
                                   "[backups] stall_seconds sets the limit")


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class DiskFullError(ExternalError):
    code = "disk_full"

    @classmethod
    def at(cls, what: str, where: Path) -> DiskFullError:
        if where.name.startswith(".partial-"):  # the set being written: name the disk's dir
            where = where.parent
        return cls(f"{what}: no space left on the backup disk ({where})",
                   fix="free space or point [backups] dir at a larger disk")


class Checker(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    duration: float
    exit_code: int = 0  # the producer's
    stderr: str = ""  # the producer's (redacted)
    scanned: Scanned | None = None  # when written with a checker: its proof


class _Proof:
    """The checks of a backup made while it is written: a thread moves zstd's output
    into the file through sha256 and ``zstd -t``; the producer's bytes reach zstd
    through the checker, either here (``feed``, from the thread ``tee`` starts) or in
    the proof process, whose verdict ``take_verdict`` reads. A checker's objection is
    kept (the stream still flows, so the pipeline ends as it would) and raised by
    ``scanned``."""

    def __init__(self, env: Environment, checker: Checker, zstd: subprocess.Popen[bytes],
                 out: IO[bytes], on_error: Callable[[], None]) -> None:
        assert zstd.stdout is not None  # its stdin: fed here, or the proof process's
        self.checker = checker
        self.zstd_in = zstd.stdin
        self.checks: dict[str, Any] | None = None  # the proof process's counts
        self.finish_error: BaseException | None = None  # its checker's, at the end
        # `zstd -t` of what goes into the file, fed by the sink as it writes
        # (-q: its stderr is an error line at most, read once it has exited)
        try:
            self.tester = subprocess.Popen(zstd_argv(test=STDIN), stdin=subprocess.PIPE,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                           env=proc.child_env(env), **proc.CHILD)
        except (OSError, subprocess.SubprocessError) as exc:
            on_error()  # the producer and zstd run already: they must not be left
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ExternalError(f"zstd -t could not start: {why}") from exc
        self.test_said: str | None = None  # its stderr, once it has exited
        self.digest = hashlib.sha256()
        self.raw = 0
        self.received = 0  # from the producer, counted as it arrives (raw: as passed on)
        self.written = 0
        self.check_error: BackoutError | None = None
        self.errors: list[BaseException] = []  # of the threads: not the checker's
        self.on_error = on_error
        self._threads = [threading.Thread(target=self._sink, args=(zstd.stdout, out),
                                          daemon=True)]
        self._threads[0].start()

    def feed(self, chunk: bytes) -> None:
        assert self.zstd_in is not None
        self.raw += len(chunk)
        if self.check_error is None:
            try:
                self.checker.feed(chunk)
            except BackoutError as exc:
                self.check_error = exc
        self.zstd_in.write(chunk)

    def take_verdict(self, what: str, checking: subprocess.Popen[bytes], said: str,
                     channel: IO[bytes]) -> None:
        """The proof process's verdict (``proofchild``), once it has exited: what the
        thread's checks would have left here (a failure of the checker's ``finish`` is
        raised by ``scanned``, as the thread's is). A process that gave none failed the
        backup: nothing says what its stream held."""
        rc = checking.returncode
        how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        if rc != 0:
            raise ProofProcessError(f"{what}: the check of the dump as it was written failed "
                                    f"({how}): {proc.last_line(said)}")
        channel.seek(0)
        try:
            verdict = pickle.load(channel)
            raw, error, failed_in = int(verdict["raw"]), verdict["error"], verdict["failed_in"]
            checks, flowing = verdict["checks"], verdict["flowing"]
        except Exception as exc:  # cut short or not ours: no verdict
            raise ProofProcessError(f"{what}: the check of the dump as it was written left no "
                                    f"verdict that can be read ({type(exc).__name__}: {exc})"
                                    ) from exc
        self.raw = raw
        if isinstance(error, BackoutError):
            self.check_error = error  # an objection to the dump
        elif error is not None and failed_in == "feed":
            raise error  # the checker's own failure, raised where the thread's is
        elif error is not None:
            self.finish_error = error
        elif checks is None and raw and not flowing:
            raise ProofProcessError(f"{what}: the check of the dump stopped before its end "
                                    "(zstd stopped reading, yet exited 0)")
        self.checks = checks

    def tee(self, source: IO[bytes]) -> None:
        """Pass all of ``source`` (the producer's stdout) on, in a thread."""
        def run() -> None:
            try:
                # The `docker exec` stream comes in pieces of 8-64 KB; the checker and
                # zstd get them a CHUNK at a time: a pass of each per piece made the
                # MySQL dump 20 % slower than the bare pipe (0.7 CPU s per 96 MB, 0.3-0.4
                # now). Each piece counts at once (`received`: the stall watch).
                filled, view = 0, memoryview(bytearray(CHUNK))
                while size := read_piece(source, view[filled:]):
                    self.received += size
                    filled += size
                    if filled == CHUNK:
                        self.feed(bytes(view))
                        filled = 0
                if filled:
                    self.feed(bytes(view[:filled]))
            except BrokenPipeError:
                pass  # zstd died: its exit code says why; the producer gets SIGPIPE
            except BaseException as exc:
                self.errors.append(exc)
                self.on_error()
            finally:
                self.close_input()
                with contextlib.suppress(OSError):
                    source.close()
        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close_input(self) -> None:
        if self.zstd_in is not None:
            with contextlib.suppress(OSError):
                self.zstd_in.close()

    def _sink(self, compressed: IO[bytes], out: IO[bytes]) -> None:
        try:
            # One piece at a time: what zstd has written so far, not a whole CHUNK:
            # the file grows as zstd's output does.
            # Past the file object's buffer, straight to its descriptor: bytes a full
            # disk refused must not wait in a buffer for the file's close to retry
            # them (its OSError would then replace the DiskFullError raised here).
            fd = out.fileno()
            test: IO[bytes] | None = self.tester.stdin
            buffer = memoryview(bytearray(CHUNK))
            while size := read_piece(compressed, buffer):
                piece = buffer[:size]
                self.digest.update(piece)
                left = piece
                while left:
                    left = left[os.write(fd, left):]
                self.written += size
                if test is not None:
                    try:
                        test.write(piece)
                    except BrokenPipeError:
                        # the test gave up (a bad frame): its exit code fails the
                        # backup in `scanned`; the file is still written to the end
                        test = None
        except BaseException as exc:
            self.errors.append(exc)
            self.on_error()  # nobody reads zstd's output any more: stop the pipeline
        finally:
            with contextlib.suppress(OSError):
                compressed.close()
            with contextlib.suppress(OSError):
                assert self.tester.stdin is not None
                self.tester.stdin.close()  # the end of the file: the test's verdict

    def join(self, what: str, dest: Path, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)
        self._end_test(timeout)
        for exc in self.errors:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DiskFullError.at(what, dest.parent) from exc
        if self.errors:
            raise self.errors[0]

    def scanned(self, what: str, dest: Path) -> Scanned:
        """The proof, once the file is written and fsync'd (and ``join`` has run): the
        checker's verdict, then the test's of the bytes written."""
        if self.check_error is not None:
            raise self.check_error
        if self.raw == 0:
            raise IntegrityError(f"{what}: the backup of {dest.name} is empty (the dump "
                                 "wrote nothing)")
        if self.finish_error is not None:
            raise self.finish_error
        checks = self.checker.finish() if self.checks is None else self.checks
        rc = self.tester.returncode
        if rc != 0 and (rc is None or rc < 0 or not (self.test_said or "").strip()):
            # killed (the timeout, the OOM killer) or silent: no verdict, not corruption
            how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit {rc}"
            raise IntegrityError(f"{what}: {dest.name} could not be tested as written (zstd "
                                 f"-t {how}, no message): the backup is not proven")
        if rc != 0:
            raise IntegrityError(f"{what}: {dest.name} as written does not decompress to what "
                                 f"was dumped: {proc.last_line(self.test_said or '')}")
        return Scanned(self.digest.hexdigest(), self.written, self.raw, checks)

    def _end_test(self, timeout: float | None) -> None:
        """The test has had the whole file (the sink closed its input): its verdict.
        A pipeline being torn down (``timeout`` set) does not wait for one."""
        if self.test_said is not None:
            return
        if timeout is not None:
            self.tester.kill()
        try:
            self.tester.wait(timeout if timeout is not None else TEST_TIMEOUT)
        except subprocess.TimeoutExpired:  # hung: no verdict is a failed one
            self.tester.kill()
            self.tester.wait()
        assert self.tester.stderr is not None
        with self.tester.stderr:
            self.test_said = self.tester.stderr.read().decode(errors="replace")


def read_piece(pipe: IO[bytes], into: memoryview) -> int:
    """One read of what ``pipe`` holds now, into ``into`` (a buffer kept for the whole
    stream); 0 at its end. ``read1(CHUNK)`` made a new CHUNK-sized object for every
    piece of 8-64 KB a pipe gives: the page faults were half the backup pipeline's
    system time, 2 CPU s per GB of dump on cores the dump itself needs."""
    return cast(io.BufferedReader, pipe).readinto1(into)  # Popen's pipes are buffered readers


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_count(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def chars_read(pid: int) -> int | None:
    """Bytes process ``pid`` has read so far (``rchar`` of /proc/PID/io), or None.

    zstd reads exactly the stream it compresses (or the file it decompresses), so
    this is the progress of a transfer no byte of which passes through Python."""
    return _io_count(pid, "rchar")


def bytes_written_by(pid: int) -> int | None:
    """What process ``pid`` has written so far (``wchar``), or None if unknown."""
    return _io_count(pid, "wchar")


@contextlib.contextmanager
def metered(env: Environment, what: str, pid: int, total: int | None, *,
            estimated: bool) -> Iterator[None]:
    """Report what ``pid`` (a zstd) has read to the environment's progress sink, while
    the body runs; nothing at all when no one watches (no terminal, --json)."""
    meter = env.meter(what, total, estimated=estimated)
    if meter is None:
        yield
        return
    meter.update(0)  # shown at once: a short transfer is seen too
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.25):
            done = chars_read(pid)
            if done is not None:
                meter.update(done)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join(timeout=2)
        meter.close()


class _Writer:
    """What ``write`` of ``stream_from_python`` writes to when a checker proves the
    stream as it goes."""

    def __init__(self, proof: _Proof) -> None:
        self.proof = proof

    def write(self, data: bytes) -> int:
        self.proof.feed(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def stream_from_python(env: Environment, write: Callable[[IO[bytes]], None], dest: Path, *,
                       what: str, level: int = 3, total: int | None = None,
                       checker: Checker | None = None) -> Written:
    """Like ``stream_to_file`` with Python as the producer: ``write(pipe)`` | zstd > dest.
    ``total``: the engine's estimate of the bytes written, for the progress bar.
    ``checker``: prove the stream as it is written (``Written.scanned``)."""
    start = time.monotonic()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with tempfile.TemporaryFile() as z_err, os.fdopen(fd, "wb") as out:
        try:
            zstd = subprocess.Popen(zstd_argv(level=level), stdin=subprocess.PIPE,
                                    stdout=out if checker is None else subprocess.PIPE,
                                    stderr=z_err, env=proc.child_env(env), **proc.CHILD)
        except FileNotFoundError as exc:
            raise ExternalError("zstd is not installed", fix="apt-get install zstd") from exc
        assert zstd.stdin is not None
        try:
            proof = None if checker is None else _Proof(env, checker, zstd, out, zstd.kill)
        except BaseException:
            _reap(zstd)
            raise
        with metered(env, what, zstd.pid, total, estimated=True):
            try:
                if proof is None:
                    write(zstd.stdin)
                    zstd.stdin.close()
                else:
                    try:
                        write(_Writer(proof))  # type: ignore[arg-type]
                    finally:
                        proof.close_input()  # zstd must see the end, whatever happened
            except BrokenPipeError:
                pass  # zstd died: its exit code and stderr explain why
            except BaseException as exc:
                zstd.kill()
                zstd.wait()
                _settle(proof, what, dest)
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise DiskFullError.at(what, dest.parent) from exc
                raise
            z_rc = zstd.wait()
        if proof is not None:
            proof.close_input()
            proof.join(what, dest)
        z_err.seek(0)
        z_msg = z_err.read().decode(errors="replace")
        if z_rc != 0:
            if "No space left" in z_msg or _disk_full(dest):
                raise DiskFullError.at(what, dest.parent)
            raise ExternalError(f"{what}: zstd failed (exit {z_rc}): {proc.last_line(z_msg)}")
        _fsync_out(out, what, dest)
    duration = time.monotonic() - start
    scanned = None if proof is None else proof.scanned(what, dest)
    return Written(dest, dest.stat().st_size, duration, scanned=scanned)


def _fsync_out(out: IO[bytes], what: str, dest: Path) -> None:
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError.at(what, dest.parent) from exc
        raise


def stream_to_file(env: Environment, producer: Sequence[str], dest: Path, *, what: str,
                   level: int = 3, secret_env: Mapping[str, str] | None = None,
                   cwd: str | None = None, timeout: float = 6 * 3600,
                   total: int | None = None, stdin: IO[bytes] | None = None,
                   stall: float | None = None, ok_exit: tuple[int, ...] = (0,),
                   checker: Checker | None = None, into: Path | None = None) -> Written:
    """Run ``producer | zstd -<level>`` into ``dest`` (mode 0600) and fsync it.
    ``total``: the engine's estimate of the bytes produced, for the progress bar.
    ``checker``: prove the stream as it is written (``Written.scanned``); one of
    backout's own checks runs in a process of its own between the producer and zstd
    (``proofchild``), any other in a thread of this one.

    The wait is cut short by an interrupt of the step (InterruptedOperation) or when
    the file stops growing for ``stall`` seconds (StalledError). ``ok_exit``: the
    producer's exit codes that count as success (the dump's own checks decide).

    ``into``: a FIFO (made by the caller) the producer writes its stream into instead
    of its stdout: a client beside the database's container, whose bytes then pass
    no Docker Engine (its exec stream carried a MySQL dump at 45 MB/s, the client
    wrote 120). Read from the start; held open for writing here until the producer
    has exited (else the read would end before its writer opened it). A checked
    stream that ends before a byte came through raises NothingStreamedError.
    """
    start = time.monotonic()
    env.log_external(f"$ {proc.describe(producer)}" + ("" if into is None else f" > {into}")
                     + f" | zstd -{level} > {dest.name}"
                     + (" (+ zstd -t of what is written)" if checker is not None else ""))
    recipe = None if checker is None else _portable(checker)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with tempfile.TemporaryFile() as p_err, tempfile.TemporaryFile() as z_err, \
            tempfile.TemporaryFile() as c_err, tempfile.TemporaryFile() as channel, \
            os.fdopen(fd, "wb") as out, contextlib.ExitStack() as fifo:
        if recipe is not None:  # written before anything runs that a failure here must end
            channel.write(recipe)
            channel.flush()
        source = None if into is None else fifo.enter_context(_fifo_reader(into))
        try:
            prod = proc.popen(list(producer), stdin=stdin or subprocess.DEVNULL,
                              stdout=subprocess.PIPE if source is None else subprocess.DEVNULL,
                              stderr=p_err, cwd=cwd,
                              env=proc.child_env(env, secret_env), **proc.CHILD)
        except FileNotFoundError as exc:
            raise ExternalError(f"{what}: {producer[0]} is not installed") from exc
        if into is not None:
            _hold_until_exit(into, prod)
        source = source or prod.stdout
        assert source is not None
        checking = None
        if recipe is not None:
            try:
                checking = subprocess.Popen(
                    _proof_argv(channel.fileno()), stdin=source,
                    stdout=subprocess.PIPE, stderr=c_err, pass_fds=(channel.fileno(),),
                    env=proc.child_env(env), **proc.CHILD)
            except OSError as exc:
                _reap(prod)
                raise ProofProcessError(f"{what}: the check of the dump could not start: "
                                        f"{exc.strerror or exc}") from exc
            assert checking.stdout is not None
            source.close()  # the proof process owns the read end: its death SIGPIPEs it
        feed: Any = source  # zstd's stdin: the dump itself, unless it is checked
        if checking is not None:
            feed = checking.stdout
        elif checker is not None:
            feed = subprocess.PIPE  # fed by the thread that checks
        try:
            zstd = subprocess.Popen(
                zstd_argv(level=level), stdin=feed,
                stdout=out if checker is None else subprocess.PIPE,
                stderr=z_err, env=proc.child_env(env), **proc.CHILD)
        except OSError as exc:
            _reap(prod, *([checking] if checking else []))
            if isinstance(exc, FileNotFoundError):
                raise ExternalError("zstd is not installed", fix="apt-get install zstd") from exc
            raise
        # the proof process before zstd: killed first, it cannot end by a broken pipe
        # instead (a sign it would have gone on reading)
        children = [prod, *([checking] if checking else []), zstd]

        def kill_all() -> None:
            for child in children:
                child.kill()

        proof = None
        if checker is None:
            source.close()  # zstd owns the read end; a dead zstd must SIGPIPE the producer
        else:
            if checking is not None:
                assert checking.stdout is not None
                checking.stdout.close()  # zstd's now: a dead zstd ends the proof process
            try:
                proof = _Proof(env, checker, zstd, out, kill_all)
            except BaseException:
                _reap(*children)
                raise
            if checking is None:
                proof.tee(source)  # closes it at the end: a dead zstd SIGPIPEs the producer

        intr = interrupt.current()
        # progress: the dump's own bytes as they are checked (zstd's output grows by its
        # jobs, megabytes apart on data that compresses well)
        progress: Callable[[], int | None] = (
            (lambda: file_size(dest)) if proof is None else
            (lambda: proof.received) if checking is None else
            # where /proc/PID/io cannot be read, the file's growth
            (lambda: chars_read(checking.pid) or file_size(dest)))
        stalled = Stall(stall, progress, what, kill_all)
        try:
            with metered(env, what, zstd.pid, total, estimated=True):
                z_rc = intr.wait(zstd, timeout, what, on_stop=kill_all, tick=stalled)
            p_rc = intr.wait(prod, max(1.0, timeout - (time.monotonic() - start)), what,
                             on_stop=kill_all, tick=stalled)
            if checking is not None:  # it ends with the stream zstd has had
                intr.wait(checking, max(1.0, timeout - (time.monotonic() - start)), what,
                          on_stop=kill_all, tick=stalled)
        except subprocess.TimeoutExpired as exc:
            kill_all()
            _settle(proof, what, dest)
            raise ExternalError(f"{what}: timed out after {timeout:.0f}s") from exc
        except BaseException:
            kill_all()
            _settle(proof, what, dest)
            raise
        if proof is not None:
            proof.join(what, dest)
        p_err.seek(0)
        z_err.seek(0)
        p_msg = env.redact(p_err.read().decode(errors="replace"))
        z_msg = z_err.read().decode(errors="replace")
        duration = time.monotonic() - start
        env.log_external(f"  {what}: producer exit {p_rc}, zstd exit {z_rc}"
                         + ("" if checking is None else f", check exit {checking.returncode}")
                         + f", {duration:.2f}s")
        if z_rc != 0:
            if "No space left" in z_msg or _disk_full(dest):
                raise DiskFullError.at(what, dest.parent)
            raise ExternalError(f"{what}: zstd failed (exit {z_rc}): {proc.last_line(z_msg)}")
        if proof is not None and checking is not None:
            c_err.seek(0)
            proof.take_verdict(what, checking, env.redact(c_err.read().decode(errors="replace")),
                               channel)
        if into is not None and proof is not None and proof.raw == 0:
            raise NothingStreamedError(f"{what}: nothing came through {into.name} (exit "
                                       f"{p_rc}): {proc.last_line(p_msg)}")
        if p_rc not in ok_exit:
            raise ExternalError(f"{what} failed (exit {p_rc}): {proc.last_line(p_msg)}")
        _fsync_out(out, what, dest)
    scanned = None if proof is None else proof.scanned(what, dest)
    return Written(dest, dest.stat().st_size, duration, p_rc, p_msg, scanned)


@contextlib.contextmanager
def _fifo_reader(path: Path) -> Iterator[IO[bytes]]:
    """The read end of the FIFO ``path``, opened without waiting for a writer."""
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(read_fd, True)  # its reader (zstd, the proof process) reads blocking
    reader = os.fdopen(read_fd, "rb")
    try:
        yield reader
    finally:
        reader.close()


def _hold_until_exit(path: Path, producer: subprocess.Popen[bytes]) -> None:
    """A write end of the FIFO ``path``, held until ``producer`` has exited: a FIFO
    whose writer has not opened it yet reads as ended. Its own writer (a process the
    producer starts) has the stream's end with it by then."""
    hold = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # a reader exists: opens at once

    def wait() -> None:
        try:
            # WNOWAIT: the exit is seen, not reaped (the Popen's own wait does that)
            os.waitid(os.P_PID, producer.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped already: it has exited
        finally:
            os.close(hold)

    threading.Thread(target=wait, daemon=True).start()


def _proof_argv(channel: int) -> list[str]:
    # -P: the working directory is not on its path (a `backout/` there must not stand
    # in for the installed package)
    return [sys.executable, "-P", "-m", "backout.storage.proofchild", str(channel)]


# where backout's own stream checkers live: a module the proof process imports quickly
# (no CLI, no platform): MySQL, Redis, volume and mongodump backups (PostgreSQL's
# producer and MongoDB's driver path are Python itself: their checkers run in a thread)
PROOF_MODULES = ("backout.engines.formats",)


def _portable(checker: Checker) -> bytes | None:
    """``checker`` pickled for the proof process; None: it is checked in a thread here
    (not one of backout's own checks, which that process can import; or one pickle
    cannot carry)."""
    if not sys.executable or not type(checker).__module__.startswith(PROOF_MODULES):
        return None
    try:
        return pickle.dumps(checker)
    except Exception:  # any reason: the thread checks it instead
        return None


def _reap(*children: subprocess.Popen[bytes]) -> None:
    """End children of a pipeline that never ran: killed (again: whatever stopped it
    may not have), their pipes closed, waited for."""
    for child in children:
        with contextlib.suppress(OSError):
            child.kill()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        child.wait()


def _settle(proof: _Proof | None, what: str, dest: Path) -> None:
    """The threads of a pipeline being torn down end (its processes were killed);
    their own errors are beside the point by then. Waited for a few seconds only: a
    process the kill did not reach (the compose plugin under a killed docker CLI) may
    hold the producer's pipe open; the threads are daemons and end with it."""
    if proof is not None:
        with contextlib.suppress(BaseException):
            proof.join(what, dest, timeout=SETTLE_SECONDS)


SETTLE_SECONDS = 5.0


def _disk_full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < CHUNK


@dataclass(frozen=True)
class Scanned:
    sha256: str
    bytes: int  # compressed, on disk
    raw_bytes: int  # decompressed
    checks: dict[str, Any]


def scan(env: Environment, path: Path, checker: Checker, *, what: str,
         passthrough: bool = False) -> Scanned:
    """Hash ``path`` and decompress it through ``checker`` in one read.

    ``passthrough`` accepts a plain or gzip file too (an operator's own dump);
    backout's own artifacts must be zstd.
    """
    if not path.is_file():
        raise IntegrityError(f"{what}: artifact {path.name} is missing")
    size = path.stat().st_size
    if size == 0:
        raise IntegrityError(f"{what}: artifact {path.name} is empty (0 bytes)")
    digest = hashlib.sha256()
    zstd = spawn_decompress(env, None, force=passthrough, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert zstd.stdin is not None and zstd.stdout is not None and zstd.stderr is not None
    feed_error: list[BaseException] = []

    def feeder() -> None:
        try:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
                    zstd.stdin.write(chunk)  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # zstd gave up on corrupt input; its exit code says so
        except BaseException as exc:  # pragma: no cover - reported below
            feed_error.append(exc)
        finally:
            with contextlib.suppress(OSError):
                zstd.stdin.close()  # type: ignore[union-attr]

    thread = threading.Thread(target=feeder, daemon=True)
    thread.start()
    raw = 0
    check_error: BackoutError | None = None
    intr = interrupt.current()
    try:
        while chunk := zstd.stdout.read(CHUNK):
            intr.check(what)
            raw += len(chunk)
            if check_error is None:
                try:
                    checker.feed(chunk)
                except BackoutError as exc:
                    check_error = exc
    except BaseException:
        zstd.kill()
        zstd.wait()
        thread.join()
        raise
    thread.join()
    err = zstd.stderr.read().decode(errors="replace")
    rc = zstd.wait()
    if feed_error:
        raise IntegrityError(f"{what}: cannot read {path.name}: {feed_error[0]}")
    if rc != 0:
        raise IntegrityError(f"{what}: {path.name} is not a valid zstd stream "
                             f"(truncated or corrupt): {proc.last_line(err)}")
    if check_error is not None:
        raise check_error
    if raw == 0:
        raise IntegrityError(f"{what}: {path.name} decompresses to nothing")
    checks = checker.finish()
    return Scanned(digest.hexdigest(), size, raw, checks)


def zstd_argv(*, level: int | None = None, source: Path | None = None,
              force: bool = False, test: Path | None = None) -> list[str]:
    """The only place a zstd command line is built: compress at ``level`` (with the
    frame checksum, zstd's default, asked for explicitly: ``test`` relies on it), test
    the file ``test``, or decompress (``level`` None) ``source`` or stdin; ``force``
    passes plain input through (an operator's own uncompressed dump)."""
    if test is not None:
        return ["zstd", "-t", "-q", str(test)]
    if level is not None:
        return ["zstd", "-q", "-c", f"-{level}", "-T0", "--check"]
    return ["zstd", "-d", "-q", "-c", *(["-f"] if force else []),
            *([str(source)] if source is not None else [])]


def spawn_decompress(env: Environment, source: Path | None, *, force: bool = True,
                     **popen: Any) -> subprocess.Popen[bytes]:
    """The one place the decompressing zstd is spawned (``source`` None: from stdin)."""
    try:
        return subprocess.Popen(zstd_argv(source=source, force=force),
                                env=proc.child_env(env), **proc.CHILD, **popen)
    except FileNotFoundError as exc:
        raise ExternalError("zstd is not installed", fix="apt-get install zstd") from exc


@contextlib.contextmanager
def decompressed(env: Environment, artifact: Path, *, force: bool = True,
                 **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``zstd -dc artifact``, its stdout a pipe to read unless ``popen`` says where;
    killed if the reader stops early."""
    popen.setdefault("stdout", subprocess.PIPE)
    with spawn_decompress(env, artifact, force=force, **popen) as zstd:
        try:
            yield zstd
        except BaseException:
            zstd.kill()
            raise


def head_of(env: Environment, artifact: Path, size: int = 4096) -> bytes:
    """The first ``size`` decompressed bytes of ``artifact`` (plain files pass through)."""
    with decompressed(env, artifact, stderr=subprocess.DEVNULL) as zstd:
        assert zstd.stdout is not None
        data = zstd.stdout.read(size)
        zstd.kill()
    return data


def decompressed_size(env: Environment, artifact: Path) -> int:
    """The bytes ``zstd -d`` makes of ``artifact`` (read through once)."""
    total = 0
    with decompressed(env, artifact) as zstd:
        assert zstd.stdout is not None
        while chunk := zstd.stdout.read(1 << 20):
            total += len(chunk)
    if zstd.returncode != 0:
        raise IntegrityError(f"{artifact.name} does not decompress")
    return total


def reader_stopped(z_rc: int, z_msg: str) -> bool:
    """Did a decompressing zstd end because its reader stopped reading (SIGPIPE, or
    told of a broken pipe)? That says nothing of the artifact: the reader's own exit
    says why."""
    return z_rc == -signal.SIGPIPE or "Broken pipe" in z_msg


def decompress_into(env: Environment, artifact: Path, consumer: list[str], *, what: str,
                    secret_env: dict[str, str] | None = None, cwd: str | None = None,
                    timeout: float = 6 * 3600, stall: float | None = None) -> None:
    """``zstd -dc artifact | consumer``; both stages must exit 0. Progress: the bytes of
    the artifact zstd has read, of its size (exact, so the ETA is too).

    Cut short by an interrupt of the step, or when zstd could write nothing into the
    consumer for ``stall`` seconds (the consumer, or the engine carrying its stream,
    stopped reading)."""
    env.log_external(f"$ zstd -dc {artifact.name} | {proc.describe(consumer)}")
    with tempfile.TemporaryFile() as c_err, tempfile.TemporaryFile() as z_err:
        zstd = spawn_decompress(env, artifact, stdout=subprocess.PIPE, stderr=z_err)
        cons = proc.popen(consumer, stdin=zstd.stdout, stdout=subprocess.DEVNULL,
                           stderr=c_err, env=proc.child_env(env, secret_env), cwd=cwd,
                           **proc.CHILD)
        assert zstd.stdout is not None
        zstd.stdout.close()

        def kill_both() -> None:
            cons.kill()
            zstd.kill()

        intr = interrupt.current()
        stalled = Stall(stall, lambda: bytes_written_by(zstd.pid), what, kill_both)
        try:
            with metered(env, what, zstd.pid, artifact.stat().st_size, estimated=False):
                c_rc = intr.wait(cons, timeout, what, on_stop=kill_both, tick=stalled)
            z_rc = zstd.wait(timeout=60)
        except subprocess.TimeoutExpired as exc:
            kill_both()
            raise ExternalError(f"{what}: timed out") from exc
        except BaseException:
            kill_both()
            zstd.wait()
            raise
        c_err.seek(0)
        z_err.seek(0)
        z_msg = z_err.read().decode(errors="replace")
        c_msg = proc.last_line(env.redact(c_err.read().decode(errors="replace")))
        if z_rc != 0 and not reader_stopped(z_rc, z_msg):
            raise IntegrityError(f"{what}: {artifact.name} does not decompress: "
                                 f"{proc.last_line(z_msg)}")
        if c_rc != 0:
            raise ExternalError(f"{what} failed (exit {c_rc}): {c_msg}")
        if z_rc != 0:
            raise ExternalError(f"{what}: {proc.describe(consumer[:3])} stopped reading before "
                                f"the end of {artifact.name} (exit 0): {c_msg}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
