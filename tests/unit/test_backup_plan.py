"""The backup and checkpoint plan (``backout.backup.operation.plan_backup``) as data:
every step's key, action, parameters, always-flag and the facts its reason tells the
operator; the plan's summary, downtime and parameters; who counts as a writer; the
refusals (unknown names, nothing to back up, a quiesce without writers) with their
error class and fix; and the manifest's timestamps that come from the dumps."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from backout.backup import operation
from backout.backup.operation import plan_backup, writers
from backout.config import Config
from backout.config.load import parse_document
from backout.config.model import DatabaseConfig, ServiceConfig
from backout.errors import NotFoundError, UsageError
from backout.operations.executor import Executor
from backout.state import Store
from backout.storage import sets
from tests.support.fakes import FakeEngine, FakePlatform, install_engine, run_context

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

[volumes.uploads]
volume = "uploads_data"
service = "web"
stop_service = true

[volumes.cache_files]
volume = "cachefiles"
"""

SET_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")


def _config(tmp_path: Path, text: str = CONFIG) -> Config:
    return parse_document("backout.toml", text, tmp_path)


def _by_key(plan: Any) -> dict[str, Any]:
    return {s.key: s for s in plan.steps}


# --------------------------------------------------------------------------- writers


def test_writers_are_the_app_services_writing_to_any_of_the_databases_sorted() -> None:
    config = Config(path=Path("b.toml"), project_dir=Path("."), services={
        "zeta": ServiceConfig("zeta", writes_to=("app",)),
        "alpha": ServiceConfig("alpha", writes_to=("cache", "app")),
        "proxy": ServiceConfig("proxy", kind="proxy", writes_to=("app",)),  # not an app
        "reader": ServiceConfig("reader"),
        "other": ServiceConfig("other", writes_to=("logs",))},
        databases={n: DatabaseConfig(n, "mysql", n) for n in ("app", "cache", "logs")})
    assert writers(config, ["app"]) == ["alpha", "zeta"]
    assert writers(config, ["cache"]) == ["alpha"]
    assert writers(config, ["cache", "logs"]) == ["alpha", "other"]
    assert writers(config, []) == []


# --------------------------------------------------------------------------- the plan


def test_a_quiesced_checkpoint_plan_step_by_step(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["app", "cache"], quiesce=True, checkpoint=True,
                       label="before v2")
    set_id = plan.params["set_id"]
    assert SET_ID.match(set_id)
    assert plan.kind == "checkpoint"
    assert plan.params == {"set_id": set_id, "databases": ["app", "cache"], "volumes": [],
                           "quiesce": True, "label": "before v2"}
    assert [(s.key, s.action, s.always, s.on_failure) for s in plan.steps] == [
        ("cleanup", "backup.cleanup", False, False),
        ("stop-writers", "compose.stop", False, False),
        ("dump:app", "backup.dump", False, False),
        ("dump:cache", "backup.dump", False, False),
        ("start-writers", "compose.start", True, False),
        ("publish", "backup.publish", False, False),
        ("discard", "backup.discard", True, False),
        ("record-checkpoint", "backup.record_checkpoint", False, False)]
    steps = _by_key(plan)
    assert steps["cleanup"].name == "clean up interrupted backups"
    assert steps["cleanup"].params == {"keep": set_id}
    assert "never a published set" in steps["cleanup"].reason
    stop = steps["stop-writers"]
    assert stop.name == "stop writers: web, worker"
    assert stop.params == {"services": ["web", "worker"]}
    assert "app, cache share one point in time" in stop.reason
    assert "downtime for these services" in stop.reason
    assert steps["dump:app"].name == "dump app"
    assert steps["dump:app"].params == {"database": "app", "set_id": set_id}
    assert steps["dump:app"].reason.startswith("mysql on service db: consistent dump")
    assert steps["dump:cache"].reason.startswith("redis on service redis:")
    assert "read-only for the database" in steps["dump:cache"].reason
    start = steps["start-writers"]
    assert start.name == "start writers: web, worker"
    assert start.params == {"services": ["web", "worker"], "stop_step": "stop-writers"}
    assert "also when a dump failed" in start.reason
    publish = steps["publish"]
    assert publish.name == "publish backup set"
    assert publish.params == {"set_id": set_id, "databases": ["app", "cache"], "volumes": [],
                              "quiesce": True, "label": "before v2", "kind": "checkpoint"}
    assert "manifest.json last" in publish.reason and "atomically" in publish.reason
    assert steps["discard"].params == {"set_id": set_id}
    assert steps["discard"].name == "remove the partial set if it was not published"
    assert "half-written set" in steps["discard"].reason
    record = steps["record-checkpoint"]
    assert record.name == "record checkpoint"
    assert record.params == {"set_id": set_id, "label": "before v2"}
    assert "current release" in record.reason
    assert plan.summary == f"checkpoint of app, cache (quiesced) into set {set_id}"
    assert plan.downtime == "web, worker stopped while the dumps run"


def test_an_online_backup_plan_has_no_stop_no_record_and_no_downtime(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["cache"], quiesce=False, checkpoint=False, label=None)
    set_id = plan.params["set_id"]
    assert plan.kind == "backup"
    assert [s.key for s in plan.steps] == ["cleanup", "dump:cache", "publish", "discard"]
    assert _by_key(plan)["publish"].params == {
        "set_id": set_id, "databases": ["cache"], "volumes": [], "quiesce": False,
        "label": None, "kind": "backup"}
    assert plan.params == {"set_id": set_id, "databases": ["cache"], "volumes": [],
                           "quiesce": False, "label": None}
    assert plan.summary == f"backup of cache into set {set_id}"
    assert plan.downtime == "none (online dumps)"
    assert not any(s.always for s in plan.steps[:-1])


def test_each_plan_gets_its_own_set(tmp_path: Path) -> None:
    config = _config(tmp_path)
    one = plan_backup(config, which=["app"], quiesce=False, checkpoint=False, label=None)
    two = plan_backup(config, which=["app"], quiesce=False, checkpoint=False, label=None)
    assert one.params["set_id"] != two.params["set_id"]


def test_volumes_stop_only_their_service_and_always_start_it_again(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["uploads", "app", "cache_files"], quiesce=True,
                       checkpoint=False, label="v")
    set_id = plan.params["set_id"]
    assert [(s.key, s.action, s.always) for s in plan.steps] == [
        ("cleanup", "backup.cleanup", False),
        ("stop-writers", "compose.stop", False),
        ("dump:app", "backup.dump", False),
        ("stop-for-volume:uploads", "compose.stop", False),
        ("volume:uploads", "backup.volume", False),
        ("start-after-volume:uploads", "compose.start", True),
        ("volume:cache_files", "backup.volume", False),
        ("start-writers", "compose.start", True),
        ("publish", "backup.publish", False),
        ("discard", "backup.discard", True)]
    steps = _by_key(plan)
    stop = steps["stop-for-volume:uploads"]
    assert stop.name == "stop web for volume uploads"
    assert stop.params == {"services": ["web"]}
    assert "volume uploads_data: web is down until the tar is done" in stop.reason
    tar = steps["volume:uploads"]
    assert tar.name == "back up volume uploads"
    assert tar.params == {"volume": "uploads", "set_id": set_id}
    assert "docker volume uploads_data" in tar.reason and "read-only" in tar.reason
    assert "docker volume cachefiles" in steps["volume:cache_files"].reason
    start = steps["start-after-volume:uploads"]
    assert start.name == "start web after volume uploads"
    assert start.params == {"services": ["web"], "stop_step": "stop-for-volume:uploads"}
    assert "web runs again, also when the tar failed" in start.reason
    # the stop of the writers names only the databases (volumes are not dumped)
    assert steps["stop-writers"].params == {"services": ["web", "worker"]}
    assert "pause writes so app share" in steps["stop-writers"].reason
    assert steps["publish"].params["databases"] == ["app"]
    assert steps["publish"].params["volumes"] == ["uploads", "cache_files"]
    assert plan.params["volumes"] == ["uploads", "cache_files"]
    assert plan.summary == (f"backup of uploads, app, cache_files (quiesced) into set {set_id}")
    assert plan.downtime == ("web, worker stopped while the dumps run; "
                             "web stopped while volume uploads is copied")


def test_a_volume_alone_is_online_unless_its_service_is_stopped(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = plan_backup(config, which=["uploads"], quiesce=False, checkpoint=False, label=None)
    assert plan.downtime == "web stopped while volume uploads is copied"
    plan = plan_backup(config, which=["cache_files"], quiesce=False, checkpoint=False,
                       label=None)
    assert plan.downtime == "none (online dumps)"
    assert [s.key for s in plan.steps] == ["cleanup", "volume:cache_files", "publish", "discard"]


def test_with_repositories_the_copy_comes_last_and_is_soft_when_asked(tmp_path: Path) -> None:
    config = _config(tmp_path, CONFIG + '\n[repositories.offsite]\nurl = "o"\n'
                     'password_env = "P"\n')
    for soft in (False, True):
        plan = plan_backup(config, which=["app"], quiesce=False, checkpoint=True, label=None,
                           copy_soft=soft)
        copy = plan.steps[-1]
        assert copy.key == "copy" and copy.action == "backup.copy"
        assert copy.params == {"set_id": plan.params["set_id"], "repositories": ["offsite"],
                               "soft": soft}
    assert plan_backup(config, which=["app"], quiesce=False, checkpoint=False,
                       label=None).steps[-1].params["soft"] is False


# --------------------------------------------------------------------------- refusals


def test_an_unknown_name_is_not_found_naming_the_first_and_what_is_configured(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(NotFoundError) as caught:
        plan_backup(config, which=["app", "ap", "nope"], quiesce=False, checkpoint=False,
                    label=None)
    assert caught.value.message == ('no database or volume "ap" in backout.toml'
                                    ' (did you mean "app"?)')
    assert caught.value.fix == "configured: app, cache, uploads, cache_files (or `all`)"
    assert caught.value.exit_code == 7
    empty = Config(path=tmp_path / "b.toml", project_dir=tmp_path)
    with pytest.raises(NotFoundError) as caught:
        plan_backup(empty, which=["app"], quiesce=False, checkpoint=False, label=None)
    assert caught.value.message == 'no database or volume "app" in backout.toml'
    assert caught.value.fix == "configured: none (or `all`)"


def test_nothing_to_back_up_is_a_usage_error_naming_the_sections(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        plan_backup(_config(tmp_path), which=[], quiesce=False, checkpoint=False, label=None)
    assert caught.value.message == "nothing configured to back up"
    assert caught.value.fix is not None
    assert "[databases.*]" in caught.value.fix and "[volumes.*]" in caught.value.fix
    assert "backout init" in caught.value.fix
    assert caught.value.exit_code == 2


def test_a_quiesce_without_writers_is_refused_naming_the_databases(tmp_path: Path) -> None:
    config = _config(tmp_path, CONFIG + '\n[databases.logs]\ntype = "redis"\nservice = "l"\n')
    with pytest.raises(UsageError) as caught:
        plan_backup(config, which=["logs"], quiesce=True, checkpoint=False, label=None)
    assert caught.value.message == ("--quiesce: no app service is configured to write to logs")
    assert caught.value.fix == "set services.<name>.writes_to in backout.toml"
    with pytest.raises(UsageError) as caught:
        plan_backup(config, which=["cache_files"], quiesce=True, checkpoint=False, label=None)
    assert caught.value.message.endswith("to write to a database")
    config = _config(tmp_path, CONFIG + '\n[databases.logs]\ntype = "redis"\nservice = "l"\n'
                     '\n[databases.audit]\ntype = "mysql"\nservice = "a"\n')
    with pytest.raises(UsageError) as caught:
        plan_backup(config, which=["logs", "audit"], quiesce=True, checkpoint=False, label=None)
    assert caught.value.message.endswith("to write to logs, audit")


# --------------------------------------------------------------------------- timestamps


class _Clock:
    """time.time() of backup.operation, fixed; strftime and gmtime are the real ones."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.strftime = time.strftime
        self.gmtime = time.gmtime

    def time(self) -> float:
        return self.now


class _TimedEngine(FakeEngine):
    """A dump whose section says how long it took (as real engines' do)."""

    def __init__(self, durations: dict[str, float]) -> None:
        super().__init__()
        self.durations = durations

    def dump(self, ctx: Any, db: DatabaseConfig, set_dir: Path) -> dict[str, Any]:
        section = super().dump(ctx, db, set_dir)
        if db.name in self.durations:
            section["database"]["duration_s"] = self.durations[db.name]
        return section


def _publish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             durations: dict[str, float], which: list[str]) -> dict[str, Any]:
    install_engine(monkeypatch, _TimedEngine(durations))
    monkeypatch.setattr(operation, "time", _Clock(1_800_000_000.0))  # 2027-01-15T08:00:00Z
    config = _config(tmp_path)
    plan = plan_backup(config, which=which, quiesce=False, checkpoint=False, label=None)
    store = Store(config.state_dir)
    ex = Executor(store, run_context(store, config, FakePlatform(running={"db": "sha256:d"})))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded", outcome
    manifest: dict[str, Any] = json.loads(
        (config.backup_dir / plan.params["set_id"] / "manifest.json").read_text())
    return manifest


def test_the_set_is_dated_from_the_start_of_its_longest_dump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _publish(tmp_path, monkeypatch, {"app": 30.0, "cache": 90.5}, ["app", "cache"])
    assert manifest["completed_at"] == "2027-01-15T08:00:00Z"
    assert manifest["created_at"] == "2027-01-15T07:58:29Z"  # 90.5 s before, truncated
    assert manifest["databases"]["cache"]["duration_s"] == 90.5


def test_a_dump_that_does_not_say_how_long_it_took_counts_as_instant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _publish(tmp_path, monkeypatch, {}, ["app"])
    assert manifest["created_at"] == manifest["completed_at"] == "2027-01-15T08:00:00Z"


def test_a_dump_starts_its_duration_before_now_and_stamps_are_utc_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert operation._dump_start({}, "app") == pytest.approx(time.time(), abs=5)
    assert operation._dump_start({"dump:app": {"database": {"duration_s": 60}}}, "app") == \
        pytest.approx(time.time() - 60, abs=5)
    assert operation._dump_start({"dump:app": None}, "app") == pytest.approx(time.time(), abs=5)
    assert operation._dump_start({"dump:app": {}}, "app") == pytest.approx(time.time(), abs=5)
    assert operation._dump_start({"dump:app": {"database": {}}}, "app") == \
        pytest.approx(time.time(), abs=0.5)  # not a second early
    assert operation._iso(0) == "1970-01-01T00:00:00Z"
    assert operation._iso(1_800_000_000.9) == "2027-01-15T08:00:00Z"


def test_the_published_manifest_lists_each_database_and_its_artifact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _publish(tmp_path, monkeypatch, {}, ["app", "cache"])
    assert manifest["format"] == sets.FORMAT and manifest["kind"] == "backup"
    assert sorted(manifest["databases"]) == ["app", "cache"]
    assert sorted(manifest["artifacts"]) == ["app.fake", "cache.fake"]
    assert manifest["artifacts"]["app.fake"]["database"] == "app"
    assert manifest["quiesce"] == {"enabled": False, "writers_paused_seconds": None}
    assert manifest["images"] == {"db": "sha256:d"}


# --------------------------------------------------------------------------- the publish action


def test_publish_writes_every_section_volume_pause_and_provenance_then_records_it(
        tmp_path: Path) -> None:
    """The publish step alone, from the results its plan's earlier steps journaled: a
    database dump, a volume, the writers' stop and start."""
    import dataclasses

    from backout import __version__
    from backout.operations.executor import action

    config = _config(tmp_path)
    store = Store(config.state_dir)
    set_id = "20270115T080000Z-abcd"
    writer = sets.SetWriter(config.backup_dir, set_id).open()
    (writer.dir / "app.fake").write_bytes(b"app")
    (writer.dir / "uploads.tar.zst").write_bytes(b"tar")
    results = {
        operation.dump_key("app"): {"database": {"type": "mysql", "duration_s": 4.0},
                                    "artifact": {"name": "app.fake", "bytes": 3}},
        operation.volume_key("uploads"): {"volume": {"docker_volume": "uploads_data"},
                                          "artifact": {"name": "uploads.tar.zst", "bytes": 3}},
        operation.STOP_WRITERS: {"stopped_at": 100.0, "stopped": ["web"]},
        operation.START_WRITERS: {"started_at": 112.3456, "started": ["web"]},
    }
    params = {"set_id": set_id, "databases": ["app"], "volumes": ["uploads"],
              "quiesce": True, "label": "before v3", "kind": "checkpoint"}
    ctx = dataclasses.replace(run_context(store, config, FakePlatform(running={"db": "sha256:d"})),
                              operation_id=7)
    out = action("backup.publish")(ctx, params, results)
    final = config.backup_dir / set_id
    assert out == {"set_id": set_id, "path": str(final)}
    assert not writer.dir.exists()
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["databases"] == {"app": {"type": "mysql", "duration_s": 4.0}}
    assert manifest["volumes"] == {"uploads": {"docker_volume": "uploads_data"}}
    assert manifest["artifacts"] == {"app.fake": {"bytes": 3}, "uploads.tar.zst": {"bytes": 3}}
    assert manifest["quiesce"] == {"enabled": True, "writers_paused_seconds": 12.346}
    assert manifest["tool"] == {"name": "backout", "version": __version__}
    assert (manifest["id"], manifest["kind"], manifest["label"]) == (set_id, "checkpoint",
                                                                      "before v3")
    assert (manifest["format"], manifest["format_version"]) == (sets.FORMAT, sets.FORMAT_VERSION)
    assert manifest["operation_id"] == 7
    assert "git_commit" in manifest and "git_dirty" in manifest
    assert manifest["images"] == {"db": "sha256:d"}
    verified = store.last_verifications()[set_id]
    assert (verified["kind"], bool(verified["ok"])) == ("checksum", True)
    assert verified["detail"] == "verified as it was written"
    # run again after the rename (a resume): the published set is read, not rewritten
    before = (final / "manifest.json").read_bytes()
    assert action("backup.publish")(ctx, params, {}) == out
    assert (final / "manifest.json").read_bytes() == before


def test_publish_without_a_start_of_the_writers_records_no_pause(tmp_path: Path) -> None:
    from backout.operations.executor import action

    config = _config(tmp_path)
    store = Store(config.state_dir)
    set_id = "20270115T080000Z-beef"
    writer = sets.SetWriter(config.backup_dir, set_id).open()
    (writer.dir / "app.fake").write_bytes(b"app")
    results = {operation.dump_key("app"): {"database": {}, "artifact": {"name": "app.fake"}},
               operation.STOP_WRITERS: {"stopped_at": 100.0, "stopped": ["web"]}}
    params = {"set_id": set_id, "databases": ["app"], "quiesce": True, "label": None,
              "kind": "backup"}
    action("backup.publish")(run_context(store, config), params, results)
    manifest = json.loads((config.backup_dir / set_id / "manifest.json").read_text())
    assert manifest["quiesce"] == {"enabled": True, "writers_paused_seconds": None}
    assert manifest["volumes"] == {}


def test_record_checkpoint_links_the_set_to_the_release_once_even_when_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backout import releases
    from backout.operations.executor import action

    config = _config(tmp_path)
    store = Store(config.state_dir)
    asked: list[int] = []
    release = store.add_release(git_commit="c" * 40, git_dirty=False, diff_path=None,
                                compose_config={}, services={})

    def current(*_a: Any) -> int:
        asked.append(1)
        return release

    monkeypatch.setattr(releases, "current_or_new_release", current)
    ctx = run_context(store, config)
    params = {"set_id": "20270115T080000Z-abcd", "label": "before v3"}
    first = action("backup.record_checkpoint")(ctx, params, {})
    cp = store.checkpoint_of_set("20270115T080000Z-abcd")
    assert cp is not None and first == {"checkpoint_id": cp.id, "release_id": release}
    assert (cp.release_id, cp.label) == (release, "before v3")
    [event] = [e for e in store.events() if e["action"] == "checkpoint"]
    assert (event["target"], event["reason"]) == (f"checkpoint {cp.id}", "before v3")
    assert event["detail"] == {"set_id": "20270115T080000Z-abcd", "release_id": release}
    # resumed after a crash between the insert and the journal: the same record, no other
    assert action("backup.record_checkpoint")(ctx, params, {}) == first
    assert len(store.checkpoints(10)) == 1 and asked == [1]
    # another set is another checkpoint
    other = action("backup.record_checkpoint")(ctx, {**params, "set_id": "x-2"}, {})
    assert other["checkpoint_id"] != first["checkpoint_id"]
