"""One ``redis-cli`` process for many commands.

Each ``redis-cli`` call through ``docker exec`` costs ~0.1 s of process and exec
set-up, and a backup asks a dozen questions and polls a BGSAVE: most of its overhead
against the bare pipe. Fed on stdin without a terminal, redis-cli reads and answers one
line at a time, so one process can answer them all. Replies are framed by an ``ECHO`` of
a random token after each command (raw replies have no length prefix; a token no reply
holds marks the end), and errors are recognised as :func:`Redis.call` does.

Only fixed command words go through a session (never data with spaces or newlines:
redis-cli would split them); callers with such arguments use a one-off call.
"""

from __future__ import annotations

import contextlib
import queue
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from backout import proc
from backout.environment import Environment
from backout.errors import BackoutError, ExternalError

# Words redis-cli passes through unchanged when a line is split at spaces.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_.:|/*+@-]+")
# Replies that are errors (raw mode prints them bare); stderr lines that end a session.
ERROR_REPLY = ("NOAUTH", "WRONGPASS", "ERR", "(error)", "NOPERM", "LOADING", "MISCONF",
               "READONLY", "BUSY", "WRONGTYPE", "OOM", "MASTERDOWN", "CLUSTERDOWN", "NOSCRIPT",
               "EXECABORT", "NOREPLICAS", "TRYAGAIN", "CROSSSLOT", "MOVED", "ASK ")
_FATAL_STDERR = ("Could not connect", "AUTH failed", "Error:")


def plain(words: Sequence[str]) -> bool:
    """Can these words go through a session unchanged?"""
    return bool(words) and all(_PLAIN_WORD.fullmatch(w) for w in words)


class CliSession:
    """A running redis-cli: :meth:`ask` sends one command and returns its reply.

    ``explain`` turns a failed exchange (a :class:`proc.Result` carrying what redis-cli
    printed) into the error the caller would raise for a one-off call."""

    def __init__(self, env: Environment, argv: Sequence[str], *, secret_env: Mapping[str, str],
                 cwd: str | None, explain: Callable[[proc.Result, str], BackoutError]) -> None:
        self.env = env
        self.argv = tuple(argv)
        self.explain = explain
        self.token = f"backout-end-{secrets.token_hex(8)}"
        self.asked = 0
        self.started = time.monotonic()
        self._lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._stderr: list[str] = []
        self._dead = False
        self._closed = False
        try:
            self.proc = proc.popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=proc.child_env(env, secret_env), cwd=cwd, **proc.CHILD)
        except FileNotFoundError as exc:
            raise ExternalError(f"redis-cli session: {argv[0]} is not installed or not on PATH",
                                fix=f"install {argv[0]}") from exc
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, kind in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, kind), daemon=True,
                             name=f"redis-cli {kind}").start()

    def _pump(self, stream: IO[bytes], kind: str) -> None:
        for raw in iter(stream.readline, b""):
            self._lines.put((kind, raw.decode(errors="replace").rstrip("\r\n")))
        self._lines.put((kind, None))

    def ask(self, *words: str, timeout: float = 60) -> str:
        """The reply to one command, stripped; raises as a failed one-off call would."""
        if not plain(words):
            raise ValueError(f"not for a redis-cli session: {words!r}")
        command = " ".join(words)
        if self._dead:
            raise self._failure(command, "")
        assert self.proc.stdin is not None
        start = time.monotonic()
        try:
            self.proc.stdin.write(f"{command}\nECHO {self.token}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._dead = True
            raise self._failure(command, "") from None
        self.asked += 1
        reply: list[str] = []
        ends = 0  # stdout and stderr each end once when the process exits
        while True:
            left = start + timeout - time.monotonic()
            try:
                kind, line = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                self._dead = True
                self.close(kill=True)
                raise ExternalError(f"redis-cli {words[0]}: no answer in {timeout:.0f}s") from None
            if line is None:
                ends += 1
                if ends == 2:
                    self._dead = True
                    # its pipes close as it exits, a moment before its exit code can
                    # be read: under load a poll found none, and the code said was 1
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=5)
                    raise self._failure(command, "\n".join(reply))
                continue
            if kind == "err":
                self._stderr.append(line)
                if line.startswith(_FATAL_STDERR):
                    # redis-cli goes on without a connection, answering nothing on
                    # stdout: waiting for the token would wait for the timeout
                    self._dead = True
                    self.close(kill=True)
                    raise self._failure(command, "\n".join(reply))
                continue
            if line == self.token:
                break
            reply.append(line)
        out = "\n".join(reply).strip()
        self.env.log_external(f"  redis-cli session: {command}  "
                              f"({time.monotonic() - start:.3f}s)")
        if out.startswith(ERROR_REPLY):
            raise self._failure(command, out)
        return out

    def _failure(self, command: str, out: str) -> BackoutError:
        stderr = "\n".join(self._stderr)
        result = proc.Result(self.argv, self.proc.poll() or 1, out, f"{stderr}\n{out}",
                             time.monotonic() - self.started)
        return self.explain(result, f"redis {command.split()[0]}")

    def close(self, *, kill: bool = False) -> None:
        """End redis-cli: its input ends, and it is killed if it does not go within
        5 s (at once with ``kill``: it stopped answering)."""
        if self._closed:
            return
        self._closed = True
        if kill:
            self.proc.kill()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.env.log_external(f"$ {proc.describe(self.argv)}  (session: {self.asked} commands, "
                              f"{time.monotonic() - self.started:.2f}s, exit {self.proc.returncode})")
