"""The first step of an emergency rollback keeps the operator's uncommitted changes (a
patch under .backout/saved and a git stash) whatever the project's .gitignore says of
backout's own files: a project that ignores .backout/ (the demo's does) once failed
here, the stash made but the changes left staged in the tree. Real git, no Docker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from backout.config import Config
from backout.operations import interrupt
from backout.operations.executor import Executor
from backout.operations.plan import Plan, Step
from backout.rollback import emergency
from backout.state import Store
from tests.support.fakes import run_context


@pytest.fixture(autouse=True)
def _fresh_interrupt() -> None:
    """Another test's Ctrl-C must not reach this one's executor."""
    interrupt.reset()


def git(tmp: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tmp), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("ignore", ["", ".backout/\n", ".backout/\nbackout.toml\n"])
def test_uncommitted_changes_are_saved_whatever_the_project_ignores(tmp_path: Path,
                                                                    ignore: str) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("backups/\n" + ignore)
    (tmp_path / "compose.yaml").write_text("services: {web: {image: web:1}}\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    store = Store(config.state_dir)  # .backout/ exists, with the state database
    (tmp_path / "backout.toml").write_text("# the operator's config, never stashed\n")
    (tmp_path / "compose.yaml").write_text("services: {web: {image: web:hotfix}}\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert emergency  # registers the action
    plan = Plan("rollback.emergency", {}, (Step("save uncommitted changes",
                                                "emergency.save_changes", "r",
                                                {"target": "r1"}, key="save-changes"),))
    ex = Executor(store, run_context(store, config))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded", outcome.error
    saved = outcome.results["save-changes"]
    assert saved["saved"] is True and saved["untracked"] == ["notes.txt"]
    assert "web:hotfix" in (tmp_path / saved["patch"]).read_text()
    # the stash holds the changes; the tree is the commit again, backout's files kept
    assert saved["stash"] == git(tmp_path, "rev-parse", "refs/stash")
    assert "web:hotfix" in git(tmp_path, "stash", "show", "-p", "stash@{0}")
    assert git(tmp_path, "status", "--porcelain", "--", ".", ":(exclude).backout",
               ":(exclude)backout.toml") == ""
    assert not (tmp_path / "notes.txt").exists()
    assert (tmp_path / "backout.toml").exists() and (config.state_dir / "state.db").exists()
