"""Backup sets on disk: written in a hidden partial directory, published by one
atomic rename once ``manifest.json`` (written last) is durable.

Layout under the backup directory::

    <set-id>/manifest.json          a usable set (valid manifest)
    <set-id>/<artifact>.zst         its artifacts, mode 0600
    .partial-<set-id>/              a set being written, or left by a crash
"""

from __future__ import annotations

import errno
import json
import os
import secrets as _secrets
import shutil
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backout.errors import NotFoundError
from backout.state import Store
from backout.storage.pipeline import DiskFullError, IntegrityError, fsync_dir, fsync_file

MANIFEST = "manifest.json"
FORMAT = "backout-backup"
FORMAT_VERSION = 1
PARTIAL = ".partial-"


def new_set_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"{stamp}-{_secrets.token_hex(2)}"


class SetWriter:
    def __init__(self, root: Path, set_id: str) -> None:
        self.root = root
        self.id = set_id
        self.dir = root / f"{PARTIAL}{set_id}"
        self.final = root / set_id

    def open(self) -> SetWriter:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(exist_ok=True, mode=0o700)  # exists on resume: keep what it holds
        return self

    def path(self, name: str) -> Path:
        return self.dir / name

    def publish(self, manifest: dict[str, Any]) -> Path:
        """Manifest last, then one rename; a crash before the rename leaves a partial set."""
        for name in manifest.get("artifacts", {}):
            fsync_file(self.dir / name)
        tmp = self.dir / f".{MANIFEST}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"backup {self.id}: no space left on the backup disk for "
                                    f"{MANIFEST} ({self.root})",
                                    fix="free space or point [backups] dir at a larger disk") from exc
            raise
        os.replace(tmp, self.dir / MANIFEST)
        fsync_dir(self.dir)
        os.replace(self.dir, self.final)
        fsync_dir(self.root)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class SetInfo:
    id: str
    path: Path
    usable: bool
    problem: str | None
    manifest: dict[str, Any] | None


def read_manifest(set_dir: Path) -> dict[str, Any]:
    path = set_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise IntegrityError(f"backup {set_dir.name}: no manifest (incomplete set)") from exc
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"backup {set_dir.name}: unreadable manifest: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IntegrityError(f"backup {set_dir.name}: manifest is not a backout backup manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(f"backup {set_dir.name}: manifest format "
                             f"{data.get('format_version')} is not supported")
    for name, art in (data.get("artifacts") or {}).items():
        if not (set_dir / name).is_file():
            raise IntegrityError(f"backup {set_dir.name}: artifact {name} is missing")
        if (set_dir / name).stat().st_size != art.get("bytes"):
            raise IntegrityError(f"backup {set_dir.name}: artifact {name} has the wrong size "
                                 f"({(set_dir / name).stat().st_size} bytes, manifest says "
                                 f"{art.get('bytes')})")
    return data


def list_sets(root: Path) -> list[SetInfo]:
    """Every set directory, newest first; only those with a valid manifest are usable.

    Partial directories are not sets and are not listed.
    """
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name, reverse=True):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            manifest = read_manifest(entry)
            out.append(SetInfo(entry.name, entry, True, None, manifest))
        except IntegrityError as exc:
            out.append(SetInfo(entry.name, entry, False, exc.message, None))
    return out


def get_set(root: Path, set_id: str) -> SetInfo:
    for info in list_sets(root):
        if info.id == set_id:
            return info
    raise NotFoundError(f'no backup "{set_id}" in {root}', fix="list them with `backout backups list`")


def partials(root: Path, keep: str | Collection[str] | None = None) -> list[str]:
    """Leftovers of interrupted runs (``.partial-*``), except the sets named in ``keep``
    (those an unfinished operation will go on writing)."""
    kept = {keep} if isinstance(keep, str) else set(keep or ())
    if not root.is_dir():
        return []
    return [entry.name for entry in sorted(root.iterdir())
            if entry.name.startswith(PARTIAL) and entry.name[len(PARTIAL):] not in kept]


def cleanup_partials(root: Path, keep: str | Collection[str] | None = None) -> list[str]:
    """Remove the ``partials`` (see there). Call only under the operation lock."""
    removed = partials(root, keep)
    for name in removed:
        shutil.rmtree(root / name, ignore_errors=True)
    return removed


def referenced_set_ids(plans: Iterable[dict[str, Any]]) -> set[str]:
    """Every set id the steps of these (journaled) plans write or read."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "set_id" and isinstance(item, str):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for plan in plans:
        walk([step.get("params") for step in plan.get("steps", [])])
    return found


def set_ids_in_use(store: Store) -> set[str]:
    """Sets the unfinished operations will still write (their partials stay)."""
    return referenced_set_ids(op["plan"] for op in store.unfinished_operations())
