"""A backup proven while it is written (issue 16): the real producer | zstd > file
pipeline with a checker in the stream. The proof must be what a second read of the
file (`scan`, kept for `backups verify` and restores) finds: the same sha256, the
same raw byte count, the same checks; a checker's objection, a failing producer
and an empty dump fail the backup, and nothing hangs."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backout.engines.formats import MySQLDumpChecker
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.operations import interrupt
from backout.storage import pipeline
from backout.storage.pipeline import (
    DiskFullError,
    IntegrityError,
    StalledError,
    decompress_into,
    scan,
    stream_from_python,
    stream_to_file,
)

DUMP_HEAD = b"-- MariaDB dump\nUSE `shop`;\nCREATE TABLE `t` (\n  `id` int(11)\n);\n"
TRAILER = b"-- Dump completed on 2026-12-03 10:00:00\n"


def _dump(rows: int) -> bytes:
    body = b",\n".join(b"(%d,'row (%d); it\\'s x')" % (i, i) for i in range(rows))
    return DUMP_HEAD + b"INSERT INTO `t` VALUES\n" + body + b";\n" + TRAILER


def _producer(path: Path, *, exit_code: int = 0) -> list[str]:
    return [sys.executable, "-c", "import sys, shutil; shutil.copyfileobj("
            f"open({str(path)!r}, 'rb'), sys.stdout.buffer); sys.exit({exit_code})"]


@pytest.fixture(params=["process", "thread"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """backout's own checkers run in the proof process (``proofchild``); any other
    (and one pickle cannot carry) in a thread: both give the same proof."""
    if request.param == "thread":
        monkeypatch.setattr(pipeline, "_portable", lambda checker: None)
    return str(request.param)


class _Counting:
    """Counts what it is fed (the fake engines' checker shape)."""

    def __init__(self) -> None:
        self.fed = 0

    def feed(self, chunk: bytes) -> None:
        self.fed += len(chunk)

    def finish(self) -> dict[str, Any]:
        return {"fed": self.fed}


def test_the_proof_made_while_writing_is_what_a_second_read_finds(tmp_path: Path, mode: str) -> None:
    data = _dump(200_000)  # ~7 MB: many times the pipes' buffers
    source = tmp_path / "dump.sql"
    source.write_bytes(data)
    dest = tmp_path / "mysql.sql.zst"
    written = stream_to_file(Environment(), _producer(source), dest, what="mysql dump",
                             checker=MySQLDumpChecker(["shop"], "mysql dump"))
    proof = written.scanned
    assert proof is not None
    again = scan(Environment(), dest, MySQLDumpChecker(["shop"], "mysql dump"), what="x")
    assert proof == again
    assert proof.sha256 == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert proof.bytes == dest.stat().st_size == written.bytes
    assert proof.raw_bytes == len(data)
    assert proof.checks["databases"]["shop"]["tables"] == {"t": 200_000}
    assert subprocess.run(["zstd", "-dc", str(dest)], capture_output=True,
                          check=True).stdout == data


def test_python_as_the_producer_is_proven_the_same_way(tmp_path: Path) -> None:
    data = _dump(50_000)
    dest = tmp_path / "x.zst"

    def write(pipe: Any) -> None:
        for i in range(0, len(data), 7777):  # uneven pieces
            pipe.write(data[i:i + 7777])

    proof = stream_from_python(Environment(), write, dest, what="dump",
                               checker=MySQLDumpChecker(["shop"], "dump")).scanned
    assert proof is not None
    assert proof == scan(Environment(), dest, MySQLDumpChecker(["shop"], "dump"), what="x")
    assert proof.checks["databases"]["shop"]["tables"] == {"t": 50_000}


def test_a_checker_objection_fails_the_backup_once_the_pipeline_ended(
        tmp_path: Path, mode: str) -> None:
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(20_000)[:-len(TRAILER)])  # the dump tool stopped early
    with pytest.raises(IntegrityError, match="no '-- Dump completed' trailer"):
        stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))


def test_a_failing_producer_is_the_error_not_what_its_output_lacks(tmp_path: Path, mode: str) -> None:
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(100)[:50])
    with pytest.raises(ExternalError, match=r"mysql dump failed \(exit 3\)"):
        stream_to_file(Environment(), _producer(source, exit_code=3), tmp_path / "x.zst",
                       what="mysql dump", checker=MySQLDumpChecker(["shop"], "mysql dump"))


def test_an_empty_dump_fails(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="empty"):
        stream_to_file(Environment(), ["true"], tmp_path / "x.zst", what="dump",
                       checker=_Counting())
    with pytest.raises(IntegrityError, match="empty"):
        stream_from_python(Environment(), lambda pipe: None, tmp_path / "y.zst", what="dump",
                           checker=_Counting())


def test_an_interrupt_stops_the_pipeline_and_its_threads(tmp_path: Path) -> None:
    """Ctrl-C during a dump that never ends: both processes go, no thread is left
    reading or writing, and the step is reported interrupted."""
    intr = interrupt.reset()
    intr.abortable = True  # as the executor marks a dump step
    before = set(threading.enumerate())  # threads of other tests may end meanwhile
    timer = threading.Timer(0.5, intr.request, args=("SIGINT",))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(InterruptedOperation, match="stopped by SIGINT"):
            stream_to_file(Environment(), ["sh", "-c", "yes backout"], tmp_path / "x.zst",
                           what="dump", checker=_Counting())
    finally:
        timer.join()
        interrupt.reset()
    assert time.monotonic() - started < 10
    assert set(threading.enumerate()) <= before  # none of its own left


def _fake_zstd(tmp_path: Path, script: str) -> Environment:
    """An Environment whose children find ``zstd`` as ``script`` first (sh; "$REAL"
    is the real zstd)."""
    real = shutil.which("zstd")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "zstd"
    fake.write_text(f"#!/bin/sh\nREAL={real}\n{script}\n")
    fake.chmod(0o755)
    return Environment(env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})


def test_a_file_that_does_not_decompress_as_written_fails_the_backup(tmp_path: Path, mode: str) -> None:
    """What is written is decompressed as it is written, against the frame checksum
    of what the checker saw: here the test refuses (as it would for a corrupt stream)."""
    env = _fake_zstd(tmp_path, 'if [ "$1" = -t ]; then echo "frame checksum mismatch" >&2; '
                               'exit 1; fi\nexec "$REAL" "$@"')
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(100))
    with pytest.raises(IntegrityError, match="does not decompress to what was dumped: "
                                             "frame checksum mismatch"):
        stream_to_file(env, _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))
    with pytest.raises(IntegrityError, match="does not decompress"):
        stream_from_python(env, lambda pipe: pipe.write(_dump(10)), tmp_path / "y.zst",
                           what="dump", checker=MySQLDumpChecker(["shop"], "dump"))


def test_the_test_decompresses_exactly_the_bytes_written_while_they_are_written(
        tmp_path: Path, mode: str) -> None:
    """zstd -t reads what the sink writes to the file, not the file: what it was given
    is the file, byte for byte (a test reading the file back after the dump was a
    second pass of 1.2 s per GB)."""
    seen = tmp_path / "seen-by-test"
    env = _fake_zstd(tmp_path, f'if [ "$1" = -t ]; then cat > {seen}; '
                               f'exec "$REAL" -t -q {seen}; fi\nexec "$REAL" "$@"')
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(50_000))
    written = stream_to_file(env, _producer(source), tmp_path / "x.zst", what="mysql dump",
                             checker=MySQLDumpChecker(["shop"], "mysql dump"))
    assert seen.read_bytes() == (tmp_path / "x.zst").read_bytes()
    assert written.scanned is not None and written.scanned.raw_bytes == len(_dump(50_000))


def test_a_test_that_gives_up_early_fails_the_backup_and_the_file_is_still_written(
        tmp_path: Path, mode: str) -> None:
    """A test that stops reading at the first bad frame (its stdin closes): the sink
    keeps writing the file to its end, and the backup fails as not decompressing."""
    env = _fake_zstd(tmp_path, 'if [ "$1" = -t ]; then exec 0<&-; echo "bad frame" >&2; '
                               'exit 1; fi\nexec "$REAL" "$@"')
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(300_000))  # megabytes: the sink's writes to the test break
    with pytest.raises(IntegrityError, match="does not decompress to what was dumped: bad frame"):
        stream_to_file(env, _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))
    out = subprocess.run(["zstd", "-d", "-c", str(tmp_path / "x.zst")], capture_output=True,
                         check=True)
    assert out.stdout == _dump(300_000)


def test_a_test_that_is_killed_is_no_verdict_not_corruption(tmp_path: Path, mode: str) -> None:
    """zstd -t killed (the OOM killer, a timeout): the backup is not proven, and the
    message does not call the data corrupt."""
    env = _fake_zstd(tmp_path, 'if [ "$1" = -t ]; then kill -9 $$; fi\nexec "$REAL" "$@"')
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(100))
    with pytest.raises(IntegrityError, match=r"could not be tested as written \(zstd -t "
                                             r"killed by signal 9, no message\)") as caught:
        stream_to_file(env, _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))
    assert "does not decompress" not in caught.value.message


def test_a_test_that_cannot_start_leaves_no_process_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(argv: list[str], *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        if argv[:2] == ["zstd", "-t"]:
            raise OSError(24, "Too many open files")
        child = real(argv, *args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(subprocess, "Popen", popen)
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(300_000))
    with pytest.raises(ExternalError, match="zstd -t could not start: Too many open files"):
        stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))
    # the producer, the proof process (not in a thread) and zstd, all ended
    assert len(started) == (3 if mode == "process" else 2)
    assert all(child.wait(10) is not None for child in started)
    assert all(child.returncode != 0 for child in started)


def test_zstd_dying_mid_stream_fails_the_backup_without_hanging(tmp_path: Path, mode: str) -> None:
    env = _fake_zstd(tmp_path, 'if [ "$1" = -q ]; then head -c 100000 >/dev/null; '
                               'echo "zstd: out of memory" >&2; exit 1; fi\nexec "$REAL" "$@"')
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(200_000))  # far more than zstd reads before it dies
    before = set(threading.enumerate())  # threads of other tests may end meanwhile
    with pytest.raises(ExternalError, match=r"zstd failed \(exit 1\): zstd: out of memory"):
        stream_to_file(env, _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))
    with pytest.raises(ExternalError, match=r"zstd failed \(exit 1\)"):
        stream_from_python(env, lambda pipe: pipe.write(_dump(200_000)), tmp_path / "y.zst",
                           what="dump", checker=MySQLDumpChecker(["shop"], "dump"))
    assert set(threading.enumerate()) <= before  # none of its own left


def test_a_checker_that_breaks_stops_the_pipeline_and_says_so(tmp_path: Path) -> None:
    class Broken(_Counting):
        def feed(self, chunk: bytes) -> None:
            raise RuntimeError("checker bug")

    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(200_000))
    with pytest.raises(RuntimeError, match="checker bug"):
        stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="dump",
                       checker=Broken())


def test_a_dump_that_stops_moving_is_stalled_by_its_own_bytes(tmp_path: Path) -> None:
    """The stall watch follows the dump's bytes through Python: a producer that wrote
    a little, then hangs (a locked table, a frozen engine) is stopped."""
    with pytest.raises(StalledError, match="no data moved for 1s"):
        stream_to_file(Environment(), ["sh", "-c", "echo started; exec sleep 600"],
                       tmp_path / "x.zst", what="dump", stall=1, checker=_Counting())


def test_a_slow_dump_that_keeps_moving_is_not_stalled(tmp_path: Path) -> None:
    """Python takes the stream a CHUNK at a time; a producer that writes less than
    that within the stall limit, but keeps writing, is alive: what it wrote counts."""
    slow = [sys.executable, "-c", "import sys, time\nfor i in range(12):\n"
            "    sys.stdout.buffer.write(b'x' * 100); sys.stdout.flush(); time.sleep(0.25)"]
    checker = _Counting()
    written = stream_to_file(Environment(), slow, tmp_path / "x.zst", what="dump", stall=1,
                             checker=checker)
    assert checker.fed == 1200 and written.exit_code == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_reported_as_such_not_as_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    # /dev/full refuses every write with ENOSPC, as a full backup disk does. Bytes
    # the disk refused must not wait in a file object's buffer for its close to
    # retry them: that OSError would replace the DiskFullError (exit 6) by a bug
    # (exit 70), as CI saw on a small disk. The buffer here is made large enough to
    # hold the whole dump, so any write through it would show.
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        if os.readlink(f"/proc/self/fd/{fd}") == "/dev/full":
            kwargs["buffering"] = 1 << 24
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    producer = [sys.executable, "-c", "import os, sys; sys.stdout.buffer.write(os.urandom(1 << 20))"]
    with pytest.raises(DiskFullError, match="no space left"):
        stream_to_file(Environment(), producer, Path("/dev/full"), what="t dump",
                       checker=_Counting())


def _artifact(tmp_path: Path, data: bytes) -> Path:
    raw = tmp_path / "data.bin"
    raw.write_bytes(data)
    subprocess.run(["zstd", "-q", "-f", str(raw), "-o", str(tmp_path / "data.bin.zst")], check=True)
    return tmp_path / "data.bin.zst"


def test_a_consumer_that_stops_reading_is_blamed_not_the_artifact(tmp_path: Path) -> None:
    # zstd then dies of SIGPIPE with nothing on stderr: CI once read that as "does not
    # decompress: no error output" and called a sound backup corrupt
    artifact = _artifact(tmp_path, os.urandom(4 << 20))
    consumer = [sys.executable, "-c", "import sys; print('helper refused', file=sys.stderr); "
                "sys.exit(3)"]
    with pytest.raises(ExternalError, match=r"failed \(exit 3\): helper refused") as caught:
        decompress_into(Environment(), artifact, consumer, what="t restore")
    assert not isinstance(caught.value, IntegrityError)
    quits = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(10)"]
    with pytest.raises(ExternalError, match="stopped reading before the end") as caught:
        decompress_into(Environment(), artifact, quits, what="t restore")
    assert not isinstance(caught.value, IntegrityError)


def test_an_artifact_that_does_not_decompress_is_still_an_integrity_error(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path, os.urandom(1 << 20))
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    artifact.write_bytes(bytes(blob))
    consumer = [sys.executable, "-c", "import sys, shutil; shutil.copyfileobj(sys.stdin.buffer, "
                "open('/dev/null', 'wb'))"]
    with pytest.raises(IntegrityError, match="does not decompress"):
        decompress_into(Environment(), artifact, consumer, what="t restore")


# ------------------------------------------------------------ the proof process itself

def _recording(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(argv: list[str], *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real(argv, *args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(subprocess, "Popen", popen)
    return started


def _is_proof(child: subprocess.Popen[bytes]) -> bool:
    return "backout.storage.proofchild" in list(child.args)  # type: ignore[arg-type]


def test_backouts_own_checks_run_in_a_process_between_the_dump_and_zstd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker out of backout's process: its GIL is the file's and zstd -t's."""
    started = _recording(monkeypatch)
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(1000))
    stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="mysql dump",
                   checker=MySQLDumpChecker(["shop"], "mysql dump"))
    assert [child for child in started if _is_proof(child)] != []
    started.clear()
    stream_to_file(Environment(), _producer(source), tmp_path / "y.zst", what="mysql dump",
                   checker=_Counting())  # the tests' own: a thread (the process cannot import it)
    assert [child for child in started if _is_proof(child)] == []


def test_a_proof_process_that_dies_fails_the_backup_and_leaves_nothing_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _recording(monkeypatch)

    def kill_it() -> None:
        while not any(_is_proof(child) for child in started):
            time.sleep(0.01)
        time.sleep(0.2)
        next(child for child in started if _is_proof(child)).kill()

    killer = threading.Thread(target=kill_it, daemon=True)
    killer.start()
    with pytest.raises(ExternalError, match=r"the check of the dump as it was written failed "
                                            r"\(killed by signal 9\)") as caught:
        stream_to_file(Environment(), ["sh", "-c", "yes backout"], tmp_path / "x.zst",
                       what="dump", checker=MySQLDumpChecker(["shop"], "dump"))
    killer.join(10)
    assert not isinstance(caught.value, IntegrityError)  # no verdict: not a corrupt dump
    assert len(started) == 4 and all(child.wait(10) is not None for child in started)


def test_an_interrupt_ends_every_process_of_the_proof(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof process is killed too, not left to end with the stream: a producer's
    pipe may outlive it (here `yes`, as the Compose plugin under a killed docker CLI)."""
    started = _recording(monkeypatch)
    intr = interrupt.reset()
    intr.abortable = True
    before = set(threading.enumerate())
    timer = threading.Timer(0.5, intr.request, args=("SIGINT",))
    timer.start()
    try:
        with pytest.raises(InterruptedOperation, match="stopped by SIGINT"):
            stream_to_file(Environment(), ["sh", "-c", "yes backout & wait"],
                           tmp_path / "x.zst", what="dump",
                           checker=MySQLDumpChecker(["shop"], "dump"))
    finally:
        timer.join()
        interrupt.reset()
    assert [child.wait(10) for child in started if _is_proof(child)] == [-9]
    # every one ends (killed, or its pipe broken by one killed a moment before):
    # SIGKILL is not instant, so each is given a moment
    assert all(child.wait(10) is not None for child in started)
    assert started[0].returncode == -9  # the producer
    assert set(threading.enumerate()) <= before


def test_a_stalled_dump_is_seen_through_the_proof_process(tmp_path: Path) -> None:
    with pytest.raises(StalledError, match="no data moved for 1s"):
        stream_to_file(Environment(), ["sh", "-c", "echo started; exec sleep 600"],
                       tmp_path / "x.zst", what="dump", stall=1,
                       checker=MySQLDumpChecker(["shop"], "dump"))


def test_a_slow_dump_that_keeps_moving_is_not_stalled_in_the_proof_process(
        tmp_path: Path) -> None:
    """The process reads a CHUNK before it checks; each piece it reads counts."""
    data = _dump(20)
    slow = [sys.executable, "-c", f"import sys, time\ndata = {data!r}\n"
            "for i in range(0, len(data), len(data) // 8 + 1):\n"
            "    sys.stdout.buffer.write(data[i:i + len(data) // 8 + 1]); sys.stdout.flush()\n"
            "    time.sleep(0.3)"]
    written = stream_to_file(Environment(), slow, tmp_path / "x.zst", what="dump", stall=1,
                             checker=MySQLDumpChecker(["shop"], "dump"))
    assert written.scanned is not None and written.scanned.raw_bytes == len(data)


def test_a_checker_that_breaks_is_raised_as_itself_from_either_side(
        tmp_path: Path, mode: str) -> None:
    """A bug of the checker (not an objection to the dump) is raised as the bug it is,
    whether it broke in the thread or in the process."""
    checker = MySQLDumpChecker(["shop"], "dump")
    checker.expected = None  # type: ignore[assignment]  # its state broken: finish() fails
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(1000))
    with pytest.raises(TypeError):
        stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="dump",
                       checker=checker)


def test_a_backout_directory_where_it_runs_does_not_stand_in_for_backout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof process imports the installed backout, not a `backout/` package in
    the directory the operator runs it from."""
    impostor = tmp_path / "cwd" / "backout"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise SystemExit('the impostor was imported')\n")
    monkeypatch.chdir(impostor.parent)
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(100))
    written = stream_to_file(Environment(), _producer(source), tmp_path / "x.zst",
                             what="mysql dump", checker=MySQLDumpChecker(["shop"], "mysql dump"))
    assert written.scanned is not None and written.scanned.raw_bytes == len(_dump(100))


def test_a_failing_producer_is_the_error_even_when_the_checker_breaks_at_the_end(
        tmp_path: Path, mode: str) -> None:
    """The checker's own failure at its end is raised after the producer's exit code
    is looked at, from the process as from the thread."""
    checker = MySQLDumpChecker(["shop"], "mysql dump")
    checker.expected = None  # type: ignore[assignment]  # finish() fails
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(1000))
    with pytest.raises(ExternalError, match=r"mysql dump failed \(exit 3\)"):
        stream_to_file(Environment(), _producer(source, exit_code=3), tmp_path / "x.zst",
                       what="mysql dump", checker=checker)


@pytest.mark.parametrize("written", [b"", b"not a pickle", pickle.dumps(["a", "list"]),
                                     pickle.dumps({"raw": 1})])
def test_a_verdict_that_cannot_be_read_is_no_proof(tmp_path: Path, written: bytes) -> None:
    zstd = subprocess.Popen(["true"], stdout=subprocess.PIPE)
    zstd.wait()
    proof = pipeline._Proof(Environment(), MySQLDumpChecker(["shop"], "d"), zstd,
                            (tmp_path / "out").open("wb"), lambda: None)
    done = subprocess.Popen(["true"])
    done.wait()
    with tempfile.TemporaryFile() as channel:
        channel.write(written)
        with pytest.raises(pipeline.ProofProcessError, match="left no verdict that can be read"):
            proof.take_verdict("d", done, "", channel)
    proof.join("d", tmp_path / "out")


def test_without_proc_io_the_stall_watch_follows_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc/PID/io cannot be read (no task I/O accounting), a hung dump is still
    stopped: by the file that does not grow."""
    monkeypatch.setattr(pipeline, "chars_read", lambda pid: None)
    with pytest.raises(StalledError, match="no data moved for 1s"):
        stream_to_file(Environment(), ["sh", "-c", "echo started; exec sleep 20"],
                       tmp_path / "x.zst", what="dump", stall=1,
                       checker=MySQLDumpChecker(["shop"], "dump"))


def test_a_proof_process_failure_is_its_own_error_not_the_databases(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proof process that cannot run (here its module is missing) fails the backup
    with an error of its own, which a safety backup does not answer by forcing the
    dump past the database's errors (it would fail the same way)."""
    monkeypatch.setattr(pipeline, "_proof_argv",
                        lambda channel: [sys.executable, "-c", "import sys; sys.exit("
                                         "'No module named backout.storage.proofchild')"])
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(100))
    with pytest.raises(pipeline.ProofProcessError,
                       match=r"failed \(exit 1\): No module named backout.storage.proofchild"):
        stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))


def test_a_checker_that_breaks_in_the_process_stops_the_dump_and_says_so(
        tmp_path: Path) -> None:
    """As in the thread: a failure of the checker itself (not an objection) ends the
    pipeline at once, not after the whole dump (this producer never ends by itself)."""
    checker = MySQLDumpChecker(["shop"], "dump")
    checker.tables = None  # type: ignore[assignment]  # its state broken: feed() fails
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(200_000))  # more than a CHUNK: fed before the end
    endless = [sys.executable, "-c", "import shutil, sys\n"
               f"shutil.copyfileobj(open({str(source)!r}, 'rb'), sys.stdout.buffer)\n"
               "while True: sys.stdout.buffer.write(b'-- more\\n' * 8192)"]
    with pytest.raises(AttributeError, match="setdefault"):
        stream_to_file(Environment(), endless, tmp_path / "x.zst", what="dump",
                       checker=checker, timeout=60)  # a timeout fails it otherwise


def test_a_proof_process_that_cannot_start_leaves_no_producer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _recording(monkeypatch)
    monkeypatch.setattr(pipeline, "_proof_argv", lambda channel: [str(tmp_path / "no-python")])
    with pytest.raises(pipeline.ProofProcessError, match="the check of the dump could not start"):
        stream_to_file(Environment(), ["sh", "-c", "exec yes backout"], tmp_path / "x.zst",
                       what="dump", checker=MySQLDumpChecker(["shop"], "dump"))
    assert [child.wait(10) for child in started] == [-9]  # the producer, killed


def test_every_checker_of_the_formats_module_goes_to_the_proof_process() -> None:
    """Each is pickled for the process (one that could not be would quietly stay in a
    thread: slower, and the process mode of these tests a thread)."""
    from backout.engines import formats
    checkers = [formats.MySQLDumpChecker(["shop"], "d"), formats.RDBChecker("d"),
                formats.TarBsonChecker(["shop"], "d"), formats.VolumeTarChecker("d")]
    assert [type(c).__name__ for c in checkers if pipeline._portable(c) is None] == []


def test_an_objection_pickle_cannot_carry_is_still_an_objection() -> None:
    from backout.errors import BackoutError
    from backout.storage import proofchild

    class Odd(BackoutError):
        def __init__(self, a: str, b: str) -> None:  # args it cannot take again
            super().__init__(f"{a} {b}")

    carried = proofchild._portable(Odd("the dump", "is odd"))
    assert isinstance(carried, IntegrityError) and carried.message == "the dump is odd"
    bug = proofchild._portable(type("Weird", (Exception,), {"__reduce__": lambda self: 1/0})())
    assert isinstance(bug, RuntimeError) and "Weird" in str(bug)
