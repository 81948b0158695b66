"""The Repository protocol: what backup, rollback, verify and retention need of a place
that holds copies of published backup sets, and the errors a copy can end with.

A repository holds whole sets (every artifact plus ``manifest.json``), each under its
set id; the manifest in the copy is byte for byte the local one, so a set fetched back
is checked against it exactly as a local set is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from backout.errors import ExitCode, ExternalError, LockedError


@dataclass(frozen=True)
class RemoteSet:
    """One set held by a repository."""

    set_id: str
    snapshot: str  # the repository's own id of the copy
    completed_at: datetime  # the set's completion time (retention decides by it)


class Repository(Protocol):
    name: str

    def location(self) -> str:
        """Where it is, for people (the URL; never the password)."""
        ...

    def put(self, set_dir: Path, completed_at: datetime) -> str:
        """Copy the published set at ``set_dir`` (named by its id); its snapshot id."""
        ...

    def check(self, snapshot: str, set_id: str, manifest: bytes,
              sizes: dict[str, int]) -> str:
        """Prove one copy whole: the manifest read back byte for byte, every artifact
        present with its size. Raises on a problem; returns what was checked, in words."""
        ...

    def check_repository(self) -> str:
        """The repository's own consistency check (after a run's copies)."""
        ...

    def read_file(self, snapshot: str, set_id: str, name: str) -> bytes:
        """One file of a copy (the manifest, read back before a restore is planned)."""
        ...

    def fetch(self, snapshot: str, set_id: str, dest: Path) -> Path:
        """Bring the copy back into ``dest`` (a fresh directory); returns ``dest/<set_id>``."""
        ...

    def sets(self) -> list[RemoteSet]:
        """Every set it holds."""
        ...

    def forget(self, snapshots: list[str]) -> None:
        """Remove these copies and free their space."""
        ...


class RepositoryError(ExternalError):
    """A copy, check, fetch or prune failed; the local set is untouched."""

    code = "repository"


class RepositoryUnreachableError(RepositoryError):
    code = "repository_unreachable"


class RepositoryFullError(RepositoryError):
    code = "repository_full"


class RepositoryPasswordError(RepositoryError):
    """The password does not open the repository: the operator's configuration."""

    exit_code = ExitCode.USAGE
    code = "repository_password"


class RepositoryLockedError(LockedError, RepositoryError):
    """Another process (a restic of someone else, a prune) holds the repository's lock."""

    exit_code = ExitCode.LOCKED
    code = "repository_locked"


class RepositoryMissingError(RepositoryError):
    exit_code = ExitCode.NOT_FOUND
    code = "repository_missing"


__all__ = ["RemoteSet", "Repository", "RepositoryError", "RepositoryFullError",
           "RepositoryLockedError", "RepositoryMissingError", "RepositoryPasswordError",
           "RepositoryUnreachableError"]
