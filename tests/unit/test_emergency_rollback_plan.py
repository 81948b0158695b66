"""``backout rollback emergency TARGET [--with-data]``: what a target resolves to (a
release in any spelling, a checkpoint, a backup set, a commit or tag), every refusal
with its message and fix, the plan (steps, order, flags, params, summary, downtime,
the data part before the code), and the plan run by the real executor on a real git
repository against an in-process platform. No Docker."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest

from backout import switch as switching
from backout.backup.operation import plan_backup
from backout.config import Config
from backout.config.load import parse_document
from backout.config.model import VerifyConfig
from backout.environment import Environment
from backout.errors import ExitCode, NotFoundError, UnhealthyError, UsageError
from backout.operations import executor as executor_module
from backout.operations import interrupt
from backout.operations.executor import Executor
from backout.operations.plan import Plan, Step
from backout.rollback import db as db_rollback
from backout.rollback import emergency
from backout.state import Store
from backout.storage import repositories
from backout.verify import EXPECTED_IMAGES
from tests.support.fakes import (
    FakeEngine,
    FakePlatform,
    FakeRepository,
    install_engine,
    install_repository,
    run_context,
)
from tests.support.switchfake import Box, SwitchFakePlatform
from tests.unit.test_engine_orchestration import CONFIG as ENGINE_CONFIG

OLD, NEW, OLDW = ("sha256:" + c * 64 for c in "abc")
NOT_HERE = "f" * 40  # a commit no repository of these tests has


def git(tmp: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tmp), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


class Repository:
    """A git repository with two commits: c1 tagged v1, c2 = HEAD on main. Made once per
    test module; each test works in a copy (git is the slow part of these tests)."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        git(tmp, "init", "-q", "-b", "main")
        (tmp / ".gitignore").write_text(".backout/\nbackups/\nbackout.toml\n")
        (tmp / "compose.yaml").write_text("services: {web: {image: web:1}}\n")
        git(tmp, "add", "-A")
        git(tmp, "commit", "-qm", "one")
        git(tmp, "tag", "v1")
        self.c1 = git(tmp, "rev-parse", "HEAD")
        (tmp / "compose.yaml").write_text("services: {web: {image: web:2}}\n")
        git(tmp, "commit", "-qam", "two")
        self.c2 = git(tmp, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return Repository(tmp_path_factory.mktemp("repository"))


class Project:
    """A copy of the repository, a store with a release of each commit, and a stack
    running release 2."""

    def __init__(self, tmp: Path, repository: Repository, config_text: str = "") -> None:
        shutil.copytree(repository.dir, tmp, dirs_exist_ok=True)
        self.dir = tmp
        self.c1, self.c2 = repository.c1, repository.c2
        base = parse_document("backout.toml", config_text, tmp)
        self.config = Config(path=base.path, project_dir=tmp, services=base.services,
                             databases=base.databases, repositories=base.repositories,
                             verify=VerifyConfig(settle_seconds=0))
        self.store = Store(self.config.state_dir)
        self.release(self.c1, web=OLD, worker=OLDW)
        self.release(self.c2, web=NEW, worker=NEW)
        self.platform = FakePlatform(
            tmp, running={"web": NEW, "worker": NEW},
            images={"web:latest": NEW, "worker:latest": NEW, "web:v1": OLD, "worker:v1": OLDW},
            definition={"name": "shop", "services": {"web": {"image": "web:latest"},
                                                     "worker": {"image": "worker:latest"}}})

    def release(self, commit: str | None, **images: str) -> int:
        return self.store.add_release(git_commit=commit, git_dirty=False, diff_path=None,
                                      compose_config={},
                                      services={s: {"image_id": i} for s, i in images.items()})

    def resolve(self, target: str, with_data: bool = False) -> dict[str, Any]:
        return emergency.resolve(Environment(), self.config, self.store, self.platform, target,
                                 with_data)

    def plan(self, target: str, with_data: bool = False, platform: Any = None) -> Plan:
        return emergency.plan(Environment(), self.config, self.store,
                              platform or self.platform, target, with_data)


@pytest.fixture(autouse=True)
def _fresh_interrupt() -> None:
    """Another test's Ctrl-C must not reach this one's executor."""
    interrupt.reset()


@pytest.fixture
def project(tmp_path: Path, repository: Repository) -> Project:
    return Project(tmp_path, repository)


# ------------------------------------------------------------------------------- resolve


@pytest.mark.parametrize("target", ["1", "r1", "release:1"])
def test_a_release_resolves_to_its_commit_and_retained_images(project: Project,
                                                              target: str) -> None:
    assert project.resolve(target) == {
        "commit": project.c1, "release_id": 1, "checkpoint_id": None, "set_id": None,
        "images": {"web": OLD, "worker": OLDW}, "rebuild": []}


@pytest.mark.parametrize("by", ["tag", "sha", "short"])
def test_a_commit_or_tag_finds_the_newest_release_of_that_commit(project: Project,
                                                                 by: str) -> None:
    project.release(project.c1, web=OLDW)  # release 3: the same commit, later
    target = {"tag": "v1", "sha": project.c1, "short": project.c1[:9]}[by]
    assert project.resolve(target) == {
        "commit": project.c1, "release_id": 3, "checkpoint_id": None, "set_id": None,
        "images": {"web": OLDW}, "rebuild": []}


def test_a_commit_no_release_ran_uses_the_compose_files_images(project: Project) -> None:
    git(project.dir, "commit", "-q", "--allow-empty", "-m", "three")
    c3 = git(project.dir, "rev-parse", "HEAD")
    assert project.resolve("HEAD") == {"commit": c3, "release_id": None,
                                       "checkpoint_id": None, "set_id": None, "images": {},
                                       "rebuild": []}


def test_an_image_that_is_gone_is_rebuilt_from_the_commit(project: Project) -> None:
    del project.platform.images["web:v1"]
    t = project.resolve("r1")
    assert (t["images"], t["rebuild"]) == ({"worker": OLDW}, ["web"])


def test_a_release_whose_commit_is_gone_is_refused(project: Project) -> None:
    project.release(NOT_HERE, web=OLD)
    with pytest.raises(NotFoundError) as err:
        project.resolve("r3")
    assert err.value.message == "commit ffffffffffff of r3 is not in the repository"
    assert err.value.fix == "fetch it (git fetch) or pick another target"
    del project.platform.images["web:v1"]  # and nothing to rebuild the image from
    with pytest.raises(NotFoundError) as err:
        project.resolve("r3")
    assert err.value.message == ("the images of web for r3 are gone and so is commit "
                                 "ffffffffffff: nothing to rebuild them from")
    assert err.value.fix == "pick another target (`backout releases`)"
    project.release(NOT_HERE, web=OLD, worker=NEW, api="sha256:" + "e" * 64)  # release 4
    with pytest.raises(NotFoundError, match="the images of api, web for r4 are gone"):
        project.resolve("r4")


def test_a_release_recorded_without_a_commit_is_refused(project: Project) -> None:
    project.release(None, web=OLD)
    with pytest.raises(UsageError) as err:
        project.resolve("3")
    assert err.value.message == "release 3 has no git commit recorded"
    assert err.value.exit_code == ExitCode.USAGE


def test_a_release_number_that_does_not_exist_is_not_taken_for_a_commit(
        project: Project) -> None:
    with pytest.raises(NotFoundError) as err:
        project.resolve("r9")
    assert err.value.message == "no release 9"
    with pytest.raises(NotFoundError) as err:
        project.resolve("9")
    assert err.value.message == "no release 9"
    # ... unless the repository knows it as a commit (a tag named 9)
    git(project.dir, "tag", "9", project.c2)
    t = project.resolve("9")
    assert (t["commit"], t["release_id"]) == (project.c2, 2)


def test_a_target_that_is_nothing_says_where_to_look(project: Project) -> None:
    with pytest.raises(NotFoundError) as err:
        project.resolve("v7")
    assert err.value.message.startswith('no commit or tag "v7"')
    assert err.value.exit_code == ExitCode.NOT_FOUND


def test_outside_git_it_says_so_before_looking_at_the_target(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    store = Store(config.state_dir)
    with pytest.raises(UsageError) as err:
        emergency.resolve(Environment(), config, store, FakePlatform(tmp_path), "cp1", False)
    assert "is not a git repository: an emergency rollback switches the code to the " \
           "target's commit" in err.value.message


@pytest.mark.parametrize("target", ["cp1", "checkpoint:1"])
def test_a_checkpoint_resolves_to_its_set_and_release(project: Project, target: str) -> None:
    project.store.add_checkpoint(release_id=1, label=None, set_id="20260101T000000Z-0001")
    for with_data in (False, True):  # the checkpoint named is the one restored
        assert project.resolve(target, with_data) == {
            "commit": project.c1, "release_id": 1, "checkpoint_id": 1,
            "set_id": "20260101T000000Z-0001", "images": {"web": OLD, "worker": OLDW},
            "rebuild": []}


def test_a_backup_set_id_resolves_to_its_checkpoint(project: Project) -> None:
    project.store.add_checkpoint(release_id=2, label=None, set_id="20260101T000000Z-0001")
    project.store.add_checkpoint(release_id=1, label=None, set_id="20260102T000000Z-0002")
    (project.config.backup_dir / "20260102T000000Z-0002").mkdir(parents=True)
    t = project.resolve("20260102T000000Z-0002")
    assert (t["checkpoint_id"], t["release_id"], t["commit"]) == (2, 1, project.c1)
    (project.config.backup_dir / "20260103T000000Z-0003").mkdir()
    with pytest.raises(NotFoundError) as err:
        project.resolve("20260103T000000Z-0003")  # a set no checkpoint recorded
    assert err.value.message == "no checkpoint 20260103T000000Z-0003"


def test_a_checkpoint_that_does_not_exist_says_where_to_look(project: Project) -> None:
    with pytest.raises(NotFoundError) as err:
        project.resolve("cp4")
    assert err.value.message == "no checkpoint cp4"
    assert err.value.fix == "list them with `backout backups list`"


def test_with_data_takes_the_releases_newest_checkpoint(project: Project) -> None:
    for release_id, set_id in ((1, "s-1"), (2, "s-2"), (1, "s-3"), (2, "s-4")):
        project.store.add_checkpoint(release_id=release_id, label=None, set_id=set_id)
    t = project.resolve("r1", with_data=True)
    assert (t["checkpoint_id"], t["set_id"]) == (3, "s-3")
    assert project.resolve("v1", with_data=True)["set_id"] == "s-3"
    assert project.resolve("r1")["checkpoint_id"] is None  # code only: no data named


def test_with_data_and_no_checkpoint_is_refused_with_the_fix(project: Project) -> None:
    project.store.add_checkpoint(release_id=2, label=None, set_id="s-2")  # another release's
    with pytest.raises(NotFoundError) as err:
        project.resolve("r1", with_data=True)
    assert err.value.message == "--with-data: no checkpoint was taken for r1"
    assert err.value.fix == "name a checkpoint (cpN) as TARGET, or roll back the code only"
    git(project.dir, "commit", "-q", "--allow-empty", "-m", "three")
    with pytest.raises(NotFoundError, match="no checkpoint was taken for HEAD"):
        project.resolve("HEAD", with_data=True)  # no release: no checkpoint of it


# ---------------------------------------------------------------------------------- plan


def test_the_code_only_plan(project: Project) -> None:
    plan = project.plan("r1")
    keys = [s.key for s in plan.steps]
    switched = switching.stack_steps(project.config, project.platform.stack)
    assert [s.key for s in switched][:1] == ["switch-start:web"]
    assert plan.steps == (
        Step("save uncommitted changes", "emergency.save_changes",
             "the tree is clean; nothing to save", {"target": "r1"}, key="save-changes"),
        Step(f"switch code to {project.c1[:12]}", "emergency.checkout",
             f"HEAD {project.c2[:12]} -> {project.c1[:12]} (detached: no branch is moved)",
             {"commit": project.c1}, key="checkout"),
        Step("put the target's images in place", "emergency.images",
             "re-tag the retained images of release 1; no rebuild or pull",
             {"images": {"web": OLD, "worker": OLDW}, "rebuild": []}, key="images"),
        *switched,
        Step("bring the stack up at the target", "emergency.up",
             "fake: the whole stack converged to the target's definition and waited for (no "
             "build, no pull); containers of services that changed are replaced", {},
             key="up"),
        Step("verify the stack", "emergency.verify",
             "the runbook's post-rollback checks (health, restarts, logs, databases, images)",
             {}, key="verify-stack"))
    assert keys.index("switch-abort:worker") < keys.index("up")
    assert [s.key for s in plan.steps if s.on_failure] == ["switch-abort:web",
                                                           "switch-abort:worker"]
    assert not any(s.always for s in plan.steps)
    assert plan.kind == "rollback.emergency"
    assert plan.params == {"target": "r1", "with_data": False, "commit": project.c1,
                           "release_id": 1, "checkpoint_id": None, "set_id": None,
                           "images": {"web": OLD, "worker": OLDW}, "rebuild": [],
                           "data_loss": []}
    assert plan.summary == "emergency rollback of the whole stack to release 1"
    # the downtime names the services the plan switches start-first
    assert plan.downtime == ("web, worker switch start-first (none expected); the other "
                             "services whose image changes are replaced one by one")


def test_a_dirty_tree_is_saved_first_and_a_commit_target_is_named(project: Project) -> None:
    (project.dir / "compose.yaml").write_text("services: {web: {image: web:hotfix}}\n")
    git(project.dir, "commit", "-q", "--allow-empty", "-m", "three")
    c3 = git(project.dir, "rev-parse", "HEAD")
    git(project.dir, "checkout", "-q", project.c2, "--", ".")  # nothing staged either way
    (project.dir / "compose.yaml").write_text("services: {web: {image: web:hotfix}}\n")
    plan = project.plan(c3[:10])
    assert plan.steps[0].reason == ("the operator's changes are kept as a patch under "
                                    ".backout/saved and a git stash (nothing is discarded)")
    assert plan.steps[0].params == {"target": c3[:10]}
    images = next(s for s in plan.steps if s.key == "images")
    assert images.reason == "use the images the compose files name at the target"
    assert images.params == {"images": {}, "rebuild": []}
    assert plan.summary == f"emergency rollback of the whole stack to commit {c3[:12]}"


def test_images_to_rebuild_are_named_in_the_plan(project: Project) -> None:
    del project.platform.images["web:v1"]
    del project.platform.images["worker:v1"]
    images = next(s for s in project.plan("r1").steps if s.key == "images")
    assert images.reason == ("re-tag the retained images of release 1; no rebuild or pull; "
                             "build web, worker (the target's images are gone)")
    assert images.params == {"images": {}, "rebuild": ["web", "worker"]}


def test_a_platform_that_switches_itself_gets_no_beside_steps(project: Project) -> None:
    project.platform.switches_itself = True
    assert [s.key for s in project.plan("r1").steps] == [
        "save-changes", "checkout", "images", "up", "verify-stack"]


def test_what_compose_must_do_is_not_switched_start_first(project: Project) -> None:
    project.platform.stack["services"]["web"]["ports"] = [{"target": 80, "published": "80"}]
    keys = [s.key for s in project.plan("r1").steps]
    assert not any(k.endswith(":web") for k in keys)
    assert "switch-start:worker" in keys


def test_a_checkpoint_target_without_data_plans_no_restore(project: Project) -> None:
    project.store.add_checkpoint(release_id=1, label=None, set_id="s-1")
    plan = project.plan("cp1")
    assert [s.key for s in plan.steps if ":" not in s.key] == [
        "save-changes", "checkout", "images", "up", "verify-stack"]
    assert plan.params["checkpoint_id"] == 1 and plan.params["data_loss"] == []
    assert plan.summary == "emergency rollback of the whole stack to release 1"


# ------------------------------------------------------------------------ plan with data

# the databases and writers of the engine tests, plus one writer of the cache only
DATA_CONFIG = ENGINE_CONFIG + """
[services.cron]
writes_to = ["cache"]
"""


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    return install_engine(monkeypatch, FakeEngine())


def with_a_checkpoint(project: Project, which: list[str]) -> str:
    """A real backup set of ``which`` (FakeEngine dumps) as checkpoint 1 of release 1."""
    backup = plan_backup(project.config, which=which, quiesce=False, checkpoint=False,
                         label=None)
    ex = Executor(project.store, run_context(project.store, project.config, project.platform))
    assert ex.run(backup, ex.start(backup)).status == "succeeded"
    set_id: str = backup.params["set_id"]
    project.store.add_checkpoint(release_id=1, label=None, set_id=set_id)
    return set_id


def data_project(tmp: Path, repository: Repository) -> Project:
    project = Project(tmp, repository, DATA_CONFIG)
    project.platform = FakePlatform(
        tmp, running={"web": NEW, "worker": NEW, "cron": NEW, "api": NEW, "db": "sha256:d",
                      "redis": "sha256:r"},
        images={"web:v1": OLD, "worker:v1": OLDW},
        definition={"name": "shop", "services": {
            s: {"image": f"{s}:latest"} for s in ("web", "worker", "cron", "api", "db",
                                                  "redis")}})
    return project


def test_the_data_comes_back_first_while_the_code_is_untouched(
        tmp_path: Path, repository: Repository, engine: FakeEngine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project = data_project(tmp_path, repository)
    set_id = with_a_checkpoint(project, ["app"])  # the set holds app only, not cache
    engine.calls.clear()
    monkeypatch.setattr(emergency.sets, "new_set_id", lambda: "SAFE")
    plan = project.plan("cp1", with_data=True)
    targets = {"app": db_rollback.resolve_backup(Environment(), project.config, project.store,
                                                 project.config.databases["app"], set_id)}
    head, undo = db_rollback.data_steps(project.config, targets, {"app": "SAFE-app"})
    switched = switching.stack_steps(project.config, project.platform.stack,
                                     exclude=["web", "worker"])
    assert [s.key for s in switched] == [f"switch-{k}:{s}" for s in ("api", "cron")
                                         for k in ("start", "ready", "proxies", "drain", "abort")]
    assert plan.steps[1:] == (*head, *undo, *plan.steps[1 + len(head) + len(undo):])
    assert [s.key for s in plan.steps] == [
        "save-changes", "verify:app", "stop-writers", "safety:app", "restore:app", "undo:app",
        "checkout", "images", *(s.key for s in switched), "up", "start-writers",
        "verify-stack"]
    start = next(s for s in plan.steps if s.key == "start-writers")
    assert start == db_rollback.start_step(["web", "worker"]) and start.always
    assert next(s for s in plan.steps if s.key == "stop-writers").params == {
        "services": ["web", "worker"]}  # cron writes only to cache: it keeps running
    assert plan.summary == ("emergency rollback of the whole stack to release 1 with the "
                            "data of checkpoint 1")
    assert plan.downtime == (
        "api, cron switch start-first (none expected); the other services whose image "
        "changes are replaced one by one; "
        + db_rollback.downtime(project.config, ["app"], targets))
    assert "web, worker stopped from before the safety backup" in plan.downtime
    # the data-loss window of the restore, asked of the engine at plan time
    assert engine.calls == [("data_loss", "app")]
    [loss] = plan.params["data_loss"]
    assert (loss["database"], loss["changes"]) == ("app", 0)
    assert loss["taken_at"] == targets["app"]["taken_at"] is not None
    assert plan.params["with_data"] is True and plan.params["set_id"] == set_id


def test_a_set_without_any_configured_database_restores_nothing(
        tmp_path: Path, repository: Repository, engine: FakeEngine) -> None:
    project = data_project(tmp_path, repository)
    with_a_checkpoint(project, ["app"])
    del project.config.databases["app"]  # the set's only database is no longer configured
    plan = project.plan("cp1", with_data=True)
    assert not any(s.action.startswith("rollback.db") or s.key.endswith("-writers")
                   for s in plan.steps)
    assert plan.params["data_loss"] == [] and engine.calls == [("dump", "app")]
    assert plan.summary == "emergency rollback of the whole stack to release 1"
    assert plan.downtime.endswith("replaced one by one")


def test_with_data_a_release_target_restores_its_newest_checkpoint(
        tmp_path: Path, repository: Repository, engine: FakeEngine) -> None:
    project = data_project(tmp_path, repository)
    set_id = with_a_checkpoint(project, ["app"])
    plan = project.plan("r1", with_data=True)
    assert (plan.params["checkpoint_id"], plan.params["set_id"]) == (1, set_id)
    assert [s.key for s in plan.steps][1:6] == ["verify:app", "stop-writers", "safety:app",
                                                "restore:app", "undo:app"]
    assert plan.summary.endswith("release 1 with the data of checkpoint 1")


class RecordingEngine(FakeEngine):
    """Remembers through what the data-loss window reached the database."""

    def __init__(self) -> None:
        super().__init__()
        self.reached: list[tuple[Any, Any, Any]] = []

    def data_loss(self, access: Any, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        self.reached.append((access.env, access.config, access.platform))
        return super().data_loss(access, section, current)


def test_the_data_loss_window_reads_the_live_database_through_the_platform(
        tmp_path: Path, repository: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = install_engine(monkeypatch, RecordingEngine())
    project = data_project(tmp_path, repository)
    with_a_checkpoint(project, ["app"])
    env = Environment()
    emergency.plan(env, project.config, project.store, project.platform, "cp1", True)
    assert engine.reached == [(env, project.config, project.platform)]


def test_with_data_from_a_set_only_in_a_repository_fetches_it_first(
        tmp_path: Path, repository: Repository, engine: FakeEngine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    repo = install_repository(monkeypatch, tmp_path / "repositories")
    project = Project(tmp_path / "p", repository, DATA_CONFIG + """
[repositories.offsite]
url = "offsite"
password_env = "REPO_PASSWORD"
""")
    project.config.secrets["repository:offsite"] = "pw"
    set_id = with_a_checkpoint(project, ["app"])
    assert ("offsite", "put", set_id) in repo.calls
    shutil.rmtree(project.config.backup_dir / set_id)  # the local set is gone
    repo.calls.clear()
    monkeypatch.setitem(repositories.REPOSITORIES, "restic", f"{__name__}:EnvRepository")
    monkeypatch.setattr(EnvRepository, "envs", [])
    env = Environment()
    for target in ("cp1", set_id):
        plan = emergency.plan(env, project.config, project.store, project.platform, target,
                              True)
        assert [s.key for s in plan.steps][:3] == ["save-changes", f"fetch:{set_id}",
                                                   "verify:app"]
        assert plan.params["checkpoint_id"] == 1
    assert {(m, s) for _r, m, s in repo.calls} == {("read_file", set_id)}
    # restic runs with the operation's environment (its timeouts, the redactor)
    assert EnvRepository.envs and all(e is env for e in EnvRepository.envs)


class EnvRepository(FakeRepository):
    envs: ClassVar[list[Environment]] = []

    def __init__(self, env: Environment, repo: Any, password: str) -> None:
        EnvRepository.envs.append(env)
        super().__init__(env, repo, password)


# ------------------------------------------------------------------------ the plan, run


class StackPlatform(SwitchFakePlatform):
    """Converging the stack also recreates the containers of the switch fake."""

    def converge(self, *, pull: bool) -> None:
        super().converge(pull=pull)
        for svc, image_id in self.container_image.items():
            if [b.image_id for b in self.of(svc)] != [image_id]:
                self.boxes = [b for b in self.boxes if b.service != svc]
                self.boxes.append(Box(f"c-{svc}-9", svc, image_id))


def test_an_emergency_rollback_saves_switches_code_and_images_and_verifies(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switching, "POLL", 0.0)
    (project.dir / "compose.yaml").write_text("services: {web: {image: web:hotfix}}\n")
    (project.dir / "notes.txt").write_text("untracked\n")
    platform = StackPlatform(project.dir, running={"web": NEW, "worker": NEW},
                             images=project.platform.images, definition=project.platform.stack)
    plan = project.plan("r1", platform=platform)
    outcome = Executor(project.store, run_context(project.store, project.config, platform)
                       ).run(plan, Executor(project.store, run_context(
                           project.store, project.config, platform)).start(plan))
    assert outcome.status == "succeeded", outcome.error
    saved = outcome.results["save-changes"]
    assert saved["saved"] is True and saved["untracked"] == ["notes.txt"]
    assert saved["patch"].startswith(".backout/saved/op1-") and saved["patch"].endswith(".patch")
    assert "web:hotfix" in (project.dir / saved["patch"]).read_text()
    assert git(project.dir, "rev-parse", "refs/stash") == saved["stash"]
    assert not (project.dir / "notes.txt").exists()  # stashed, not lost
    # the code: detached at the target, the branch where it was
    assert git(project.dir, "rev-parse", "HEAD") == project.c1
    assert git(project.dir, "rev-parse", "main") == project.c2
    # the images: the release's, under the names the compose files use
    assert [c[1:] for c in platform.calls if c[0] == "tag"] == [
        (OLD, "web:latest"), (OLDW, "worker:latest")]
    assert outcome.results["images"] == {"tagged": {"web": "web:latest",
                                                    "worker": "worker:latest"}, "built": []}
    assert platform.running_images() == {"web": OLD, "worker": OLDW}
    assert project.store.fact(EXPECTED_IMAGES) == {"web": OLD, "worker": OLDW}
    assert outcome.results["verify-stack"]["ok"] is True


def run_setup(project: Project, monkeypatch: pytest.MonkeyPatch) -> tuple[StackPlatform, Plan]:
    monkeypatch.setattr(switching, "POLL", 0.0)
    (project.dir / "compose.yaml").write_text("services: {web: {image: web:hotfix}}\n")
    platform = StackPlatform(project.dir, running={"web": NEW, "worker": NEW},
                             images=project.platform.images, definition=project.platform.stack)
    return platform, project.plan("r1", platform=platform)


def executor(project: Project, platform: StackPlatform) -> Executor:
    return Executor(project.store, run_context(project.store, project.config, platform))


def assert_rolled_back(project: Project, platform: StackPlatform) -> None:
    assert git(project.dir, "rev-parse", "HEAD") == project.c1
    assert git(project.dir, "rev-parse", "main") == project.c2
    assert [(b.service, b.image_id, b.state) for b in platform.boxes] == [
        ("web", OLD, "running"), ("worker", OLDW, "running")]
    assert project.store.fact(EXPECTED_IMAGES) == {"web": OLD, "worker": OLDW}
    # the operator's change is kept exactly once
    assert len(git(project.dir, "stash", "list").splitlines()) == 1
    assert len(list((project.config.state_dir / "saved").iterdir())) == 1


class Crash(BaseException):
    """What SIGKILL does to the executor: it stops where it is, the journal as it was."""


@pytest.mark.parametrize(("key", "when"), [
    ("save-changes", "started"), ("save-changes", "done"),
    ("checkout", "done"), ("images", "started"), ("switch-start:web", "done"),
    ("switch-drain:worker", "started"), ("up", "done"), ("verify-stack", "started")])
def test_a_crash_at_a_step_then_resume_ends_rolled_back(
        project: Project, monkeypatch: pytest.MonkeyPatch, key: str, when: str) -> None:
    platform, plan = run_setup(project, monkeypatch)
    point = f"step-{[s.key for s in plan.steps].index(key)}-{when}"

    def hit(name: str) -> None:
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(executor_module.faults, "hit", hit)
    ex = executor(project, platform)
    op_id = ex.start(plan)
    with pytest.raises(Crash):
        ex.run(plan, op_id)
    monkeypatch.setattr(executor_module.faults, "hit", lambda _name: None)
    resumed = executor(project, platform).run(plan, op_id)
    assert resumed.status == "succeeded", resumed.error
    assert_rolled_back(project, platform)


def test_a_stack_that_does_not_come_up_fails_before_anything_is_recorded(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    platform, plan = run_setup(project, monkeypatch)
    platform.fail_on("converge", UnhealthyError("container worker is unhealthy"))
    ex = executor(project, platform)
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "failed" and outcome.failed_step == "bring the stack up at the target"
    assert outcome.error is not None and outcome.error.exit_code == ExitCode.UNHEALTHY
    assert outcome.error.message == ("the stack did not become healthy at the target: "
                                     "container worker is unhealthy")
    assert outcome.error.fix is not None and "backout verify" in outcome.error.fix
    assert [r.status for r in outcome.steps][-1] == "skipped"  # no verify of a failed stack
    assert project.store.fact(EXPECTED_IMAGES) is None
    # the code stays switched: the operator fixes forward from the target (or resumes)
    assert git(project.dir, "rev-parse", "HEAD") == project.c1


def test_an_image_nothing_can_make_fails_the_images_step(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    platform, plan = run_setup(project, monkeypatch)
    platform.stack["services"]["cron"] = {"image": "cron:1"}  # at the target; no build section
    ex = executor(project, platform)
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.failed_step == "put the target's images in place"
    assert isinstance(outcome.error, NotFoundError)
    assert outcome.error.message == ("no image for cron at the target and no build section "
                                     "to make one")
    assert platform.called("build") == [] and platform.called("converge") == []
    platform.stack["services"]["cron"] = {"image": "cron:1", "build": "./cron"}
    ex = executor(project, platform)
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded", outcome.error
    assert platform.called("build") == [(("cron",),)]
    assert outcome.results["images"]["built"] == ["cron"]
