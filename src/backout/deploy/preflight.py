"""Preflight of ``backout deploy``: everything that could stop a deploy, checked
before anything changes (read-only: git, compose config, the engine, the disk).

Each check is recorded with its detail so ``--dry-run`` and the JSON output show
them all; the first failing one becomes the error, with its own exit code
(a missing ref is "not found", a dirty tree or a full disk is a refusal).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout import proc
from backout.adapters.git import Git
from backout.config import Config
from backout.environment import Environment
from backout.errors import BackoutError, NotFoundError, UsageError
from backout.operations.guard import refusal
from backout.platforms.base import Platform
from backout.state import Store
from backout.storage import sets

DiskUsage = Callable[[Path], Any]  # shutil.disk_usage's shape: .free in bytes


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Preflight:
    ref: str
    commit: str = ""
    head: str | None = None
    dirty: bool = False
    running: dict[str, str] = field(default_factory=dict)  # service -> image id now
    checkpoint_estimate: int | None = None
    checks: list[Check] = field(default_factory=list)
    error: BackoutError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, name: str, error: BackoutError) -> None:
        self.checks.append(Check(name, False, error.message))
        if self.error is None:
            self.error = error

    def passed(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail))

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "commit": self.commit, "head": self.head, "dirty": self.dirty,
                "checkpoint_estimate_bytes": self.checkpoint_estimate,
                "checks": [c.to_json() for c in self.checks]}


def last_checkpoint_bytes(config: Config, store: Store) -> int | None:
    """Size of the newest checkpoint's backup set still on disk, from its manifest."""
    on_disk = {info.id: info for info in sets.list_sets(config.backup_dir)}
    for checkpoint in store.checkpoints(5):
        # A checkpoint's set may be gone (pruned, or deleted by hand to make room):
        # that is no reason to refuse a deploy, only no estimate from it.
        info = on_disk.get(checkpoint.set_id)
        if info is not None and info.usable and info.manifest:
            return sum(int(a.get("bytes", 0)) for a in info.manifest["artifacts"].values())
    return None


@dataclass(frozen=True)
class Room:
    """Room on the backup disk for the next checkpoint: the last checkpoint's size x
    ``[deploy] disk_margin`` against the free space (no estimate without one)."""

    where: Path
    free: int
    last: int | None  # bytes of the last checkpoint still on disk
    need: int | None

    @property
    def ok(self) -> bool:
        return self.need is None or self.need <= self.free

    def detail(self) -> str:
        if self.need is None:
            return (f"{self.free // 2**20} MiB free on {self.where}; no earlier checkpoint "
                    "to estimate from")
        return f"{_mib(self.free)} free, about {_mib(self.need)} needed"

    def error(self, margin: float) -> UsageError:
        return UsageError(
            f"not enough room for a checkpoint on {self.where}: about "
            f"{_mib(self.need or 0)} needed (last checkpoint {_mib(self.last or 0)} x "
            f"{margin:g}), {_mib(self.free)} free",
            fix="free space (`backout backups prune`) or set [backups] dir elsewhere")


def checkpoint_room(config: Config, store: Store,
                    disk_usage: DiskUsage = shutil.disk_usage) -> Room:
    last = last_checkpoint_bytes(config, store)
    where = existing_parent(config.backup_dir)
    return Room(where, int(disk_usage(where).free), last,
                None if last is None else int(last * config.deploy.disk_margin))


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_compose_at(env: Environment, config: Config, platform: Platform,
                     commit: str) -> str | None:
    """Validate the stack definition as it is at ``commit``, without switching the
    tree: the commit's files are exported to a scratch directory and the platform
    reads them there (Compose: with the project's .env, which is usually untracked).
    Returns a problem, or None."""
    with tempfile.TemporaryDirectory(prefix="backout-preflight-") as tmp:
        tarball = Path(tmp) / "tree.tar"
        tree = Path(tmp) / "tree"
        tree.mkdir()
        made = proc.run(env, ["git", "-C", str(config.project_dir), "archive", "--format=tar",
                              "-o", str(tarball), commit], timeout=120, check=False,
                        what="git archive")
        if not made.ok or not proc.run(env, ["tar", "-xf", str(tarball), "-C", str(tree)],
                                       timeout=120, check=False, what="tar").ok:
            return f"could not export the files of {commit[:12]}"
        return platform.definition_problem(tree)


def preflight(env: Environment, config: Config, store: Store, platform: Platform,
              ref: str | None, *, allow_dirty: bool,
              disk_usage: DiskUsage = shutil.disk_usage) -> Preflight:
    git = Git(env, config.project_dir)
    pf = Preflight(ref or "HEAD")
    if not git.is_repo():
        pf.fail("git repository", git.not_a_repo("deploy switches code by git ref"))
        return pf
    pf.passed("git repository", str(config.project_dir))
    try:
        pf.commit = git.resolve(pf.ref)
        pf.passed("ref", f"{pf.ref} is {pf.commit[:12]}")
    except NotFoundError as exc:
        pf.fail("ref", exc)
        return pf
    tree = git.state(config.own_paths)
    pf.head, pf.dirty = tree.commit, tree.dirty
    if tree.dirty and not allow_dirty:
        changed = (len(tree.diff.splitlines()) and "tracked changes") or "changes"
        files = ", ".join(tree.untracked[:3])
        pf.fail("clean tree", UsageError(
            f"the deployment repository has uncommitted {changed}"
            + (f" (untracked: {files})" if files else ""),
            fix="commit or stash them, or pass --allow-dirty (they are then saved as a patch "
                "and a git stash before the switch)"))
    else:
        pf.passed("clean tree", "dirty, allowed: saved before the switch" if tree.dirty
                  else "no uncommitted changes")
    problem = check_compose_at(env, config, platform, pf.commit)
    if problem:
        pf.fail("compose config", UsageError(
            f"the compose configuration at {pf.ref} is invalid: {problem}",
            fix="fix it in the repository and deploy the fixed commit"))
    else:
        pf.passed("compose config", f"valid at {pf.commit[:12]}")
    pending = store.unfinished_operations()
    if pending:
        pf.fail("no interrupted operation", refusal(pending[-1]))
    else:
        pf.passed("no interrupted operation", "none")
    running = platform.running_images()
    pf.running = running
    if not running:
        pf.fail("previous release", UsageError(
            "nothing of the stack runs: there would be no release to roll back to",
            fix="start it first (docker compose up -d --wait), then deploy"))
    else:
        gone = sorted(s for s, image in running.items() if platform.image(image) is None)
        if gone:
            pf.fail("previous release", NotFoundError(
                f"the running image of {', '.join(gone)} is no longer on this host: a rollback "
                "could not use it", fix="redeploy the current release first"))
        else:
            pf.passed("previous release", f"{len(running)} running services; their images are "
                                          "retained under backout's tags before the switch")
    if config.databases:
        room = checkpoint_room(config, store, disk_usage)
        pf.checkpoint_estimate = room.need
        if room.ok:
            pf.passed("disk room", room.detail())
        else:
            pf.fail("disk room", room.error(config.deploy.disk_margin))
    return pf


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
