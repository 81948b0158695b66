"""Candidates for shell completion: services, databases, release and backup ids.

Read straight from backout.toml (parsed, not validated against Compose: no
``docker compose config`` per keystroke), the state store (read-only) and the
backup directory. A completion must be quick and must never fail loudly: any
problem (no config, a broken one, no store) yields no candidates.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from backout.config import Config
from backout.config.load import find_config, parse_document
from backout.state.store import peek_ids


def _config(project_dir: Path, config_path: Path | None) -> Config | None:
    try:
        path = find_config(project_dir, config_path)
        return parse_document(path.name, path.read_text(encoding="utf-8"), path.parent)
    except Exception:  # completion never fails loudly
        return None


def _services(config: Config) -> list[str]:
    return sorted({*config.services, *(d.service for d in config.databases.values())})


def _databases(config: Config) -> list[str]:
    return sorted(config.databases)


def _backup_names(config: Config) -> list[str]:
    return [*sorted(config.databases), *sorted(config.volumes), "all"]


def _backup_ids(config: Config) -> list[str]:
    root = config.backup_dir
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  reverse=True)


def _releases(config: Config) -> list[str]:
    return [str(i) for i in peek_ids(config.state_dir)["releases"]]


def _checkpoints(config: Config) -> list[str]:
    return [f"cp{i}" for i in peek_ids(config.state_dir)["checkpoints"]]


def _tags(config: Config) -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(config.project_dir), "tag", "-l",
                              "--sort=-creatordate"], capture_output=True, text=True,
                             timeout=2, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.split()


KINDS: dict[str, tuple[Callable[[Config], list[str]], ...]] = {
    "service": (_services,),
    "database": (_databases,),
    "backup-name": (_backup_names,),  # what `backup` takes: a database, a volume, all
    "backup": (_backup_ids,),
    "release": (_releases,),
    "restore-source": (_checkpoints, _backup_ids),  # rollback db BACKUP
    "service-version": (_releases, _tags),  # rollback service SERVICE VERSION
    "emergency-target": (_checkpoints, _releases, _tags, _backup_ids),
    "ref": (_tags,),  # deploy REF
}


def candidates(kind: str, project_dir: Path, config_path: Path | None = None,
               incomplete: str = "") -> list[str]:
    """The values of ``kind`` that start with ``incomplete``; [] on any problem."""
    config = _config(project_dir, config_path)
    if config is None or kind not in KINDS:
        return []
    found: list[str] = []
    for source in KINDS[kind]:
        try:
            found += [v for v in source(config) if v.startswith(incomplete) and v not in found]
        except Exception:  # completion never fails loudly
            continue
    return found
