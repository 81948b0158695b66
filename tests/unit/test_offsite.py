"""Off-site copies through the Repository interface, in-process: a FakeRepository
stands in for restic, a FakeEngine for the database. Where the copy step sits in the
plans, what a failed copy leaves (pending, retried by the next run, the other
repositories unaffected, the local set untouched), the fetch before a restore from a
repository, retention per repository, the [repositories.*] config and the
classification of restic's messages. The real restic and SFTP are in
tests/integration/test_offsite.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backout.backup import offsite
from backout.backup.operation import plan_backup
from backout.config import Config
from backout.config.load import parse_document
from backout.environment import Environment
from backout.errors import ConfigError
from backout.operations.executor import Executor
from backout.operations.plan import Plan
from backout.state import Store
from backout.storage.repositories.base import (
    RepositoryError,
    RepositoryFullError,
    RepositoryLockedError,
    RepositoryPasswordError,
    RepositoryUnreachableError,
)
from backout.storage.repositories.restic import classify
from tests.support.fakes import (
    FakeEngine,
    FakePlatform,
    FakeRepository,
    install_engine,
    install_repository,
    run_context,
)

CONFIG = """
[databases.app]
type = "mysql"
service = "db"

[services.web]
writes_to = ["app"]

[repositories.offsite]
url = "offsite"
password_env = "REPO_PASSWORD"

[repositories.nas]
url = "nas"
password_file = "repo.pw"
"""


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    return install_engine(monkeypatch, FakeEngine())


@pytest.fixture
def repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeRepository]:
    return install_repository(monkeypatch, tmp_path / "repositories")


def _config(tmp_path: Path, extra: str = "") -> Config:
    config = parse_document("backout.toml", CONFIG + extra, tmp_path)
    object.__setattr__(config, "secrets", {"repository:offsite": "pw1", "repository:nas": "pw2"})
    return config


def _run(config: Config, plan: Plan) -> tuple[Any, Store]:
    store = Store(config.state_dir)
    ex = Executor(store, run_context(store, config=config, platform=FakePlatform(
        running={"web": "sha256:w", "db": "sha256:d"})))
    return ex.run(plan, ex.start(plan)), store


def _backup(config: Config) -> tuple[str, Any, Store]:
    plan = plan_backup(config, which=["app"], quiesce=False, checkpoint=False, label=None)
    outcome, store = _run(config, plan)
    return str(plan.params["set_id"]), outcome, store


def _copies(store: Store, set_id: str) -> dict[str, str]:
    return {name: c["status"] for name, c in store.set_copies().get(set_id, {}).items()}


# --------------------------------------------------------------------------- the copy step


def test_the_copy_is_the_last_step_after_publish_and_the_checkpoint_record(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["app"], quiesce=True, checkpoint=True, label=None)
    keys = [s.key for s in plan.steps]
    assert keys[-4:] == ["publish", "discard", "record-checkpoint", "copy"]
    copy = plan.steps[-1]
    assert copy.action == "backup.copy" and not copy.always
    assert copy.params == {"set_id": plan.params["set_id"], "repositories": ["offsite", "nas"],
                           "soft": False}
    no_repos = parse_document("backout.toml", CONFIG.split("[repositories")[0], tmp_path)
    assert "copy" not in [s.key for s in plan_backup(no_repos, which=["app"], quiesce=False,
                                                     checkpoint=True, label=None).steps]


def test_a_backup_is_copied_and_checked_in_every_repository(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    config = _config(tmp_path)
    set_id, outcome, store = _backup(config)
    assert outcome.status == "succeeded", outcome
    assert _copies(store, set_id) == {"offsite": "copied", "nas": "copied"}
    # put, then the copy's own check, per repository; then the repository's check
    assert repo.calls == [("offsite", "put", set_id), ("offsite", "check", set_id),
                          ("offsite", "check_repository", ""),
                          ("nas", "put", set_id), ("nas", "check", set_id),
                          ("nas", "check_repository", "")]
    assert outcome.results["copy"]["copied"] == {"offsite": [set_id], "nas": [set_id]}


def test_a_failed_copy_fails_the_step_leaves_the_set_usable_pending_and_the_next_run_retries(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    config = _config(tmp_path)
    repo.fail_on("offsite", "put", RepositoryUnreachableError("repository offsite: gone"))
    first, outcome, store = _backup(config)
    assert outcome.status == "failed" and outcome.failed_step == "copy to offsite, nas"
    assert outcome.error.code == "repository_unreachable"
    assert "published and usable locally" in outcome.error.message
    assert (config.backup_dir / first / "manifest.json").is_file()  # never touched
    # the other repository got its copy all the same
    assert _copies(store, first) == {"offsite": "pending", "nas": "copied"}
    assert store.set_copies()[first]["offsite"]["error"] == "repository offsite: gone"

    repo.failures.clear()
    repo.calls.clear()
    second, outcome, store = _backup(config)
    assert outcome.status == "succeeded"
    # the next run copies its own set and the pending one; nothing twice to nas
    assert [c for c in repo.calls if c[1] == "put"] == [
        ("offsite", "put", second), ("offsite", "put", first), ("nas", "put", second)]
    assert _copies(store, first) == {"offsite": "copied", "nas": "copied"}
    assert store.set_copies()[first]["offsite"]["attempts"] == 2


def test_a_failed_repository_check_makes_the_runs_copies_pending_again(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    config = _config(tmp_path)
    repo.fail_on("nas", "check_repository", RepositoryLockedError("repository nas: locked"))
    set_id, outcome, store = _backup(config)
    assert outcome.status == "failed" and outcome.error.code == "repository_locked"
    assert int(outcome.error.exit_code) == 4
    assert _copies(store, set_id) == {"offsite": "copied", "nas": "pending"}


def test_a_deploys_checkpoint_copy_is_soft(tmp_path: Path, engine: FakeEngine,
                                           repo: type[FakeRepository]) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["app"], quiesce=False, checkpoint=False, label=None,
                       copy_soft=True)
    repo.fail_on("offsite", "put", RepositoryFullError("repository offsite: full"))
    outcome, store = _run(config, plan)
    assert outcome.status == "succeeded"  # a repository outage does not stop a deploy
    assert _copies(store, str(plan.params["set_id"]))["offsite"] == "pending"
    assert outcome.results["copy"]["pending"]["offsite"] == [plan.params["set_id"]]


def test_a_set_whose_verification_failed_is_not_copied(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    config = _config(tmp_path)
    repo.fail_on("offsite", "put", RepositoryUnreachableError("gone"))
    set_id, _outcome, store = _backup(config)
    store.record_verification(set_id, ok=False, kind="checksum", detail="sha256 mismatch")
    repo.failures.clear()
    report = offsite.copy_sets(Environment(), config, store, [], ["offsite"])
    assert report.copied == {"offsite": []}
    assert ("offsite", "put", set_id) not in repo.calls[-3:]


# --------------------------------------------------------------------------- restore from a copy


def test_rollback_db_of_a_set_only_in_a_repository_fetches_it_first(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    import shutil

    from backout.rollback import db as db_rollback

    config = _config(tmp_path)
    set_id, _outcome, store = _backup(config)
    shutil.rmtree(config.backup_dir / set_id)  # the local set is gone
    engine.calls.clear()
    repo.calls.clear()
    platform = FakePlatform(running={"web": "sha256:w", "db": "sha256:d"})
    plan = db_rollback.plan(Environment(), config, store, "app", set_id, platform=platform)
    assert [s.key for s in plan.steps][:3] == [f"fetch:{set_id}", "verify:app", "stop-writers"]
    # planning read the manifest of one copy, nothing else
    assert [(m, s) for _r, m, s in repo.calls] == [("read_file", set_id)]
    assert f"copy in {repo.calls[0][0]}" in plan.summary
    ex = Executor(store, run_context(store, config=config, platform=platform))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded", outcome
    assert (repo.calls[0][0], "fetch", set_id) in repo.calls
    assert engine.called("restore") == ["app"]
    assert (config.backup_dir / set_id / "manifest.json").is_file()  # published again


def test_a_fetched_artifact_that_differs_from_the_manifest_restores_nothing(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    import shutil

    from backout.rollback import db as db_rollback

    config = _config(tmp_path)
    set_id, _outcome, store = _backup(config)
    shutil.rmtree(config.backup_dir / set_id)
    for name in ("offsite", "nas"):
        held = repo.root / name / set_id / "app.fake"
        data = bytearray(held.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different bytes
        held.write_bytes(bytes(data))
    platform = FakePlatform(running={"web": "sha256:w", "db": "sha256:d"})
    plan = db_rollback.plan(Environment(), config, store, "app", set_id, platform=platform)
    engine.calls.clear()
    ex = Executor(store, run_context(store, config=config, platform=platform))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "failed" and outcome.failed_step == "verify app backup"
    assert engine.called("restore") == [] and platform.called("stop") == []


def test_without_a_record_the_repositories_are_asked(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    """The disk with the state store was lost too: the copy is found by listing."""
    config = _config(tmp_path)
    set_id, _outcome, _store = _backup(config)
    fresh = Store(tmp_path / "other-state")
    found = offsite.find_copy(Environment(), config, fresh, set_id)
    assert found == offsite.RemoteCopy("offsite", f"snap-{set_id}")
    assert offsite.find_copy(Environment(), config, fresh, "no-such-set") is None


# --------------------------------------------------------------------------- retention


def test_prune_applies_the_same_policy_to_each_repository_and_protects_releases(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    from backout.backup.prune import prune_backups

    config = _config(tmp_path, "\n[backups]\nkeep_last = 1\nkeep_daily = 0\n")
    import json

    ids = [_backup(config)[0] for _ in range(3)]
    # one second can hold all three: give them distinct times, oldest first
    for age, set_id in zip((3, 2, 1), ids, strict=True):
        when = datetime.now(UTC) - timedelta(hours=age)
        path = config.backup_dir / set_id / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["completed_at"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        path.write_text(json.dumps(manifest))
        for name in ("offsite", "nas"):
            (repo.root / name / set_id / ".completed").write_text(when.isoformat())
    store = Store(config.state_dir)
    rid = store.add_release(git_commit="abc", git_dirty=False, diff_path=None,
                            compose_config={}, services={}, status="deployed")
    store.add_checkpoint(release_id=rid, label=None, set_id=ids[0])
    env = Environment()
    dry = prune_backups(env, config, store, dry_run=True)
    assert dry.repositories == {"offsite": [ids[1]], "nas": [ids[1]]}
    assert ("offsite", "forget", ids[1]) not in repo.calls
    done = prune_backups(env, config, store, dry_run=False)
    assert done.repositories == dry.repositories
    assert sorted(p.name for p in (repo.root / "nas").iterdir()) == sorted([ids[0], ids[2]])
    assert ids[1] not in Store(config.state_dir).set_copies()


def test_calendar_retention_keeps_the_newest_of_each_period() -> None:
    from backout.storage.prune import Candidate, prune

    now = datetime(2026, 12, 3, 12, 30, tzinfo=UTC)
    sets = [Candidate(f"h{i}", now - timedelta(minutes=20 * i)) for i in range(6)]  # 2 hours
    sets += [Candidate(f"w{i}", now - timedelta(weeks=i, days=1)) for i in range(1, 4)]
    sets += [Candidate("m1", datetime(2026, 10, 15, tzinfo=UTC)),
             Candidate("m2", datetime(2026, 10, 2, tzinfo=UTC)),
             Candidate("y1", datetime(2025, 6, 1, tzinfo=UTC)),
             Candidate("y0", datetime(2023, 6, 1, tzinfo=UTC))]
    hourly = prune(sets, now=now, keep_last=0, keep_daily=0, protected={}, keep_hourly=2)
    assert set(hourly.keep) == {"h0", "h2"}  # 12:30 (newest of 12:00) and 11:50 (of 11:00)
    weekly = prune(sets, now=now, keep_last=0, keep_daily=0, protected={}, keep_weekly=3)
    assert set(weekly.keep) == {"h0", "w1", "w2"}
    monthly = prune(sets, now=now, keep_last=0, keep_daily=0, protected={}, keep_monthly=3)
    assert set(monthly.keep) == {"h0", "w1", "m1"}  # Dec, Nov (w1 = Nov 25), Oct
    yearly = prune(sets, now=now, keep_last=0, keep_daily=0, protected={}, keep_yearly=2)
    assert set(yearly.keep) == {"h0", "y1"}
    assert "keep_yearly=2" in yearly.keep["y1"]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(("text", "problem"), [
    ('[repositories.a]\nurl = "/r"\npassword = "hunter2"\n',
     "repositories.a.password: a repository password is never kept in backout.toml"),
    ('[repositories.a]\nurl = "/r"\n', "needs exactly one of password_env, password_file"),
    ('[repositories.a]\nurl = "/r"\npassword_env = "X"\npassword_file = "f"\n',
     "needs exactly one of password_env, password_file"),
    ('[repositories.a]\npassword_env = "X"\n', "repositories.a.url: missing (required)"),
    ('[repositories.a]\nurl = "/r"\npassword_env = "X"\nkind = "borg"\n',
     "must be one of restic, directory"),
    ('[backups]\nkeep_weekly = -1\n', "backups.keep_weekly: must be at least 0"),
    ('[repositories.a]\nurl = "rest:https://u:s3cret@h:8000/r"\npassword_env = "X"\n',
     "repositories.a.url: holds a password (user:password@)"),
])
def test_bad_repository_config_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_document("backout.toml", text, tmp_path)
    assert problem in err.value.one_line()
    assert "s3cret" not in err.value.one_line()


def test_the_password_is_read_from_the_variable_or_file_and_redacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backout.config.load import load_config

    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "repo.pw").write_text("file-secret\n")
    (tmp_path / "backout.toml").write_text('[project]\nenv_file = ""\n'
                                           + CONFIG.split("[databases")[0]
                                           + CONFIG[CONFIG.index("[repositories"):])
    monkeypatch.setenv("REPO_PASSWORD", "env-secret")
    env = Environment(project_dir=tmp_path)

    def compose_variables(_env: Environment, _config: object, names: list[str]) -> dict[str, str]:
        # Compose's own answer: the process environment over .env (none here)
        return {n: os.environ[n] for n in names if n in os.environ}

    config = load_config(env, tmp_path / "backout.toml", compose_services=lambda e, c: set(),
                         compose_variables=compose_variables)
    assert config.secrets == {"repository:offsite": "env-secret", "repository:nas": "file-secret"}
    assert env.redact("a env-secret b file-secret") == "a *** b ***".replace(
        "***", env.redact("env-secret"))
    monkeypatch.delenv("REPO_PASSWORD")
    with pytest.raises(ConfigError, match="REPO_PASSWORD is not set"):
        load_config(Environment(project_dir=tmp_path), tmp_path / "backout.toml",
                    compose_services=lambda e, c: set(), compose_variables=compose_variables)


# --------------------------------------------------------------------------- restic's messages


@pytest.mark.parametrize(("stderr", "cls", "code"), [
    ("Fatal: wrong password or no key found\n", RepositoryPasswordError, 2),
    ("unable to create lock in backend: repository is already locked by PID 7 on vm\n"
     "the `unlock` command can be used to remove stale locks\n", RepositoryLockedError, 4),
    ("Save(<data/1>) returned error: write /r/data/1: no space left on device\n",
     RepositoryFullError, 6),
    ("ssh: connect to host 10.0.0.2 port 22: Connection timed out\n"
     "Fatal: unable to open repository\n", RepositoryUnreachableError, 6),
    ("Fatal: something else entirely\n", RepositoryError, 6),
])
def test_restic_messages_are_classified(stderr: str, cls: type[RepositoryError],
                                        code: int) -> None:
    error = classify("repository x: copy", stderr)
    assert type(error) is cls and int(error.exit_code) == code
    assert "\n" not in error.message and error.message.startswith("repository x: copy: ")
    assert "unlock` command" not in error.message  # the line that says it, not the advice


# --------------------------------------------------------------------------- freshness and RPO


def test_freshness_is_the_newest_good_set_locally_and_off_site(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    from backout.backup.freshness import NEVER, freshness

    config = _config(tmp_path, "\n[backups]\nrpo_hours = 2\n")
    store = Store(config.state_dir)
    assert freshness(config, store).rpo_ratio == NEVER  # nothing yet: a breach
    repo.fail_on("offsite", "put", RepositoryUnreachableError("gone"))
    repo.fail_on("nas", "put", RepositoryUnreachableError("gone"))
    first, _o, store = _backup(config)
    fresh = freshness(config, store)
    assert fresh.last_backup_at is not None and fresh.last_offsite_at is None
    assert fresh.pending_copies == 2 and fresh.rpo_ratio == NEVER  # nothing off-site yet
    repo.failures.clear()
    offsite.copy_sets(Environment(), config, store, [])
    now = fresh.last_backup_at + timedelta(hours=3)
    late = freshness(config, store, now=now)
    assert late.pending_copies == 0 and late.last_offsite_at == late.last_backup_at
    assert late.rpo_ratio == 1.5 and late.to_json()["rpo_breached"] is True
    assert freshness(config, store, now=now - timedelta(hours=2)).to_json()["rpo_breached"] is False
    # a set whose verification failed is not a good backup
    store.record_verification(first, ok=False, kind="checksum", detail="damaged")
    assert freshness(config, store).last_backup_at is None


def test_the_monitor_reads_the_rpo_signal_and_goes_yellow(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    import json

    from backout.monitor.collect import Collector
    from backout.policy.rules import DEFAULT_RULES, PolicyState, evaluate

    config = _config(tmp_path, "\n[backups]\nrpo_hours = 1\n")
    set_id, _o, store = _backup(config)
    path = config.backup_dir / set_id / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["completed_at"] = (datetime.now(UTC) - timedelta(hours=3)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(manifest))  # the set is 3 hours old
    collector = Collector(Environment(), config, FakePlatform(running={"web": "sha256:w"}),
                          state=store)
    snapshot, _views = collector.collect(t=1_000.0)
    assert 2.9 < (snapshot.signals["backup_rpo_ratio"] or 0) < 3.1
    decision, _state = evaluate(DEFAULT_RULES, snapshot, PolicyState())
    assert "yellow-backup-rpo" in {f.rule for f in decision.active}
    assert decision.level.value == "YELLOW"
    without = Collector(Environment(), _config(tmp_path / "p2"),
                        FakePlatform(running={"web": "sha256:w"}), state=store)
    assert "backup_rpo_ratio" not in without.collect(t=1_000.0)[0].signals


# --------------------------------------------------------------------------- doctor


def test_doctor_opens_each_repository_and_names_pending_copies(
        tmp_path: Path, engine: FakeEngine, repo: type[FakeRepository]) -> None:
    from types import SimpleNamespace

    from backout.setup.doctor import Sources, run_doctor

    config = _config(tmp_path)
    repo.fail_on("nas", "put", RepositoryFullError("repository nas: no space left on device"))
    _set_id, _o, store = _backup(config)

    def sets_of(name: str) -> int:
        if name == "offsite":
            raise RepositoryPasswordError("wrong password or no key found",
                                          fix="check BACKOUT_REPO_PASSWORD")
        return 1

    sources = Sources(engine_version=lambda: "24.0.7", compose_version=lambda: "2.40.3",
                      git_repository=lambda _p: True, which=lambda tool: f"/usr/bin/{tool}",
                      disk_free=lambda _p: SimpleNamespace(free=50 * 2**30),
                      database_version=lambda db: "10.11.6-MariaDB",
                      image_present=lambda _i: True, repository_sets=sets_of)
    checks = {c.name: c for c in run_doctor(Environment(), config, None, store, sources).checks}
    assert checks["restic"].ok
    assert not checks["repository offsite"].ok
    assert "wrong password" in checks["repository offsite"].detail
    assert checks["repository offsite"].fix == "check BACKOUT_REPO_PASSWORD"
    assert not checks["repository nas"].ok and "1 copy(ies) PENDING" in checks["repository nas"].detail
    no_restic = Sources(**{**sources.__dict__, "which": lambda tool: None})
    checks = {c.name: c for c in run_doctor(Environment(), config, None, store, no_restic).checks}
    assert not checks["restic"].ok and "repository offsite" not in checks


# --------------------------------------------------------------------------- kind = "directory"


def test_a_directory_repository_copies_checks_fetches_and_forgets(
        tmp_path: Path, engine: FakeEngine) -> None:
    """The plain-directory kind, for real (it is only files): copy, re-read check,
    fetch back, list, forget; a damaged copy fails its check."""
    import shutil

    from backout.storage.repositories import open_repository

    target = tmp_path / "mounted-disk" / "backout"
    (tmp_path / "mounted-disk").mkdir()
    text = CONFIG.split("[repositories")[0] + (
        f'[repositories.disk]\nkind = "directory"\nurl = "{target}"\npassword_env = "X"\n')
    config = parse_document("backout.toml", text, tmp_path)
    object.__setattr__(config, "secrets", {"repository:disk": "unused"})
    set_id, outcome, store = _backup(config)
    assert outcome.status == "succeeded", outcome
    assert _copies(store, set_id) == {"disk": "copied"}
    assert (target / set_id / "manifest.json").read_bytes() == \
        (config.backup_dir / set_id / "manifest.json").read_bytes()
    repo = open_repository(Environment(), config, "disk")
    assert [r.set_id for r in repo.sets()] == [set_id]
    fetched = repo.fetch(set_id, set_id, tmp_path / "fetched")
    assert (fetched / "app.fake").read_bytes() == (config.backup_dir / set_id / "app.fake").read_bytes()
    held = target / set_id / "app.fake"
    data = bytearray(held.read_bytes())
    data[0] ^= 0xFF
    held.write_bytes(bytes(data))
    manifest = (config.backup_dir / set_id / "manifest.json").read_bytes()
    with pytest.raises(RepositoryError, match="does not match the manifest's sha256"):
        repo.check(set_id, set_id, manifest, {"app.fake": len(data)})
    repo.forget([set_id])
    assert repo.sets() == []
    shutil.rmtree(tmp_path / "mounted-disk")  # not mounted any more
    with pytest.raises(RepositoryUnreachableError, match="not mounted"):
        repo.sets()
