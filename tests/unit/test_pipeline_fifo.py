"""A dump read from a FIFO its producer writes into (``stream_to_file(into=...)``), as a
client beside the database's container does (its bytes pass no Docker Engine): the
same file and proof as from the producer's stdout; a producer that ends before a
byte came through is told apart (NothingStreamedError: the caller's other way), one
that fails after is the dump's failure; nothing hangs, nothing is left running."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from backout.engines.formats import MySQLDumpChecker
from backout.environment import Environment
from backout.errors import ExternalError, InterruptedOperation
from backout.operations import interrupt
from backout.storage import pipeline
from backout.storage.pipeline import (
    NothingStreamedError,
    StalledError,
    scan,
    stream_to_file,
)
from tests.unit.test_pipeline_proof import _recording

DUMP = (b"-- MariaDB dump\nUSE `shop`;\nCREATE TABLE `t` (\n  `id` int(11)\n);\n"
        b"INSERT INTO `t` VALUES\n"
        + b",\n".join(b"(%d,'row (%d)')" % (i, i) for i in range(100_000))
        + b";\n-- Dump completed on 2026-12-07 10:00:00\n")


@pytest.fixture(params=["process", "thread"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "thread":
        monkeypatch.setattr(pipeline, "_portable", lambda checker: None)
    return str(request.param)


def _fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "dump"
    os.mkfifo(fifo, 0o600)
    return fifo


def _writer(script: str, fifo: Path, source: Path | None = None) -> list[str]:
    """``sh -c script`` with $0 the FIFO and $1 the source file."""
    return ["sh", "-c", script, str(fifo), str(source or "/dev/null")]


def _checker() -> MySQLDumpChecker:
    return MySQLDumpChecker(["shop"], "mysql dump")


def test_a_dump_through_a_fifo_is_the_same_file_and_proof(tmp_path: Path, mode: str) -> None:
    source = tmp_path / "dump.sql"
    source.write_bytes(DUMP)
    fifo = _fifo(tmp_path)
    dest = tmp_path / "mysql.sql.zst"
    # the writer opens the FIFO a moment after the producer started (a container's
    # start): the read must not end before it
    written = stream_to_file(Environment(), _writer('sleep 0.3; cat "$1" > "$0"', fifo, source),
                             dest, what="mysql dump", checker=_checker(), into=fifo, timeout=30)
    assert written.scanned is not None
    assert written.scanned == scan(Environment(), dest, _checker(), what="x")
    assert written.scanned.raw_bytes == len(DUMP)
    assert written.scanned.checks["databases"]["shop"]["tables"] == {"t": 100_000}
    assert subprocess.run(["zstd", "-dc", str(dest)], capture_output=True,
                          check=True).stdout == DUMP


def test_the_stream_ends_when_the_producer_has_exited_not_before(tmp_path: Path) -> None:
    """The writer is the producer's child and writes after it opened the FIFO twice
    over (a shell's redirections): the end is the producer's exit."""
    source = tmp_path / "dump.sql"
    source.write_bytes(DUMP)
    fifo = _fifo(tmp_path)
    half = len(DUMP) // 2
    script = f'head -c {half} "$1" > "$0"; sleep 0.2; tail -c +{half + 1} "$1" > "$0"'
    written = stream_to_file(Environment(), _writer(script, fifo, source), tmp_path / "x.zst",
                             what="mysql dump", checker=_checker(), into=fifo, timeout=30)
    assert written.scanned is not None and written.scanned.raw_bytes == len(DUMP)


@pytest.mark.parametrize("script", [
    'echo "Access denied for user" >&2; exit 2',  # never opened the FIFO
    'exit 0',  # "succeeded" without a byte (a FIFO that is not the one read here)
    ': > "$0"; echo "Lost connection" >&2; exit 2',  # opened it, wrote nothing
])
def test_a_producer_that_gives_nothing_is_told_apart(tmp_path: Path, mode: str,
                                                     script: str) -> None:
    fifo = _fifo(tmp_path)
    with pytest.raises(NothingStreamedError, match="nothing came through dump") as caught:
        stream_to_file(Environment(), _writer(script, fifo), tmp_path / "x.zst",
                       what="mysql dump", checker=_checker(), into=fifo, timeout=30)
    if "denied" in script:
        assert "Access denied" in caught.value.message  # the producer's own words


def test_a_producer_that_fails_after_its_first_bytes_is_the_dumps_failure(
        tmp_path: Path, mode: str) -> None:
    source = tmp_path / "dump.sql"
    source.write_bytes(DUMP[:5000])
    fifo = _fifo(tmp_path)
    with pytest.raises(ExternalError, match=r"mysql dump failed \(exit 3\)") as caught:
        stream_to_file(Environment(), _writer('cat "$1" > "$0"; exit 3', fifo, source),
                       tmp_path / "x.zst", what="mysql dump", checker=_checker(), into=fifo,
                       timeout=30)
    assert not isinstance(caught.value, NothingStreamedError)  # no other way is taken


def test_a_writer_that_stops_moving_is_stalled(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path)
    with pytest.raises(StalledError, match="no data moved for 1s"):
        stream_to_file(Environment(), _writer('exec 3> "$0"; echo started >&3; exec sleep 600',
                                              fifo), tmp_path / "x.zst", what="dump", stall=1,
                       checker=_checker(), into=fifo)


def test_an_interrupt_ends_the_producer_and_the_proof(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _recording(monkeypatch)
    fifo = _fifo(tmp_path)
    intr = interrupt.reset()
    intr.abortable = True
    before = set(threading.enumerate())
    timer = threading.Timer(0.5, intr.request, args=("SIGINT",))
    timer.start()
    try:
        with pytest.raises(InterruptedOperation, match="stopped by SIGINT"):
            stream_to_file(Environment(), _writer('yes backout > "$0"', fifo),
                           tmp_path / "x.zst", what="dump", checker=_checker(), into=fifo)
    finally:
        timer.join()
        interrupt.reset()
    assert all(child.wait(10) is not None for child in started)
    assert started[0].returncode == -9  # the producer
    # the thread holding the FIFO open ends with the producer
    for thread in set(threading.enumerate()) - before:
        thread.join(5)
    assert set(threading.enumerate()) <= before
