"""Running external commands: argv lists, timeouts, secrets only via environment.

Secrets are handed to a child through its environment (``secret_env``) or a file,
never through argv where ``ps`` would show them. The child's environment is
built from the caller's minus anything that looks like a credential, so a secret
of one database is never leaked to an unrelated tool (BorgBackup does the same).

Every child runs in a session of its own (``CHILD``): a terminal's Ctrl-C goes to
the whole foreground process group, and a dump or restore pipe must not die with
it before backout has decided what to do (backout.operations.interrupt). Children
are still killed with backout (the kernel's parent-death signal), so a ``kill -9``
of backout never leaves a restore running behind the one ``backout resume`` starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

from backout import cliplugin
from backout.environment import Environment
from backout.errors import CommandFailedError, ExternalError

T = TypeVar("T")

_SECRET_NAME = re.compile(r"(PASS|PASSWORD|SECRET|TOKEN|CREDENTIAL|API_KEY|PRIVATE_KEY|AUTH)", re.I)
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> object | None:
    # Resolved once, here: the function run in the child between fork and exec
    # must not import or allocate (other threads may hold locks at fork time).
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # type: ignore[operator]


class ChildOptions(TypedDict):
    start_new_session: bool
    preexec_fn: Callable[[], None]


# Keyword arguments for every subprocess backout starts: its own session (no
# terminal signals), killed when backout dies.
CHILD = ChildOptions(start_new_session=True, preexec_fn=_die_with_parent)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def is_secret_name(name: str) -> bool:
    """Does a variable's name say it holds a credential?"""
    return bool(_SECRET_NAME.search(name))


def child_env(env: Environment, secret_env: Mapping[str, str] | None = None,
              plain_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: the caller's without credentials, plus ``plain_env``
    (values that are no secret: shown as they are) and ``secret_env`` (redacted from
    every output from now on)."""
    clean = {k: v for k, v in env.env.items() if not _SECRET_NAME.search(k)}
    clean.update(plain_env or {})
    if secret_env:
        for value in secret_env.values():
            env.redact.add(value)
        clean.update(secret_env)
    return clean


def describe(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def run(
    env: Environment,
    argv: Sequence[str],
    *,
    timeout: float = 120,
    cwd: str | None = None,
    secret_env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
    what: str | None = None,
    plain_env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``argv`` to completion and capture its output.

    ``what`` names the operation for error messages ("docker compose config").
    With ``check`` a non-zero exit raises ``CommandFailedError`` carrying the last
    line of stderr (redacted).
    """
    argv = [str(a) for a in argv]
    label = what or describe(argv[:3])
    variables = child_env(env, secret_env, plain_env)
    start = time.monotonic()

    try:
        child, ran = _spawn(argv, variables, cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL if input_text is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **CHILD)
        how = "" if ran == argv[0] else f", {ran}"  # which binary ran, in --verbose's line
        # started: whatever happens now, it is not started again (subprocess.run's wait)
        with child:
            try:
                stdout, stderr = child.communicate(input_text, timeout=timeout)
            except BaseException:
                child.kill()
                child.wait()
                raise
        completed = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    except FileNotFoundError as exc:
        env.log_external(f"$ {describe(argv)}  (not found)")
        raise ExternalError(
            f"{label}: {argv[0]} is not installed or not on PATH",
            fix=f"install {argv[0]}",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        env.log_external(f"$ {describe(argv)}  (timed out after {timeout:.0f}s)")
        raise ExternalError(f"{label}: timed out after {timeout:.0f}s") from exc
    duration = time.monotonic() - start
    env.log_external(f"$ {describe(argv)}  ({duration:.2f}s, exit {completed.returncode}{how})")
    result = Result(
        tuple(argv), completed.returncode, completed.stdout, completed.stderr, duration
    )
    if check and not result.ok:
        raise CommandFailedError(
            f"{label} failed (exit {result.returncode}): {last_line(env.redact(result.stderr))}"
        )
    return result


def popen(argv: Sequence[str], *, env: dict[str, str], **options: Any
          ) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, env=env, **options)`` for a streaming child (a dump, a
    load), a ``docker compose …`` run as the Docker CLI runs it (``cliplugin``)."""
    child: subprocess.Popen[bytes] = _spawn(argv, env, **options)[0]
    return child


def _spawn(argv: Sequence[str], env: Mapping[str, str], **options: Any
           ) -> tuple[subprocess.Popen[Any], str]:
    """``argv`` started (its Compose plugin's binary for ``docker compose …``, when
    ``cliplugin`` finds one), and the program that runs."""
    direct = cliplugin.exec_argv(argv, env)
    if direct is not None:
        try:
            return subprocess.Popen(direct[0], env={**env, **direct[1]}, **options), direct[0][0]
        except OSError:  # gone or changed since it was found: the CLI finds it, or says so
            cliplugin.forget()
    return subprocess.Popen(list(argv), env=dict(env), **options), argv[0]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


class Background(Generic[T]):
    """``call`` run in a daemon thread from now on; ``result()`` waits for it and
    returns its value or raises its error in the caller's thread. A daemon thread: a
    Ctrl-C while Compose answers leaves at once."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._outcome: list[T | BaseException] = []

        def run() -> None:
            try:
                self._outcome.append(call())
            except BaseException as exc:  # raised by result(), in the caller's thread
                self._outcome.append(exc)

        self._thread = threading.Thread(target=run, daemon=True, name="backout-background")
        self._thread.start()

    def result(self) -> T:
        self._thread.join()
        outcome = self._outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def settle(self) -> None:
        """Wait for it to end, its outcome unused."""
        self._thread.join()


@contextlib.contextmanager
def settled() -> Iterator[list[Background[Any]]]:
    """The Background calls put in the yielded list end before the body is left,
    however it ends (their outcomes unused: the body took what it needed), so that
    none runs on past the step that started it (a row count holding a table's lock
    into the DROP that follows); except on Ctrl-C, which leaves at once (daemon
    threads end with the process)."""
    started: list[Background[Any]] = []
    interrupted = False
    try:
        yield started
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if not interrupted:
            for call in started:
                call.settle()
