"""The progress bar of a transfer (dump, restore, trial restore) on a terminal:
bytes moved, rate and, with a known total, percent and ETA. Drawn on stderr with a
carriage return and cleared when the transfer ends, so the step's outcome line
follows on a clean line. Only set up on a terminal without --json (Ctx.setup)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TextIO

from backout.cli.output import human_size

WIDTH = 20
REDRAW = 0.2  # seconds between two drawings


def _clock(remaining: float) -> str:
    seconds = math.ceil(remaining)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def render(label: str, done: int, total: int | None, elapsed: float, *, estimated: bool) -> str:
    """One line: ``dump mysql [#####-----] 48% 12.0 MiB of ~25.0 MiB 4.0 MiB/s ETA 0:03``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{human_size(rate)}/s"
    if not total:
        return f"  {label}  {human_size(done)}  {speed}"
    fraction = min(done / total, 0.99 if estimated else 1.0)
    filled = int(fraction * WIDTH)
    bar = "#" * filled + "-" * (WIDTH - filled)
    of = f"{'~' if estimated else ''}{human_size(total)}"
    if done >= total:
        eta = "ETA --:--" if estimated else "ETA 0:00"
    else:
        eta = f"ETA {_clock((total - done) / rate)}" if rate > 0 else "ETA --:--"
    return f"  {label}  [{bar}] {fraction * 100:3.0f}%  {human_size(done)} of {of}  {speed}  {eta}"


class TerminalMeter:
    def __init__(self, stream: TextIO, label: str, total: int | None, estimated: bool,
                 clock: Callable[[], float]) -> None:
        self.stream, self.label, self.total, self.estimated = stream, label, total, estimated
        self.clock = clock
        self.started = clock()
        self.drawn = 0.0
        self.width = 0
        self.lock = threading.Lock()

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self.drawn < REDRAW:
            return
        self.drawn = now
        line = render(self.label, done, self.total, now - self.started, estimated=self.estimated)
        with self.lock:
            self.width = max(self.width, len(line))
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()

    def close(self) -> None:
        with self.lock:
            if self.width:
                self.stream.write("\r" + " " * self.width + "\r")
                self.stream.flush()


class TerminalProgress:
    """A ``ProgressSink`` drawing on a terminal stream."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock

    def start(self, label: str, total: int | None, *, estimated: bool) -> TerminalMeter:
        return TerminalMeter(self.stream, label, total, estimated, self.clock)
