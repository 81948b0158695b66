"""The deployment repository, through the ``git`` CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backout import proc
from backout.environment import Environment
from backout.errors import NotFoundError, UsageError


@dataclass(frozen=True)
class TreeState:
    commit: str | None  # None outside a repository or before the first commit
    dirty: bool
    diff: str  # `git diff HEAD` (tracked changes) when dirty
    untracked: tuple[str, ...]


class Git:
    def __init__(self, env: Environment, repo_dir: Path) -> None:
        self.env = env
        self.repo_dir = repo_dir

    def _git(self, *args: str, check: bool = True, timeout: float = 60) -> proc.Result:
        return proc.run(self.env, ["git", "-C", str(self.repo_dir), *args], check=check,
                        timeout=timeout, what=f"git {args[0]}")

    def is_repo(self) -> bool:
        return self._git("rev-parse", "--is-inside-work-tree", check=False).stdout.strip() == "true"

    def not_a_repo(self, why: str) -> UsageError:
        """The error of a command that needs the project in git (deploy, emergency)."""
        return UsageError(f"{self.repo_dir} is not a git repository: {why}",
                          fix="keep the compose project in git; without it, roll back one "
                              "service (`backout rollback service`) or one database "
                              "(`backout rollback db`), or deploy by hand and `backout "
                              "release record`")

    def state(self, exclude: tuple[str, ...] = (".backout",)) -> TreeState:
        """HEAD and whether the tree has changes, ignoring ``exclude`` (backout's own state)."""
        if not self.is_repo():
            return TreeState(None, False, "", ())
        head = self._git("rev-parse", "--verify", "-q", "HEAD", check=False)
        commit = head.stdout.strip() or None
        status = self._git("status", "--porcelain=v1", "--untracked-files=all", "--", ".",
                           *[f":(exclude){p}" for p in exclude]).stdout
        untracked = tuple(line[3:] for line in status.splitlines() if line.startswith("??"))
        dirty = bool(status.strip())
        diff = self._git("diff", "HEAD", "--binary").stdout if dirty and commit else ""
        return TreeState(commit, dirty, diff, untracked)

    def resolve(self, ref: str) -> str:
        result = self._git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        if not result.ok or not result.stdout.strip():
            raise NotFoundError(f'no commit or tag "{ref}" in {self.repo_dir}',
                                fix="list candidates with `git log --oneline -10` or "
                                    "`backout releases`")
        return result.stdout.strip()

    def changed_files(self, old: str, new: str) -> list[str]:
        """Paths under the project directory that differ between two commits, relative to it."""
        out = self._git("diff", "--name-only", "--relative", "-z", old, new).stdout
        return [p for p in out.split("\0") if p]

    def tags_by_commit(self, pattern: str = "v*") -> dict[str, list[str]]:
        result = self._git("tag", "-l", pattern, "--format=%(objectname) %(*objectname) %(refname:short)",
                           check=False)
        out: dict[str, list[str]] = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:  # annotated: tag object, peeled commit, name
                commit, name = parts[1], parts[2]
            elif len(parts) == 2:
                commit, name = parts[0], parts[1]
            else:
                continue
            out.setdefault(commit, []).append(name)
        return out


class GitWrite:
    """The few git commands that change the work tree, each safe to repeat."""

    def __init__(self, git: Git) -> None:
        self.git = git

    def current_branch(self) -> str | None:
        result = self.git._git("symbolic-ref", "--short", "-q", "HEAD", check=False)
        return result.stdout.strip() or None

    def stash_all(self, message: str, exclude: list[str]) -> str | None:
        """Stash tracked and untracked changes (never ignored files), except ``exclude``.

        Returns the stash commit, or None when there was nothing to stash.
        """
        # An ignored path is never stashed anyway, and naming it (even to exclude it)
        # makes `git stash push` fail after it has saved the stash, the changes left
        # staged: a project whose .gitignore lists .backout/ could not be rolled back.
        pathspec = ["--", ".", *[f":(exclude){p}" for p in exclude if not self._ignored(p)]]
        before = self.git._git("rev-parse", "-q", "--verify", "refs/stash", check=False).stdout.strip()
        # A stash is a commit: without an identity configured git refuses to make one,
        # and an emergency is no time for that question.
        identity: list[str] = []
        if not self.git._git("config", "user.email", check=False).stdout.strip():
            identity = ["-c", "user.name=backout", "-c", "user.email=backout@localhost"]
        self.git._git(*identity, "stash", "push", "--include-untracked", "-m", message, *pathspec)
        self.git.env.memo.clear()  # untracked files the compose files read may be gone
        after = self.git._git("rev-parse", "-q", "--verify", "refs/stash", check=False).stdout.strip()
        return after if after and after != before else None

    def _ignored(self, path: str) -> bool:
        return self.git._git("check-ignore", "-q", "--", path, check=False).ok

    def checkout_detached(self, commit: str) -> None:
        self.git._git("checkout", "--quiet", "--detach", commit)
        self.git.env.memo.clear()  # answers about the files of the commit left behind

    def head(self) -> str | None:
        return self.git._git("rev-parse", "-q", "--verify", "HEAD", check=False).stdout.strip() or None

    def has_commit(self, commit: str) -> bool:
        return self.git._git("cat-file", "-e", f"{commit}^{{commit}}", check=False).ok
