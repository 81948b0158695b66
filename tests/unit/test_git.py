"""The git adapter on real repositories (git is a local tool: no fake needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backout.adapters.git import Git, GitWrite
from backout.environment import Environment
from backout.errors import NotFoundError


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, env=_env(repo)).stdout.strip()


def _env(home: Path) -> dict[str, str]:
    # No global identity: backout must still be able to stash in an emergency.
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    sh(r, "init", "-q", "-b", "main")
    (r / "app.txt").write_text("v1\n")
    sh(r, "add", "-A")
    sh(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sh(r, "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "v1.0.0", "-m", "v1")
    (r / "app.txt").write_text("v2\n")
    sh(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    return r


def git_for(repo: Path) -> Git:
    return Git(Environment(env=_env(repo.parent)), repo)


def test_state_ignores_backouts_own_directory(repo: Path) -> None:
    (repo / ".backout").mkdir()
    (repo / ".backout" / "state.db").write_text("x")
    state = git_for(repo).state()
    assert state.commit == sh(repo, "rev-parse", "HEAD") and not state.dirty
    (repo / "app.txt").write_text("local edit\n")
    state = git_for(repo).state()
    assert state.dirty and "local edit" in state.diff


def test_resolve_and_tags(repo: Path) -> None:
    git = git_for(repo)
    first = sh(repo, "rev-parse", "HEAD~1")
    assert git.resolve("v1.0.0") == first
    assert git.tags_by_commit() == {first: ["v1.0.0"]}
    with pytest.raises(NotFoundError, match='no commit or tag "nope"'):
        git.resolve("nope")


def test_stash_keeps_changes_without_identity_and_spares_excluded(repo: Path) -> None:
    (repo / "app.txt").write_text("operator's fix\n")
    (repo / "notes.txt").write_text("untracked work\n")
    (repo / ".backout").mkdir()
    (repo / ".backout" / "state.db").write_text("state")
    gw = GitWrite(git_for(repo))
    stash = gw.stash_all("backout test", exclude=[".backout"])
    assert stash is not None
    assert (repo / "app.txt").read_text() == "v2\n" and not (repo / "notes.txt").exists()
    assert (repo / ".backout" / "state.db").read_text() == "state"  # never stashed away
    gw.checkout_detached(sh(repo, "rev-parse", "v1.0.0^{commit}"))
    assert (repo / "app.txt").read_text() == "v1\n"
    assert gw.current_branch() is None
    # nothing was destroyed: the stash brings the operator's work back
    sh(repo, "checkout", "-q", "main")
    sh(repo, "stash", "pop", "-q")
    assert (repo / "app.txt").read_text() == "operator's fix\n"
    assert (repo / "notes.txt").read_text() == "untracked work\n"
    assert gw.stash_all("nothing", exclude=[".backout", "app.txt", "notes.txt"]) is None


def test_changed_files_between_commits_relative_to_the_project(repo: Path) -> None:
    (repo / "web").mkdir()
    (repo / "web" / "app.py").write_text("print(1)\n")
    sh(repo, "add", "-A")
    sh(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "three")
    git = git_for(repo)
    assert git.changed_files("HEAD~2", "HEAD") == ["app.txt", "web/app.py"]
    assert git.changed_files("HEAD~1", "HEAD") == ["web/app.py"]
    assert Git(git.env, repo / "web").changed_files("HEAD~2", "HEAD") == ["app.py"]
    assert git.changed_files("HEAD", "HEAD") == []
