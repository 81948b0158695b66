"""The deploy's preflight on a real git repository (tmp_path), a real store and a
fake platform: which checks it records, in what order, with which facts, which one
becomes the error (and its class, hence the exit code), and what it does not do
once a check makes the rest meaningless."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from backout import proc
from backout.config.model import Config, DatabaseConfig, DeployConfig
from backout.deploy.preflight import (
    Check,
    Preflight,
    Room,
    check_compose_at,
    checkpoint_room,
    existing_parent,
    last_checkpoint_bytes,
    preflight,
)
from backout.environment import Environment
from backout.errors import NotFoundError, UsageError
from backout.state import Store
from backout.storage.sets import SetWriter
from tests.support.fakes import FakePlatform
from tests.support.gitrepo import commit, environment, new_repo, sh

MiB = 2**20
Usage = namedtuple("Usage", "total used free")


class Platform(FakePlatform):
    """Records what the stack definition looked like in the directory it was asked
    to validate, and answers ``problem`` about it."""

    def __init__(self, project_dir: Path, problem: str | None = None, **kw: Any) -> None:
        super().__init__(project_dir, **kw)
        self.problem = problem
        self.seen: list[tuple[Path, dict[str, str]]] = []

    def definition_problem(self, directory: Path) -> str | None:
        self._call("definition_problem", directory)
        self.seen.append((directory, {p.relative_to(directory).as_posix(): p.read_text()
                                      for p in directory.rglob("*") if p.is_file()}))
        return self.problem


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = new_repo(tmp_path / "project", {"compose.yaml": "services: {web: {image: web:1}}\n"})
    sh(r, "tag", "v1")
    commit(r, {"compose.yaml": "services: {web: {image: web:2}}\n", "app.txt": "two\n"})
    return r


def _config(project: Path, *, databases: bool = False, margin: float = 1.5) -> Config:
    return Config(path=project / "backout.toml", project_dir=project,
                  databases={"main": DatabaseConfig("main", "mysql", "db")} if databases else {},
                  deploy=DeployConfig(disk_margin=margin))


def _run(repo: Path, *, ref: str | None = None, allow_dirty: bool = False,
         platform: Platform | None = None, config: Config | None = None,
         free: int = 10**12, store: Store | None = None,
         usage_calls: list[Path] | None = None) -> Preflight:
    def usage(path: Path) -> Usage:
        if usage_calls is not None:
            usage_calls.append(path)
        return Usage(0, 0, free)

    platform = platform or Platform(repo, running={"web": "sha256:w"},
                                    images={"web:2": "sha256:w"})
    return preflight(environment(repo), config or _config(repo),
                     store or Store(repo / ".backout"), platform, ref,
                     allow_dirty=allow_dirty, disk_usage=usage)


def _names(pf: Preflight) -> list[tuple[str, bool]]:
    return [(c.name, c.ok) for c in pf.checks]


def _check(pf: Preflight, name: str) -> Check:
    return next(c for c in pf.checks if c.name == name)


def test_a_clean_repository_with_a_running_stack_passes_every_check(repo: Path) -> None:
    platform = Platform(repo, running={"web": "sha256:w", "db": "sha256:d"},
                        images={"web:2": "sha256:w", "db:1": "sha256:d"})
    pf = _run(repo, platform=platform)
    head = sh(repo, "rev-parse", "HEAD")
    assert pf.ok and pf.error is None
    assert _names(pf) == [("git repository", True), ("ref", True), ("clean tree", True),
                          ("compose config", True), ("no interrupted operation", True),
                          ("previous release", True)]
    assert [c.detail for c in pf.checks[:5]] == [
        str(repo), f"HEAD is {head[:12]}", "no uncommitted changes", f"valid at {head[:12]}",
        "none"]
    assert _check(pf, "previous release").detail == (
        "2 running services; their images are retained under backout's tags before the switch")
    assert (pf.ref, pf.commit, pf.head, pf.dirty) == ("HEAD", head, head, False)
    assert pf.running == {"web": "sha256:w", "db": "sha256:d"}
    assert pf.checkpoint_estimate is None
    # both running images were looked up on the host
    assert sorted(platform.called("image")) == [("sha256:d",), ("sha256:w",)]
    assert pf.to_json() == {
        "ref": "HEAD", "commit": head, "head": head, "dirty": False,
        "checkpoint_estimate_bytes": None,
        "checks": [{"name": c.name, "ok": True, "detail": c.detail} for c in pf.checks]}


def test_the_compose_files_are_validated_as_they_are_at_the_ref(repo: Path) -> None:
    (repo / "compose.yaml").write_text("broken: [\n")  # the work tree is not what is checked
    platform = Platform(repo, running={"web": "sha256:w"}, images={"web:2": "sha256:w"})
    pf = _run(repo, ref="v1", platform=platform, allow_dirty=True)
    v1 = sh(repo, "rev-parse", "v1")
    assert pf.commit == v1 and pf.head == sh(repo, "rev-parse", "HEAD") and pf.dirty
    assert _check(pf, "ref").detail == f"v1 is {v1[:12]}"
    assert _check(pf, "compose config").detail == f"valid at {v1[:12]}"
    [(directory, files)] = platform.seen
    assert files == {"compose.yaml": "services: {web: {image: web:1}}\n"}
    assert directory.name == "tree" and directory.parent.name.startswith("backout-preflight-")
    assert not directory.parent.exists()  # the scratch directory is gone afterwards


def test_an_invalid_definition_at_the_ref_is_a_usage_error_naming_the_problem(repo: Path) -> None:
    platform = Platform(repo, problem="services.web.image must be a string",
                        running={"web": "sha256:w"}, images={"web:2": "sha256:w"})
    pf = _run(repo, ref="v1", platform=platform)
    assert not pf.ok and isinstance(pf.error, UsageError)
    assert pf.error.message == ("the compose configuration at v1 is invalid: "
                                "services.web.image must be a string")
    assert pf.error.fix == "fix it in the repository and deploy the fixed commit"
    assert _check(pf, "compose config") == Check("compose config", False, pf.error.message)
    # the other checks still ran, so --dry-run shows them all
    assert _names(pf)[-2:] == [("no interrupted operation", True), ("previous release", True)]


def _failing(tool: str, calls: list[tuple[list[str], dict[str, Any]]]) -> Any:
    real = proc.run

    def run(env: Environment, argv: list[str], **kw: Any) -> proc.Result:
        calls.append((list(argv), kw))
        if argv[0] == tool:
            return proc.Result(tuple(argv), 1, "", "failed", 0.0)
        return real(env, argv, **kw)
    return run


@pytest.mark.parametrize("tool", ["git", "tar"])
def test_a_commit_that_cannot_be_exported_fails_the_compose_check(
        repo: Path, tool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []
    platform = Platform(repo, running={"web": "sha256:w"}, images={"web:2": "sha256:w"})
    pf = _run(repo, platform=platform)  # resolve the commit with the real git first
    monkeypatch.setattr(proc, "run", _failing(tool, calls))
    problem = check_compose_at(environment(repo),
                                                _config(repo), platform, pf.commit)
    assert problem == f"could not export the files of {pf.commit[:12]}"
    assert len(platform.called("definition_problem")) == 1  # only the first run's
    archive = calls[0]
    assert archive[0][:6] == ["git", "-C", str(repo), "archive", "--format=tar", "-o"]
    assert archive[0][-1] == pf.commit and archive[0][6].endswith("tree.tar")
    assert archive[1]["check"] is False and archive[1]["timeout"] == 120
    assert archive[1]["what"] == "git archive"  # what a timeout's error names
    if tool == "tar":
        extract = calls[1]
        assert extract[0][:3] == ["tar", "-xf", archive[0][6]]
        assert extract[0][3] == "-C" and extract[0][4].endswith("/tree")
        assert extract[1]["check"] is False and extract[1]["timeout"] == 120
        assert extract[1]["what"] == "tar"
    else:
        assert len(calls) == 1  # nothing to extract


def test_outside_a_git_repository_only_that_check_is_recorded(tmp_path: Path) -> None:
    project = tmp_path / "plain"
    project.mkdir()
    platform = Platform(project, running={"web": "sha256:w"})
    pf = _run(project, platform=platform, ref="v1")
    assert _names(pf) == [("git repository", False)]
    assert isinstance(pf.error, UsageError)
    assert pf.error.message == f"{project} is not a git repository: deploy switches code by git ref"
    assert pf.commit == "" and pf.head is None and platform.calls == []


def test_an_unknown_ref_is_not_found_and_stops_there(repo: Path) -> None:
    platform = Platform(repo, running={"web": "sha256:w"})
    pf = _run(repo, ref="v9", platform=platform)
    assert _names(pf) == [("git repository", True), ("ref", False)]
    assert isinstance(pf.error, NotFoundError) and '"v9"' in pf.error.message
    assert pf.checks[1].detail == pf.error.message
    assert platform.calls == []  # neither the definition nor the stack was looked at


def test_tracked_changes_refuse_the_deploy_but_the_other_checks_still_run(repo: Path) -> None:
    (repo / "app.txt").write_text("edited\n")
    pf = _run(repo)
    assert isinstance(pf.error, UsageError)
    assert pf.error.message == "the deployment repository has uncommitted tracked changes"
    assert pf.error.fix == ("commit or stash them, or pass --allow-dirty (they are then saved as "
                            "a patch and a git stash before the switch)")
    assert pf.dirty and pf.head == sh(repo, "rev-parse", "HEAD")
    assert _names(pf) == [("git repository", True), ("ref", True), ("clean tree", False),
                          ("compose config", True), ("no interrupted operation", True),
                          ("previous release", True)]


def test_untracked_files_are_named_three_at_most(repo: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (repo / name).write_text("new\n")
    pf = _run(repo)
    assert isinstance(pf.error, UsageError)
    assert pf.error.message == ("the deployment repository has uncommitted changes "
                                "(untracked: a.txt, b.txt, c.txt)")


def test_tracked_and_untracked_changes_together(repo: Path) -> None:
    (repo / "app.txt").write_text("edited\n")
    (repo / "new.txt").write_text("new\n")
    pf = _run(repo)
    assert pf.error is not None and pf.error.message == (
        "the deployment repository has uncommitted tracked changes (untracked: new.txt)")


def test_backouts_own_files_do_not_make_the_tree_dirty(repo: Path) -> None:
    (repo / "backout.toml").write_text("[project]\n")  # the config file, untracked
    (repo / ".backout").mkdir(exist_ok=True)
    (repo / ".backout" / "x").write_text("state\n")
    pf = _run(repo)
    assert pf.ok and not pf.dirty


def test_allow_dirty_passes_and_says_the_changes_are_saved(repo: Path) -> None:
    (repo / "app.txt").write_text("edited\n")
    pf = _run(repo, allow_dirty=True)
    assert pf.ok and pf.dirty
    assert _check(pf, "clean tree") == Check("clean tree", True,
                                             "dirty, allowed: saved before the switch")


def test_an_unfinished_operation_is_refused_with_resume_as_the_fix(repo: Path) -> None:
    store = Store(repo / ".backout")
    store.create_operation("backup", {}, {}, [("dump", "dump main", "")])
    store.create_operation("rollback.db", {}, {}, [("x", "x", "")])
    op = store.create_operation("deploy", {}, {}, [("x", "x", "")])  # the newest is named
    pf = _run(repo, store=store)
    assert isinstance(pf.error, UsageError)
    assert pf.error.message.startswith(f"operation #{op} (deploy) was interrupted")
    assert "backout resume" in (pf.error.fix or "")
    assert _check(pf, "no interrupted operation").ok is False


def test_nothing_running_means_no_release_to_come_back_to(repo: Path) -> None:
    pf = _run(repo, platform=Platform(repo, running={}))
    assert isinstance(pf.error, UsageError)
    assert pf.error.message.startswith("nothing of the stack runs")
    assert pf.error.fix == "start it first (docker compose up -d --wait), then deploy"
    assert _names(pf)[-1] == ("previous release", False) and pf.running == {}


def test_running_images_gone_from_the_host_are_named(repo: Path) -> None:
    platform = Platform(repo, running={"web": "sha256:w", "worker": "sha256:k",
                                       "api": "sha256:a"},
                        images={"web:2": "sha256:w"})
    pf = _run(repo, platform=platform)
    assert isinstance(pf.error, NotFoundError)
    assert pf.error.message.startswith("the running image of api, worker is no longer on this "
                                       "host")
    assert pf.error.message.endswith("a rollback could not use it")
    assert pf.error.fix == "redeploy the current release first"
    assert _check(pf, "previous release").ok is False


def test_the_first_failing_check_is_the_error(repo: Path) -> None:
    (repo / "app.txt").write_text("edited\n")
    pf = _run(repo, platform=Platform(repo, problem="bad", running={}))
    assert [n for n, ok in _names(pf) if not ok] == ["clean tree", "compose config",
                                                     "previous release"]
    assert pf.error is not None and "uncommitted" in pf.error.message


# -- the room for the checkpoint ------------------------------------------------------

def _checkpoint(config: Config, store: Store, set_id: str, sizes: list[int],
                *, usable: bool = True) -> None:
    writer = SetWriter(config.backup_dir, set_id).open()
    artifacts = {}
    for i, size in enumerate(sizes):
        writer.path(f"a{i}.zst").write_bytes(b"x" * size)
        artifacts[f"a{i}.zst"] = {"bytes": size if usable else size + 1}
    writer.publish({"format": "backout-backup", "format_version": 1, "artifacts": artifacts})
    release = store.add_release(git_commit=None, git_dirty=False, diff_path=None,
                                compose_config={}, services={})
    store.add_checkpoint(release_id=release, label=None, set_id=set_id)


def test_no_earlier_checkpoint_no_estimate(repo: Path) -> None:
    config = _config(repo, databases=True)
    seen: list[Path] = []
    pf = _run(repo, config=config, free=700 * MiB + 5, usage_calls=seen)
    assert pf.ok and pf.checkpoint_estimate is None
    # the backup directory does not exist yet: its nearest existing parent is measured
    assert seen == [repo / ".backout"]
    assert _check(pf, "disk room").detail == (f"700 MiB free on {repo / '.backout'}; no "
                                              "earlier checkpoint to estimate from")


def test_room_is_the_last_checkpoint_times_the_margin(repo: Path) -> None:
    config = _config(repo, databases=True)
    store = Store(repo / ".backout")
    _checkpoint(config, store, "20260101T000000Z-aaaa", [MiB, MiB])
    seen: list[Path] = []
    pf = _run(repo, config=config, store=store, free=3 * MiB, usage_calls=seen)
    assert seen == [config.backup_dir]
    assert pf.ok and pf.checkpoint_estimate == 3 * MiB  # 2 MiB x 1.5, exactly the free space
    assert _check(pf, "disk room").detail == "3.0 MiB free, about 3.0 MiB needed"
    assert pf.to_json()["checkpoint_estimate_bytes"] == 3 * MiB


def test_too_little_room_is_a_refusal_with_the_numbers(repo: Path) -> None:
    config = _config(repo, databases=True, margin=2)
    store = Store(repo / ".backout")
    _checkpoint(config, store, "20260101T000000Z-aaaa", [MiB, MiB // 2])
    pf = _run(repo, config=config, store=store, free=3 * MiB - 1)
    assert isinstance(pf.error, UsageError)
    assert pf.error.message == (f"not enough room for a checkpoint on {config.backup_dir}: about "
                                "3.0 MiB needed (last checkpoint 1.5 MiB x 2), 3.0 MiB free")
    assert pf.error.fix == "free space (`backout backups prune`) or set [backups] dir elsewhere"
    assert _names(pf)[-1] == ("disk room", False) and pf.checkpoint_estimate == 3 * MiB


def test_without_databases_there_is_no_disk_check(repo: Path) -> None:
    seen: list[Path] = []
    pf = _run(repo, free=0, usage_calls=seen)
    assert pf.ok and seen == [] and "disk room" not in [c.name for c in pf.checks]


def test_the_estimate_comes_from_the_newest_usable_checkpoint(tmp_path: Path) -> None:
    config = _config(tmp_path, databases=True)
    store = Store(tmp_path / ".backout")
    assert last_checkpoint_bytes(config, store) is None
    _checkpoint(config, store, "20260101T000000Z-aaaa", [100, 20])
    _checkpoint(config, store, "20260102T000000Z-bbbb", [7])
    assert last_checkpoint_bytes(config, store) == 7
    _checkpoint(config, store, "20260103T000000Z-cccc", [9], usable=False)  # size mismatch
    assert last_checkpoint_bytes(config, store) == 7
    for n in range(3):  # only the newest five are looked at
        _checkpoint(config, store, f"2026020{n}T000000Z-dddd", [5], usable=False)
    assert last_checkpoint_bytes(config, store) == 7
    _checkpoint(config, store, "20260210T000000Z-eeee", [5], usable=False)
    assert last_checkpoint_bytes(config, store) is None


def test_a_checkpoint_whose_set_was_deleted_is_skipped(tmp_path: Path) -> None:
    config = _config(tmp_path, databases=True)
    store = Store(tmp_path / ".backout")
    _checkpoint(config, store, "20260101T000000Z-aaaa", [11])
    release = store.add_release(git_commit=None, git_dirty=False, diff_path=None,
                                compose_config={}, services={})
    store.add_checkpoint(release_id=release, label=None, set_id="20260102T000000Z-gone")
    assert last_checkpoint_bytes(config, store) == 11


def test_room_rounds_the_need_down_to_bytes(tmp_path: Path) -> None:
    config = _config(tmp_path, databases=True, margin=1.25)
    store = Store(tmp_path / ".backout")
    _checkpoint(config, store, "20260101T000000Z-aaaa", [3])
    room = checkpoint_room(config, store, lambda p: Usage(0, 0, 4))
    assert room == Room(config.backup_dir, 4, 3, 3) and room.ok  # 3 x 1.25 = 3.75 -> 3
    assert not Room(tmp_path, 4, 4, 5).ok and Room(tmp_path, 0, None, None).ok


def test_existing_parent(tmp_path: Path) -> None:
    assert existing_parent(tmp_path / "a" / "b" / "c") == tmp_path
    assert existing_parent(tmp_path) == tmp_path
    assert existing_parent(Path("/nonexistent-backout-dir/x")) == Path("/")


def test_a_preflight_keeps_its_first_error() -> None:
    pf = Preflight("v1")
    assert pf.ok
    pf.passed("a", "fine")
    first = UsageError("first")
    pf.fail("b", first)
    pf.fail("c", NotFoundError("second"))
    assert pf.error is first and not pf.ok
    assert [c.to_json() for c in pf.checks] == [
        {"name": "a", "ok": True, "detail": "fine"},
        {"name": "b", "ok": False, "detail": "first"},
        {"name": "c", "ok": False, "detail": "second"}]
