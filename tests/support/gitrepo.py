"""Throw-away git repositories for in-process tests of the deploy (git is a local
tool: no fake needed). No global or system git config is read, and every commit
carries a throw-away identity."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from backout.environment import Environment


def git_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1"}


def environment(repo: Path) -> Environment:
    """The Environment backout's git calls should run under in such a test."""
    return Environment(env=git_env(repo.parent))


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], capture_output=True, text=True, check=True,
                          env=git_env(repo.parent), timeout=30).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Write ``files`` (path -> text), commit everything, return the new HEAD."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    sh(repo, "add", "-A")
    sh(repo, "commit", "-qm", message)
    return sh(repo, "rev-parse", "HEAD")


def new_repo(path: Path, files: dict[str, str]) -> Path:
    """A repository on branch main at ``path`` with one commit of ``files``."""
    path.mkdir()
    sh(path, "init", "-q", "-b", "main")
    commit(path, files, "one")
    return path
