"""A plain set directory elsewhere (a mounted NAS or a second disk): the same layout
as the local backup directory, sets written partial and published by one rename.

Not encrypted and not deduplicated (use restic for that); its password is still
required by the config, so switching a repository's kind never drops a secret.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

from backout.config import RepositoryConfig
from backout.environment import Environment
from backout.storage import sets
from backout.storage.pipeline import IntegrityError, fsync_dir, fsync_file
from backout.storage.repositories.base import (
    RemoteSet,
    RepositoryError,
    RepositoryFullError,
    RepositoryUnreachableError,
)

COMPLETED_AT = "%Y-%m-%dT%H:%M:%SZ"


class DirectoryRepository:
    def __init__(self, env: Environment, repo: RepositoryConfig, password: str) -> None:
        del password  # nothing to open
        self.env = env
        self.repo = repo
        self.name = repo.name
        self.root = Path(repo.url)

    def location(self) -> str:
        return str(self.root)

    def _reachable(self) -> None:
        if not self.root.parent.is_dir():
            raise RepositoryUnreachableError(f"repository {self.name}: {self.root.parent} "
                                             "does not exist (not mounted?)",
                                             fix="mount it, or correct the url")

    def put(self, set_dir: Path, completed_at: datetime) -> str:
        del completed_at  # the manifest in the copy says it
        self._reachable()
        writer = sets.SetWriter(self.root, set_dir.name)
        if writer.final.is_dir():
            return set_dir.name
        try:
            writer.discard()
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copytree(set_dir, writer.dir)
            for entry in writer.dir.iterdir():
                fsync_file(entry)
            writer.dir.replace(writer.final)
            fsync_dir(self.root)
        except OSError as exc:
            writer.discard()
            cls = RepositoryFullError if exc.errno == 28 else RepositoryError
            raise cls(f"repository {self.name}: copy of set {set_dir.name}: {exc.strerror}",
                      fix="free space on the repository's disk; backout retries the copy on "
                          "its next run") from exc
        return set_dir.name

    def check(self, snapshot: str, set_id: str, manifest: bytes,
              sizes: dict[str, int]) -> str:
        copy = self.root / snapshot
        if self.read_file(snapshot, set_id, sets.MANIFEST) != manifest:
            raise RepositoryError(f"repository {self.name}: the copy of set {set_id} has a "
                                  "different manifest.json than the local set")
        try:
            data = sets.read_manifest(copy)  # every artifact present with its size
        except IntegrityError as exc:
            raise RepositoryError(f"repository {self.name}: {exc.message}") from exc
        for name, art in (data.get("artifacts") or {}).items():
            digest = hashlib.sha256()
            with (copy / name).open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != art.get("sha256"):
                raise RepositoryError(f"repository {self.name}: the copy of {set_id}/{name} "
                                      "does not match the manifest's sha256")
        return (f"manifest read back identical; {len(sizes)} artifact(s) re-read, sha256 as "
                "in the manifest")

    def check_repository(self) -> str:
        self._reachable()
        return "a plain directory: every copy was re-read whole"

    def read_file(self, snapshot: str, set_id: str, name: str) -> bytes:
        del set_id
        self._reachable()
        try:
            return (self.root / snapshot / name).read_bytes()
        except OSError as exc:
            raise RepositoryError(f"repository {self.name}: cannot read {snapshot}/{name}: "
                                  f"{exc.strerror}") from exc

    def fetch(self, snapshot: str, set_id: str, dest: Path) -> Path:
        self._reachable()
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = dest / set_id
        shutil.copytree(self.root / snapshot, target)
        return target

    def sets(self) -> list[RemoteSet]:
        self._reachable()
        return [RemoteSet(i.id, i.id, datetime.strptime(i.manifest["completed_at"],
                                                        COMPLETED_AT).replace(tzinfo=UTC))
                for i in sets.list_sets(self.root) if i.usable and i.manifest]

    def forget(self, snapshots: list[str]) -> None:
        for snapshot in snapshots:
            shutil.rmtree(self.root / snapshot, ignore_errors=True)
