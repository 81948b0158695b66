"""Exit codes and the one exception hierarchy of backout.

Every failure the tool can explain is a ``BackoutError``; the CLI edge maps it to
its ``exit_code`` and prints ``message`` (and ``fix``) as one line. Anything else
escaping is a bug and is shown as such (a traceback only with ``--debug``).

Exit codes are grouped like BorgBackup's: 0/1 success, 2 caller's fault,
3-9 the world is not as it should be, 130 interrupted.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    WARNINGS = 1  # completed, but something deserves a look
    USAGE = 2  # bad arguments, bad or missing config: nothing was changed
    UNHEALTHY = 3  # the target (service, stack, database) is not healthy
    LOCKED = 4  # another backout operation holds the lock
    VERIFICATION_FAILED = 5  # a post-operation check or a backup verification failed
    EXTERNAL = 6  # an external system failed or is unreachable (Docker, a database, git)
    NOT_FOUND = 7  # a named release, backup, commit, service does not exist
    ROLLED_BACK = 8  # a guarded deploy was rolled back automatically
    NEEDS_HUMAN = 9  # stopped on purpose and left for an operator (escalated)
    INTERRUPTED = 130  # SIGINT / SIGTERM


class BackoutError(Exception):
    """A failure with an explanation for the operator.

    ``message`` names the problem, ``fix`` (optional) says what to do about it.
    ``code`` is a stable machine-readable slug used in ``--json`` output.
    """

    exit_code: ExitCode = ExitCode.EXTERNAL
    code: str = "error"
    # A cleanup step failing with such an error (the Docker Engine not answering) is
    # left for `backout resume` instead of closing the operation as failed.
    retry_on_resume: bool = False

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "exit_code": int(self.exit_code),
            "message": self.message,
            "fix": self.fix,
        }


class UsageError(BackoutError):
    exit_code = ExitCode.USAGE
    code = "usage"


class ConfigError(UsageError):
    """A problem in backout.toml (or what it points at), as ``file: key.path: problem``."""

    code = "config"

    def __init__(self, file: str, key_path: str, problem: str, *, fix: str | None = None) -> None:
        self.file = file
        self.key_path = key_path
        self.problem = problem
        where = f"{file}: {key_path}: " if key_path else f"{file}: "
        super().__init__(where + problem, fix=fix)


class NotFoundError(BackoutError):
    exit_code = ExitCode.NOT_FOUND
    code = "not_found"


class LockedError(BackoutError):
    exit_code = ExitCode.LOCKED
    code = "locked"


class ExternalError(BackoutError):
    exit_code = ExitCode.EXTERNAL
    code = "external"


class DockerUnavailableError(ExternalError):
    code = "docker_unavailable"
    retry_on_resume = True


class CommandFailedError(ExternalError):
    code = "command_failed"


class UnhealthyError(BackoutError):
    exit_code = ExitCode.UNHEALTHY
    code = "unhealthy"


class VerificationFailedError(BackoutError):
    exit_code = ExitCode.VERIFICATION_FAILED
    code = "verification_failed"


class IntegrityError(BackoutError):
    """An artifact is missing, empty, truncated, corrupt, or not what it claims."""

    exit_code = ExitCode.VERIFICATION_FAILED
    code = "integrity"


class InterruptedOperation(BackoutError):
    exit_code = ExitCode.INTERRUPTED
    code = "interrupted"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest candidate, or '' when none is close."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{match[0]}"?)' if match else ""


class NeedsHumanError(BackoutError):
    """backout stopped on purpose: an automatic response did not verify."""

    exit_code = ExitCode.NEEDS_HUMAN
    code = "needs_human"
