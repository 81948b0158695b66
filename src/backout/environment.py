"""The ``Environment`` passed to everything that talks to the outside world.

Like HTTPie's, it bundles the streams and the global options so tests can swap
them, and it owns the ``Redactor`` that masks every known secret before any text
reaches a log line, an error message or JSON output.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

# What turns a BACKOUT_* switch off (BACKOUT_COMPOSE_DIRECT, BACKOUT_DUMP_BESIDE).
SWITCHED_OFF = frozenset({"0", "false", "no", "off"})


def switched_off(environ: Mapping[str, str], name: str) -> bool:
    """The switch ``name`` set to 0, false, no or off (any case, spaces around)."""
    return environ.get(name, "").strip().lower() in SWITCHED_OFF

LOG = logging.getLogger("backout")
MASK = "******"


class Redactor:
    """Replaces every registered secret value with a mask."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._adding = threading.Lock()

    def add(self, value: str | None) -> None:
        # Very short values would mask unrelated text ("1", "on") and are not
        # meaningful secrets anyway; they are still never put in argv.
        if value and len(value) >= 4:
            # Replaced, never changed in place: a thread masking text (verify's checks
            # run at once) iterates over the set it read; the lock keeps two threads
            # adding at once from losing one of the values.
            with self._adding:
                self._secrets = self._secrets | {value}

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __contains__(self, value: object) -> bool:
        return value in self._secrets


class Meter(Protocol):
    """The progress of one transfer (a dump, a restore): bytes moved so far."""

    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


class ProgressSink(Protocol):
    """Where progress goes (the CLI draws a bar on a terminal; nothing otherwise).
    ``total`` is None when unknown; ``estimated`` when it is the engine's guess of
    the size rather than an exact byte count."""

    def start(self, label: str, total: int | None, *, estimated: bool) -> Meter: ...


@dataclass
class Environment:
    project_dir: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool = field(default_factory=lambda: sys.stdin.isatty())
    json: bool = False
    verbose: bool = False
    debug: bool = False
    redact: Redactor = field(default_factory=Redactor)
    # Extra variables for child processes (compose project name and such). Never
    # secrets: those go through ``proc.run(secret_env=...)`` only.
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    progress: ProgressSink | None = None  # set by the CLI on a terminal without --json
    # Answers to read-only questions one run asks more than once (the resolved compose
    # file: a plan, its verify and the status after each ask it), keyed by everything
    # the answer depends on; one invocation's, so a test's next run starts empty.
    memo: dict[object, object] = field(default_factory=dict)

    def log_external(self, text: str) -> None:
        """One line per external call when ``--verbose`` (argv/URL, duration, exit)."""
        if self.verbose:
            LOG.info(self.redact(text))

    def warn(self, text: str) -> None:
        LOG.warning(self.redact(text))

    def meter(self, label: str, total: int | None, *, estimated: bool = False) -> Meter | None:
        """A meter for one transfer, or None when nobody watches (no terminal, --json)."""
        return None if self.progress is None else self.progress.start(label, total,
                                                                      estimated=estimated)

    def color(self, stream: TextIO) -> bool:
        """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
        return not self.env.get("NO_COLOR") and stream.isatty()
