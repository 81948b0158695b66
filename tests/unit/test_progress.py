"""Progress of transfers: what a bar says (rate, percent, ETA, an estimate marked
as one), that the pipeline measures real bytes through zstd, and that no bar is
drawn without a terminal or with --json."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from backout.cli.main import Ctx
from backout.cli.progress import TerminalProgress, render
from backout.environment import Environment
from backout.storage.pipeline import decompress_into, stream_to_file

MIB = 2**20


def test_a_bar_with_a_known_total_has_percent_rate_and_eta() -> None:
    line = render("restore mysql", 25 * MIB, 100 * MIB, 5.0, estimated=False)
    assert "[#####---------------]" in line and " 25%" in line
    assert "25.0 MiB of 100.0 MiB" in line and "5.0 MiB/s" in line and "ETA 0:15" in line
    hour = render("dump mysql", MIB, 8000 * MIB, 1.0, estimated=True)
    assert "of ~7.8 GiB" in hour and "ETA 2:13:19" in hour


def test_an_estimate_passed_is_not_a_lie() -> None:
    line = render("dump mysql", 120 * MIB, 100 * MIB, 4.0, estimated=True)
    assert " 99%" in line and "ETA --:--" in line  # the estimate was low: no false 0:00


def test_without_a_total_only_bytes_and_rate() -> None:
    line = render("volume uploads tar", 3 * MIB, None, 2.0, estimated=True)
    assert line == "  volume uploads tar  3.0 MiB  1.5 MiB/s"


def test_the_meter_redraws_in_place_and_clears_itself() -> None:
    now = [0.0]
    out = io.StringIO()
    meter = TerminalProgress(out, clock=lambda: now[0]).start("dump redis", 10 * MIB,
                                                              estimated=False)
    for step in range(1, 5):
        now[0] = step * 0.5
        meter.update(step * 2 * MIB)
    meter.close()
    text = out.getvalue()
    assert text.count("\r") >= 5 and "ETA" in text and "\n" not in text
    assert text.endswith("\r") and text.rstrip("\r").split("\r")[-1].strip() == ""


class _Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[str, int | None, bool]] = []
        self.updates: list[int] = []
        self.closed = 0

    def start(self, label: str, total: int | None, *, estimated: bool) -> _Recorder:
        self.started.append((label, total, estimated))
        return self

    def update(self, done: int) -> None:
        self.updates.append(done)

    def close(self) -> None:
        self.closed += 1


def test_a_dump_reports_the_raw_bytes_zstd_reads(tmp_path: Path) -> None:
    sink = _Recorder()
    env = Environment(progress=sink)
    producer = ["sh", "-c", "for i in 1 2 3 4 5 6; do head -c 1048576 /dev/urandom; "
                            "sleep 0.15; done"]
    stream_to_file(env, producer, tmp_path / "x.zst", what="dump test", total=6 * MIB)
    assert sink.started == [("dump test", 6 * MIB, True)] and sink.closed == 1
    assert len(sink.updates) >= 2 and sink.updates == sorted(sink.updates)
    assert 0 < sink.updates[-1] <= 6 * MIB + 65536  # what zstd read, not what it wrote


def test_a_restore_reports_the_artifact_read_of_its_exact_size(tmp_path: Path) -> None:
    artifact = tmp_path / "a.zst"
    subprocess.run(["sh", "-c", f"head -c 4194304 /dev/urandom | zstd -q -c > {artifact}"],
                   check=True)
    sink = _Recorder()
    decompress_into(Environment(progress=sink), artifact,
                    ["sh", "-c", "sleep 0.7; cat >/dev/null"], what="restore test")
    assert sink.started == [("restore test", artifact.stat().st_size, False)]
    assert sink.updates and sink.updates[-1] <= artifact.stat().st_size + 65536
    assert sink.closed == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_without_a_terminal_or_with_json() -> None:
    def progress_of(stderr: io.StringIO, json: bool) -> object:
        ctx = Ctx()
        ctx.env.stderr, ctx.env.json = stderr, json
        ctx.setup()
        return ctx.env.progress

    assert isinstance(progress_of(_Terminal(), False), TerminalProgress)
    assert progress_of(_Terminal(), True) is None
    assert progress_of(io.StringIO(), False) is None
    assert Environment().meter("x", 1) is None  # the core's default: nobody watches
