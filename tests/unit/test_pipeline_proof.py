"""A backup proven while it is written (issue 16): the real producer | zstd > file
pipeline with a checker in the stream. The proof must be what a second read of the
file (`scan`, kept for `backups verify` and restores) finds: the same sha256, the
same raw byte count, the same checks; a checker's objection, a failing producer
and an empty dump fail the backup, and nothing hangs."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backout.engines.formats import MySQLDumpChecker
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.operations import interrupt
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


class _Counting:
    """Counts what it is fed (the fake engines' checker shape)."""

    def __init__(self) -> None:
        self.fed = 0

    def feed(self, chunk: bytes) -> None:
        self.fed += len(chunk)

    def finish(self) -> dict[str, Any]:
        return {"fed": self.fed}


def test_the_proof_made_while_writing_is_what_a_second_read_finds(tmp_path: Path) -> None:
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
        tmp_path: Path) -> None:
    source = tmp_path / "dump.sql"
    source.write_bytes(_dump(20_000)[:-len(TRAILER)])  # the dump tool stopped early
    with pytest.raises(IntegrityError, match="no '-- Dump completed' trailer"):
        stream_to_file(Environment(), _producer(source), tmp_path / "x.zst", what="mysql dump",
                       checker=MySQLDumpChecker(["shop"], "mysql dump"))


def test_a_failing_producer_is_the_error_not_what_its_output_lacks(tmp_path: Path) -> None:
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


def test_a_file_that_does_not_decompress_as_written_fails_the_backup(tmp_path: Path) -> None:
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
        tmp_path: Path) -> None:
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
        tmp_path: Path) -> None:
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


def test_a_test_that_is_killed_is_no_verdict_not_corruption(tmp_path: Path) -> None:
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
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert len(started) == 2  # the producer and zstd, both ended
    assert all(child.wait(10) is not None for child in started)
    assert all(child.returncode != 0 for child in started)


def test_zstd_dying_mid_stream_fails_the_backup_without_hanging(tmp_path: Path) -> None:
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
