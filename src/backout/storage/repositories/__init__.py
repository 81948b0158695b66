"""Where copies of backup sets live beside the local set directory, by kind
(``repositories.<name>.kind`` in backout.toml, default ``restic``).

One module per kind; the table names each lazily (``"module:Class"``), so the config
loader can validate a kind without importing anything heavy. Every kind implements
``Repository`` in ``storage/repositories/base.py``: backup, rollback, verify and
retention call that interface only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backout.config import Config
    from backout.environment import Environment
    from backout.storage.repositories.base import Repository

REPOSITORIES = {
    "restic": "backout.storage.repositories.restic:ResticRepository",
    "directory": "backout.storage.repositories.directory:DirectoryRepository",
}
DEFAULT = "restic"


def names() -> tuple[str, ...]:
    return tuple(REPOSITORIES)


def open_repository(env: Environment, config: Config, name: str) -> Repository:
    """The repository ``[repositories.<name>]`` of ``config`` (validated by the loader)."""
    repo = config.repositories[name]
    module, _, attr = REPOSITORIES[repo.kind].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    repository: Repository = cls(env, repo, config.secrets[repo.password_key])
    return repository
