"""``backout rollback db`` as data and in-process (``backout.rollback.db``): which
database a name means, what a backup reference resolves to (set, checkpoint, copy in
a repository, an operator's own file recognised by its first bytes), the data steps
every restoring plan shares (keys, order, parameters, what each restore requires),
the downtime and the plan's parameters, and what the actions hand on: the safety
backup's result and manifest, the counts check, the engine's access, a stalled
restore on an engine that is gone. FakeEngine/FakePlatform, a real Store and the
real Executor; no Docker."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from backout.adapters.docker import ENGINE_FIX
from backout.backup.operation import plan_backup
from backout.backup.restore import describe_counts
from backout.config import Config
from backout.config.load import parse_document
from backout.config.model import DatabaseConfig, ServiceConfig
from backout.engines.access import EngineAccess
from backout.environment import Environment
from backout.errors import (
    DockerUnavailableError,
    ExternalError,
    InterruptedOperation,
    NotFoundError,
    UsageError,
)
from backout.operations import executor as executor_mod
from backout.operations.executor import Executor, RunContext, load_actions
from backout.rollback import db as db_rollback
from backout.state import Store
from backout.storage import sets
from backout.storage.pipeline import IntegrityError, StalledError
from tests.support.fakes import (
    FakeEngine,
    FakePlatform,
    install_engine,
    install_repository,
    run_context,
)

CONFIG = """
[databases.app]
type = "mysql"
service = "db"

[databases.cache]
type = "redis"
service = "redis"

[services.worker]
writes_to = ["app"]

[services.web]
writes_to = ["app", "cache"]

[services.nginx]
kind = "proxy"
"""

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    load_actions()
    return install_engine(monkeypatch, FakeEngine())


def _config(tmp_path: Path, text: str = CONFIG) -> Config:
    return parse_document("backout.toml", text, tmp_path)


def _platform() -> FakePlatform:
    return FakePlatform(running={"web": "sha256:w", "worker": "sha256:k", "db": "sha256:d",
                                 "redis": "sha256:r"})


def _backed_up(config: Config, which: tuple[str, ...] = ("app",), *,
               checkpoint: bool = False) -> tuple[str, Store]:
    plan = plan_backup(config, which=list(which), quiesce=False, checkpoint=checkpoint,
                       label=None)
    store = Store(config.state_dir)
    ex = Executor(store, run_context(store, config, _platform()))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded", outcome
    return str(plan.params["set_id"]), store


def _ctx(config: Config, store: Store, platform: Any = None, op_id: int = 7) -> RunContext:
    return dataclasses.replace(run_context(store, config, platform or _platform()),
                               operation_id=op_id)


def _action(name: str) -> Any:
    return executor_mod.action(name)


# --------------------------------------------------------------------------- database


def test_a_database_is_named_by_its_section_or_by_its_type_when_that_is_unique(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert db_rollback.database(config, "app").name == "app"
    assert db_rollback.database(config, "redis").name == "cache"  # the only redis
    assert db_rollback.database(config, "mysql").name == "app"
    two = _config(tmp_path, CONFIG + '[databases.sessions]\ntype = "redis"\nservice = "s"\n')
    with pytest.raises(NotFoundError) as caught:  # two of that type: ambiguous
        db_rollback.database(two, "redis")
    assert caught.value.message.startswith('no database "redis" in backout.toml')
    assert caught.value.fix == "configured: app, cache, sessions"
    with pytest.raises(NotFoundError) as caught:
        db_rollback.database(config, "cach")
    assert caught.value.message == 'no database "cach" in backout.toml (did you mean "cache"?)'
    assert caught.value.exit_code == 7
    with pytest.raises(NotFoundError) as caught:
        db_rollback.database(Config(path=tmp_path / "b.toml", project_dir=tmp_path), "app")
    assert caught.value.fix == "configured: none"


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(("head", "kind"), [
    (b"-- MySQL dump 10.13\nUSE `app`;\n", "mysql"),
    (b"-- a comment\nCREATE TABLE t (id int);\n", "mysql"),  # a heuristic (1) is enough
    (b"REDIS0011\xfa\tredis-ver", "redis"),
    (b"-- MariaDB dump 10.19\n-- REDIS in a comment\n", "mysql"),  # a tie: table order
    (b"-- notes\nREDIS0011", "redis"),  # a magic string beats mysql's heuristic
    (b"\x00\x01binary nothing", None),
])
def test_a_file_is_recognised_by_the_engine_most_sure_of_its_first_bytes(
        tmp_path: Path, head: bytes, kind: str | None) -> None:
    path = tmp_path / "dump"
    path.write_bytes(head)
    assert db_rollback._sniff(Environment(), path) == kind


def test_a_mongodump_directory_is_recognised_by_its_bson_files(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    (dump / "app").mkdir(parents=True)
    assert db_rollback._sniff(Environment(), dump) is None  # empty: nothing backout knows
    (dump / "app" / "items.bson").write_bytes(b"\x05\x00\x00\x00\x00")
    assert db_rollback._sniff(Environment(), dump) == "mongodb"


# --------------------------------------------------------------------------- resolve_backup


def test_an_operators_file_resolves_to_its_absolute_path_and_mtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    (tmp_path / "mine.sql").write_bytes(b"-- MySQL dump 10.13\n")
    os.utime(tmp_path / "mine.sql", (1_800_000_000, 1_800_000_000))
    monkeypatch.chdir(tmp_path)
    target = db_rollback.resolve_backup(Environment(), config, store, config.databases["app"],
                                        "mine.sql")
    assert target == {"artifact": str(tmp_path / "mine.sql"), "section": None,
                      "source": "file mine.sql", "sha256": None, "set_id": None,
                      "taken_at": "2027-01-15T08:00:00Z"}


def test_a_file_of_another_engine_is_refused_naming_both(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    rdb = tmp_path / "dump.rdb"
    rdb.write_bytes(b"REDIS0011")
    with pytest.raises(UsageError) as caught:
        db_rollback.resolve_backup(Environment(), config, store, config.databases["app"],
                                   str(rdb))
    assert caught.value.message == f"{rdb} is a Redis RDB, not a MySQL dump for app"
    assert caught.value.fix == "name a mysql dump, or the right database"
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x00")
    with pytest.raises(UsageError) as caught:
        db_rollback.resolve_backup(Environment(), config, store, config.databases["cache"],
                                   str(junk))
    assert caught.value.message == (f"{junk} is not a dump backout recognises, not a Redis RDB "
                                    "for cache")
    assert caught.value.exit_code == 2


def test_a_set_id_resolves_to_its_artifact_checksum_and_time(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    manifest = json.loads((config.backup_dir / set_id / "manifest.json").read_text())
    target = db_rollback.resolve_backup(Environment(), config, store, config.databases["app"],
                                        set_id)
    assert target == {"artifact": str(config.backup_dir / set_id / "app.fake"),
                      "section": manifest["databases"]["app"], "source": f"backup {set_id}",
                      "sha256": manifest["artifacts"]["app.fake"]["sha256"], "set_id": set_id,
                      "taken_at": manifest["created_at"]}
    with pytest.raises(NotFoundError) as caught:
        db_rollback.resolve_backup(Environment(), config, store, config.databases["cache"],
                                   set_id)
    assert caught.value.message == f"backup {set_id} holds no cache dump (it has app)"


def test_a_checkpoint_resolves_to_its_set(tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    release = store.add_release(git_commit="c" * 40, git_dirty=False, diff_path=None,
                                compose_config={}, services={})
    set_id, _ = _backed_up(config)
    cp = store.add_checkpoint(release_id=release, label=None, set_id=set_id)
    db = config.databases["app"]
    for ref in (f"cp{cp}", f"checkpoint:{cp}"):
        target = db_rollback.resolve_backup(Environment(), config, store, db, ref)
        assert target["set_id"] == set_id and target["source"] == f"backup {set_id}"
    with pytest.raises(NotFoundError) as caught:
        db_rollback.resolve_backup(Environment(), config, store, db, "cp99")
    assert caught.value.message == "no checkpoint 99"
    assert caught.value.fix == "list them with `backout backups list`"


@pytest.mark.parametrize("ref", ["nope", "dir/nope.sql"])
def test_a_reference_that_is_nothing_is_not_found(tmp_path: Path, ref: str) -> None:
    config = _config(tmp_path)
    with pytest.raises(NotFoundError) as caught:
        db_rollback.resolve_backup(Environment(), config, Store(config.state_dir),
                                   config.databases["app"], ref)
    assert caught.value.message == (f'no backup "{ref}": neither a backup id, a checkpoint '
                                    "(cpN) nor a file")
    assert caught.value.fix == "list them with `backout backups list`"


REPOS = '\n[repositories.offsite]\nurl = "offsite"\npassword_env = "REPO_PASSWORD"\n'


def _with_repos(tmp_path: Path) -> Config:
    config = _config(tmp_path, CONFIG + REPOS)
    object.__setattr__(config, "secrets", {"repository:offsite": "pw"})
    return config


def test_with_repositories_a_bare_name_is_looked_for_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_repository(monkeypatch, tmp_path / "repos")
    config = _with_repos(tmp_path)
    with pytest.raises(NotFoundError) as caught:
        db_rollback.resolve_backup(Environment(), config, Store(config.state_dir),
                                   config.databases["app"], "20270101T000000Z-abc")
    assert caught.value.message == ('no backup "20270101T000000Z-abc" locally or in any '
                                    "repository")
    # a path is never a set id: not looked for in a repository
    with pytest.raises(NotFoundError, match="neither a backup id"):
        db_rollback.resolve_backup(Environment(), config, Store(config.state_dir),
                                   config.databases["app"], "a/b")


def test_a_set_only_in_a_repository_resolves_with_the_copy_to_fetch(
        tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    repo = install_repository(monkeypatch, tmp_path / "repos")
    config = _with_repos(tmp_path)
    set_id, store = _backed_up(config)
    shutil.rmtree(config.backup_dir / set_id)
    repo.calls.clear()
    target = db_rollback.resolve_backup(Environment(), config, store, config.databases["app"],
                                        set_id)
    assert [(m, s) for _r, m, s in repo.calls] == [("read_file", set_id)]  # the manifest only
    assert target["source"] == f"backup {set_id} (copy in offsite)"
    assert target["fetch"] == {"repository": "offsite", "snapshot": f"snap-{set_id}"}
    assert target["artifact"] == str(config.backup_dir / set_id / "app.fake")
    assert target["set_id"] == set_id


# --------------------------------------------------------------------------- data_steps


def _target(name: str, **extra: Any) -> dict[str, Any]:
    return {"artifact": f"/b/{name}", "section": {"duration_s": 4.4}, "source": f"backup S-{name}",
            "sha256": "ab", "set_id": f"S-{name}", "taken_at": None, **extra}


def test_data_steps_in_the_order_integrity_needs_for_two_databases(tmp_path: Path) -> None:
    config = _config(tmp_path)
    targets = {"app": _target("app", fetch={"repository": "offsite", "snapshot": "snap-1"}),
               "cache": _target("cache")}
    head, undo = db_rollback.data_steps(config, targets, {"app": "SAFE-A"},
                                        when=" (if RED)", safety_hint="HINT")
    assert [(s.key, s.action, s.always) for s in head] == [
        ("fetch:S-app", "backup.fetch", False),
        ("verify:app", "rollback.db.verify", False),
        ("verify:cache", "rollback.db.verify", False),
        ("stop-writers", "compose.stop", False),
        ("safety:app", "rollback.db.safety", False),
        ("restore:app", "rollback.db.restore", False),
        ("restore:cache", "rollback.db.restore", False)]
    steps = {s.key: s for s in head}
    assert steps["fetch:S-app"].params == {"set_id": "S-app", "repository": "offsite",
                                           "snapshot": "snap-1"}
    verify = steps["verify:app"]
    assert verify.name == "verify app backup"
    assert verify.params == {"database": "app", **targets["app"]}
    assert verify.reason.startswith("prove backup S-app whole before anything changes")
    assert verify.reason.endswith(" (if RED)")
    stop = steps["stop-writers"]
    assert stop.name == "stop writers: web, worker"
    assert stop.params == {"services": ["web", "worker"]}
    assert "every acknowledged write" in stop.reason and stop.reason.endswith(" (if RED)")
    safety = steps["safety:app"]
    assert safety.name == "safety backup of app"
    assert safety.params == {"database": "app", "set_id": "SAFE-A", "hint": "HINT"}
    assert "(set SAFE-A)" in safety.reason and safety.reason.endswith(" (if RED)")
    app = steps["restore:app"]
    assert app.name == "restore app"
    assert app.params == {"database": "app", **targets["app"], "verify_step": "verify:app",
                          "requires": ["verify:app", "verify:cache", "stop-writers",
                                       "safety:app"],
                          "no_safety": False}
    assert app.reason.startswith("app: its databases are dropped and reloaded; the restored "
                                 "counts are compared with the backup's (if RED)")
    assert app.reason.endswith(" (if RED)")
    cache = steps["restore:cache"]
    # the second restore also needs the first done; it has no safety backup
    assert cache.params["requires"] == ["verify:app", "verify:cache", "stop-writers",
                                        "safety:app", "restore:app"]
    assert cache.params["no_safety"] is True and cache.params["verify_step"] == "verify:cache"
    assert "the keyspace is replaced" in cache.reason
    assert [(s.key, s.action, s.always, s.params) for s in undo] == [
        ("undo:app", "rollback.db.undo", True, {"database": "app", "set_id": "SAFE-A"})]
    assert undo[0].name == "put app's safety backup back if a restore failed"
    assert undo[0].reason.endswith(" (if RED)")


def test_one_fetch_per_set_and_no_stop_without_writers(tmp_path: Path) -> None:
    config = _config(tmp_path, CONFIG.replace('writes_to = ["app", "cache"]', "writes_to = []")
                     .replace('writes_to = ["app"]', "writes_to = []"))
    fetch = {"repository": "r", "snapshot": "s"}
    targets = {"app": _target("app", set_id="ONE", fetch=fetch),
               "cache": _target("cache", set_id="ONE", fetch=fetch)}
    head, undo = db_rollback.data_steps(config, targets, {"app": "A", "cache": "C"})
    assert [s.key for s in head] == ["fetch:ONE", "verify:app", "verify:cache", "safety:app",
                                     "safety:cache", "restore:app", "restore:cache"]
    assert head[5].params["requires"] == ["verify:app", "verify:cache", "safety:app",
                                          "safety:cache"]
    assert head[3].params["hint"] is None
    assert head[1].reason == ("prove backup S-app whole before anything changes (checksum, "
                              "format, counts)")  # no `when`: as written
    assert [u.key for u in undo] == ["undo:app", "undo:cache"]


def test_a_target_without_a_source_is_called_the_backup(tmp_path: Path) -> None:
    config = _config(tmp_path)
    head, _ = db_rollback.data_steps(config, {"app": {"artifact": "/x", "section": None}}, {})
    assert head[0].reason.startswith("prove the backup whole before anything changes")


def test_the_writers_start_step_always_runs_and_points_at_the_stop() -> None:
    step = db_rollback.start_step(["web", "worker"], when=" (if RED)")
    assert (step.key, step.action, step.always, step.on_failure) == (
        "start-writers", "compose.start", True, False)
    assert step.name == "start writers: web, worker"
    assert step.params == {"services": ["web", "worker"], "stop_step": "stop-writers"}
    assert step.reason.startswith("writers run again in every case")
    assert step.reason.endswith(" (if RED)")
    assert db_rollback.start_step(["web"]).reason.endswith("interrupted)")


# --------------------------------------------------------------------------- downtime


def test_downtime_names_who_stops_what_it_costs_and_who_restarts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    text = db_rollback.downtime(config, ["app", "cache"], {
        "app": {"section": {"duration_s": 12.6}}, "cache": {"section": {"duration_s": 2.2}}})
    assert text.startswith("web, worker stopped from before the safety backup until the "
                           "restore is checked: the safety dump plus the restore")
    assert "(the backup's own dump took app 13 s, cache 2 s; a restore takes about as long " \
           "or longer)" in text
    assert "Stopping first is what makes the safety backup hold every acknowledged write" in text
    assert text.endswith("; redis restarts")  # the redis engine restarts its server


def test_downtime_without_durations_or_restarts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    text = db_rollback.downtime(config, ["app"], {"app": {"section": None}})
    assert text == ("web, worker stopped from before the safety backup until the restore is "
                    "checked: the safety dump plus the restore. Stopping first is what makes "
                    "the safety backup hold every acknowledged write")
    text = db_rollback.downtime(config, ["app"], {"app": {"section": {"duration_s": None}}})
    assert "own dump took" not in text
    text = db_rollback.downtime(config, ["app"], {"app": {"section": {"duration_s": 0}}})
    assert "own dump took app 0 s;" in text


def test_no_downtime_when_nothing_writes_to_the_database(tmp_path: Path) -> None:
    config = Config(path=tmp_path / "b.toml", project_dir=tmp_path,
                    services={"web": ServiceConfig("web", writes_to=("other",))},
                    databases={"app": DatabaseConfig("app", "mysql", "db"),
                               "cache": DatabaseConfig("cache", "redis", "redis")})
    assert db_rollback.downtime(config, ["app", "cache"], {}) == \
        "none for app services (no service writes to app, cache)"


# --------------------------------------------------------------------------- plan


def test_the_plan_of_a_rollback_db(tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    platform = _platform()
    engine.calls.clear()
    plan = db_rollback.plan(Environment(), config, store, "app", set_id, platform=platform)
    assert plan.kind == "rollback.db"
    safety_set = plan.params["safety_set"]
    assert re.match(r"^\d{8}T\d{6}Z-[0-9a-f]+$", safety_set) and safety_set != set_id
    [loss] = plan.params["data_loss"]
    assert loss["database"] == "app" and loss["changes"] == 0
    assert engine.calls == [("data_loss", "app")]
    assert plan.params == {"database": "app", "backup": set_id, "safety_set": safety_set,
                           "data_loss": [loss]}
    assert plan.summary == f"restore app from backup {set_id}"
    assert plan.downtime.startswith("web, worker stopped from before the safety backup")
    steps = {s.key: s for s in plan.steps}
    assert steps["safety:app"].params["set_id"] == safety_set
    assert steps["undo:app"].params == {"database": "app", "set_id": safety_set}
    assert steps["safety:app"].params["hint"] == (
        f"or, accepting that this restore cannot be undone: `backout rollback db app {set_id} "
        "--no-safety-backup`")
    assert steps["start-writers"].params == {"services": ["web", "worker"],
                                             "stop_step": "stop-writers"}
    assert [s.key for s in plan.steps][-1] == "start-writers"


def test_a_plan_without_a_platform_measures_no_window_and_one_by_type(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config, ("app", "cache"))
    engine.calls.clear()
    plan = db_rollback.plan(Environment(), config, store, "redis", set_id,
                            no_safety_backup=True)
    assert engine.calls == []
    assert plan.params == {"database": "cache", "backup": set_id, "safety_set": None,
                           "data_loss": []}
    assert plan.summary == (f"restore cache from backup {set_id} WITHOUT a safety backup "
                            "(cannot be undone)")
    assert [s.key for s in plan.steps] == ["verify:cache", "stop-writers", "restore:cache",
                                           "start-writers"]
    assert plan.steps[1].params == {"services": ["web"]}


def test_a_database_nothing_writes_to_is_restored_without_stopping_anything(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path, CONFIG + '[databases.logs]\ntype = "mysql"\nservice = "l"\n')
    set_id, store = _backed_up(config, ("logs",))
    plan = db_rollback.plan(Environment(), config, store, "logs", set_id)
    assert [s.key for s in plan.steps] == ["verify:logs", "safety:logs", "restore:logs",
                                           "undo:logs"]
    assert plan.downtime == "none for app services (no service writes to logs)"


# --------------------------------------------------------------------------- the actions


class _RecordingEngine(FakeEngine):
    """Also records the access each restore is given and what prepare_artifact is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.accesses: list[EngineAccess] = []
        self.prepared: list[tuple[Path, Path]] = []
        self.safety_extra: dict[str, Any] = {}
        self.loss_accesses: list[EngineAccess] = []
        self.restores: list[tuple[Environment, Path]] = []

    def overwritten(self, db: DatabaseConfig) -> str:
        return f"the tables of {db.name} on {db.service} are replaced"

    def section_for_file(self, env: Environment, db: DatabaseConfig,
                         artifact: Path) -> dict[str, Any]:
        self.restores.append((env, artifact))
        return super().section_for_file(env, db, artifact)

    def data_loss(self, access: EngineAccess, section: dict[str, Any],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
        self.loss_accesses.append(access)
        return super().data_loss(access, section, current)

    def restore(self, env: Environment, access: EngineAccess, artifact: Path,
                section: dict[str, Any]) -> dict[str, Any]:
        self.accesses.append(access)
        self.restores.append((env, artifact))
        return super().restore(env, access, artifact, section)

    def prepare_artifact(self, artifact: Path, staging: Path) -> Path:
        self.prepared.append((artifact, staging))
        return artifact

    def dump(self, ctx: Any, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        section = super().dump(ctx, db, set_dir)
        section["database"].update(self.safety_extra)
        return section


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> _RecordingEngine:
    load_actions()
    engine = _RecordingEngine()
    install_engine(monkeypatch, engine)
    return engine


def test_a_full_rollback_hands_the_engine_its_database_env_and_platform(
        tmp_path: Path, recording: _RecordingEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    platform = _platform()
    env = Environment()
    plan = db_rollback.plan(env, config, store, "app", set_id, platform=platform)
    ex = Executor(store, run_context(store, config, platform, env))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded", outcome
    [access] = recording.accesses
    assert access.db is config.databases["app"]
    assert access.platform is platform and access.env is env and access.config is config
    assert access.container is None
    assert recording.restores == [(env, config.backup_dir / set_id / "app.fake")]
    assert "app: the tables of app on db are replaced; the restored counts are compared with " \
        "the backup's" in plan.steps[3].reason
    assert recording.prepared == [(config.backup_dir / set_id / "app.fake",
                                   config.state_dir / "staging")]
    restored = outcome.results["restore:app"]
    assert restored["counts"] == {"items": 3} and restored["data_loss"]["database"] == "app"
    safety_id = plan.params["safety_set"]
    assert outcome.results["safety:app"] == {"set_id": safety_id, "not_dumped": [],
                                             "absent": []}
    manifest = json.loads((config.backup_dir / safety_id / "manifest.json").read_text())
    assert manifest["kind"] == "safety" and manifest["id"] == safety_id
    assert manifest["label"] == f"safety backup before a restore (operation {outcome.operation_id})"
    assert ISO.match(manifest["created_at"]) and manifest["created_at"] == manifest["completed_at"]
    assert list(manifest["databases"]) == ["app"] and list(manifest["artifacts"]) == ["app.fake"]


def test_the_safety_result_names_what_was_not_dumped_and_what_was_absent(
        tmp_path: Path, recording: _RecordingEngine) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    recording.safety_extra = {"not_dumped": ["huge"], "absent": ["gone"]}
    safety = _action("rollback.db.safety")
    params = {"database": "app", "set_id": sets.new_set_id(), "hint": None}
    out = safety(_ctx(config, store), params, {})
    assert out == {"set_id": params["set_id"], "not_dumped": ["huge"], "absent": ["gone"]}
    # resumed after it was published: read back, not dumped again
    recording.calls.clear()
    assert safety(_ctx(config, store), params, {}) == out
    assert recording.calls == []
    assert db_rollback._safety_result("S", {}) == {"set_id": "S", "not_dumped": [],
                                                   "absent": []}


def test_a_failed_safety_backup_says_nothing_was_restored_and_how_to_go_on(
        tmp_path: Path, recording: _RecordingEngine) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    recording.fail_on("dump", "app", ExternalError("disk full", fix="free some space"))
    params = {"database": "app", "set_id": sets.new_set_id(), "hint": "or --no-safety-backup"}
    with pytest.raises(ExternalError) as caught:
        _action("rollback.db.safety")(_ctx(config, store), params, {})
    assert caught.value.message == ("safety backup of app failed, so nothing was restored: "
                                    "disk full")
    assert caught.value.fix == "free some space; or --no-safety-backup"
    assert not (config.backup_dir / params["set_id"]).exists()
    assert not list(config.backup_dir.glob(".*partial*"))
    recording.fail_on("dump", "app", InterruptedOperation("stopped by SIGINT"))
    with pytest.raises(InterruptedOperation) as stopped:
        _action("rollback.db.safety")(_ctx(config, store), params, {})
    assert stopped.value.message == "stopped by SIGINT"


def test_verify_of_a_set_records_the_check_and_of_a_file_reads_its_counts(
        tmp_path: Path, recording: _RecordingEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    target = db_rollback.resolve_backup(Environment(), config, store, config.databases["app"],
                                        set_id)
    out = _action("rollback.db.verify")(_ctx(config, store, op_id=41),
                                        {"database": "app", **target}, {})
    assert out == {"section": target["section"], "artifact": target["artifact"]}
    newest = store.last_verifications()[set_id]
    assert newest["detail"] == "before a restore (operation 41)" and newest["ok"]
    own = tmp_path / "own.fake"
    own.write_text(json.dumps({"t": 5}))
    out = _action("rollback.db.verify")(
        _ctx(config, store), {"database": "app", "artifact": str(own), "section": None,
                              "sha256": None, "source": "file own.fake", "set_id": None}, {})
    assert out == {"section": {"type": "mysql", "counts": {"t": 5}}, "artifact": str(own)}
    assert recording.called("section_for_file") == ["app"]
    ctx = _ctx(config, store)
    recording.restores.clear()
    _action("rollback.db.verify")(ctx, {"database": "app", "artifact": str(own),
                                        "section": None}, {})
    assert recording.restores == [(ctx.env, own)]  # read with the operation's environment


def test_restored_counts_that_differ_fail_naming_both_counts(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    engine.restored = {"items": 2, "b": 1}
    access = EngineAccess(Environment(), config, config.databases["app"], _platform())
    with pytest.raises(IntegrityError) as caught:
        db_rollback._restore(Environment(), access, Path("x"), {"type": "mysql",
                                                                    "counts": {"items": 3}})
    assert caught.value.message == ('app: restored counts differ from the backup\'s: expected '
                                    '{"items": 3}, found {"b": 1, "items": 2}')
    engine.restored = None
    assert db_rollback._restore(Environment(), access, Path("x"), {"type": "mysql", "counts": {"items": 3}}) == {"counts": {"items": 3}}


def test_counts_are_described_as_sorted_json() -> None:
    assert describe_counts({"b": {"y": 1, "x": 2}, "a": 0}) == \
        '{"a": 0, "b": {"x": 2, "y": 1}}'
    assert describe_counts(None) == "null"


def _restore_params(config: Config, store: Store, set_id: str) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
    target = db_rollback.resolve_backup(Environment(), config, store, config.databases["app"],
                                        set_id)
    results = {"verify:app": {"section": target["section"], "artifact": target["artifact"]}}
    return {"database": "app", **target, "verify_step": "verify:app",
            "requires": ["verify:app"], "no_safety": False}, results


def test_a_stalled_restore_on_an_engine_that_is_gone_says_the_engine_stopped(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    params, results = _restore_params(config, store, set_id)
    stall = StalledError("restore app: no data moved for 60 s")
    engine.fail_on("restore", "app", stall)
    platform = _platform()
    platform.fail_on("ping", DockerUnavailableError("Cannot connect to the Docker daemon"))
    with pytest.raises(DockerUnavailableError) as caught:
        _action("rollback.db.restore")(_ctx(config, store, platform), params, results)
    assert caught.value.message == ("restore app: the Docker Engine stopped answering "
                                    "(Cannot connect to the Docker daemon)")
    assert caught.value.fix == ENGINE_FIX
    assert caught.value.__cause__ is stall
    assert store.fact("op7.restore_failed") == "app"
    assert store.fact("op7.restore_started.app") is True


def test_a_stalled_restore_on_an_engine_that_answers_stays_stalled(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    params, results = _restore_params(config, store, set_id)
    engine.fail_on("restore", "app", StalledError("restore app: no data moved"))
    platform = _platform()
    with pytest.raises(StalledError, match="no data moved"):
        _action("rollback.db.restore")(_ctx(config, store, platform), params, results)
    assert platform.called("ping") == [()]
    engine.fail_on("restore", "app", ExternalError("other"))
    platform.calls.clear()
    with pytest.raises(ExternalError, match="other"):
        _action("rollback.db.restore")(_ctx(config, store, platform), params, results)
    assert platform.called("ping") == []  # only a stall asks whether the engine is there


def test_with_repositories_an_operators_file_is_still_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = install_repository(monkeypatch, tmp_path / "repos")
    config = _with_repos(tmp_path)
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps" / "mine.sql").write_bytes(b"-- MySQL dump 10.13\n")
    monkeypatch.chdir(tmp_path)
    for ref in ("dumps/mine.sql", str(tmp_path / "dumps" / "mine.sql")):
        target = db_rollback.resolve_backup(Environment(), config, Store(config.state_dir),
                                            config.databases["app"], ref)
        assert target["source"] == f"file {ref}" and target["set_id"] is None
        assert target["artifact"] == str(tmp_path / "dumps" / "mine.sql")
    assert repo.calls == []  # no repository was asked about a file


def test_the_plans_data_loss_window_is_measured_through_the_platform_from_the_backup_time(
        tmp_path: Path, recording: _RecordingEngine) -> None:
    config = _config(tmp_path)
    set_id, store = _backed_up(config)
    manifest = json.loads((config.backup_dir / set_id / "manifest.json").read_text())
    platform, env = _platform(), Environment()
    plan = db_rollback.plan(env, config, store, "app", set_id, platform=platform)
    [access] = recording.loss_accesses
    assert access.env is env and access.config is config and access.platform is platform
    assert access.db is config.databases["app"]
    [loss] = plan.params["data_loss"]
    assert loss["taken_at"] == manifest["created_at"] and loss["age_seconds"] is not None
    assert loss["summary"].startswith(f"app: backup taken {manifest['created_at']}")


def test_the_plan_of_a_restore_from_an_operators_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: _RecordingEngine) -> None:
    config = _config(tmp_path)
    store = Store(config.state_dir)
    own = tmp_path / "own.fake"
    own.write_text(json.dumps({"items": 3}))
    os.utime(own, (1_800_000_000, 1_800_000_000))
    plan = db_rollback.plan(Environment(), config, store, "app", str(own), platform=_platform())
    assert plan.summary == f"restore app from file {own}"
    assert plan.params["backup"] == str(own)
    [loss] = plan.params["data_loss"]
    assert loss["taken_at"] == "2027-01-15T08:00:00Z"
    assert "a dump file carries no counts" in loss["summary"]
    assert recording.loss_accesses == []  # no counts to compare: the engine is not asked
    verify = plan.steps[0]
    assert verify.params["source"] == f"file {own}" and verify.params["section"] is None


def test_a_sets_missing_database_names_every_one_it_has(
        tmp_path: Path, engine: FakeEngine) -> None:
    config = _config(tmp_path, CONFIG + '[databases.logs]\ntype = "mysql"\nservice = "l"\n')
    set_id, store = _backed_up(config, ("app", "cache"))
    with pytest.raises(NotFoundError) as caught:
        db_rollback.resolve_backup(Environment(), config, store, config.databases["logs"],
                                   set_id)
    assert caught.value.message == f"backup {set_id} holds no logs dump (it has app, cache)"


def test_every_database_whose_server_restarts_is_named(tmp_path: Path) -> None:
    config = _config(tmp_path, CONFIG.replace('writes_to = ["app", "cache"]',
                                              'writes_to = ["app", "cache", "sessions"]')
                     + '[databases.sessions]\ntype = "redis"\nservice = "sess"\n')
    text = db_rollback.downtime(config, ["cache", "sessions"], {"cache": {}, "sessions": {}})
    assert text.startswith("web stopped from before the safety backup")
    assert text.endswith("; redis, sess restarts")


def test_a_file_from_a_real_engine_is_read_for_its_counts(tmp_path: Path) -> None:
    """No fake: the MySQL engine reads an operator's plain dump for its counts."""
    load_actions()
    config = _config(tmp_path)
    own = tmp_path / "own.sql"
    own.write_bytes(b"-- MariaDB dump 10.19\nUSE `app`;\nCREATE TABLE `items` (\n  `id` int\n);"
                    b"\nINSERT INTO `items` VALUES (1),(2),(3);\n-- Dump completed on 2026-12-01\n")
    out = _action("rollback.db.verify")(_ctx(config, Store(config.state_dir)),
                                        {"database": "app", "artifact": str(own),
                                         "section": None}, {})
    assert out["artifact"] == str(own)
    assert out["section"]["type"] == "mysql"
    assert out["section"]["databases"]["app"]["tables"] == {"items": 3}


def test_the_safety_sets_time_is_utc_whatever_the_local_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stamp = db_rollback._iso()
        after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert before <= stamp <= after
