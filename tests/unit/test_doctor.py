"""`backout doctor` with fakes for every outside fact (engine, Compose, databases,
images, disk) and a real store and lock: each check passes and fails for its own
reason, names its fix, and the command exits 0 only when every check passes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backout.cli.main import main
from backout.config.model import Config, DatabaseConfig
from backout.environment import Environment
from backout.errors import BackoutError, DockerUnavailableError
from backout.operations.executor import Executor
from backout.operations.plan import Plan, Step
from backout.setup.doctor import Sources, run_doctor
from backout.state import OperationLock, Store
from backout.storage.sets import SetWriter
from tests.support.fakes import run_context

IMAGE = "sha256:" + "a" * 64


def _config(tmp_path: Path) -> Config:
    return Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                  databases={"mysql": DatabaseConfig("mysql", "mysql", "db"),
                             "cache": DatabaseConfig("cache", "redis", "redis")})


def _sources(**override: Any) -> Sources:
    fields: dict[str, Any] = dict(
        engine_version=lambda: "24.0.7", compose_version=lambda: "2.40.3",
        git_repository=lambda _p: True, which=lambda tool: f"/usr/bin/{tool}",
        disk_free=lambda _p: SimpleNamespace(free=50 * 2**30),
        database_version=lambda db: {"mysql": "10.11.6-MariaDB", "redis": "7.0.15"}[db.type],
        image_present=lambda _image: True)
    fields.update(override)
    return Sources(**fields)


def _store(config: Config, images: dict[str, str] | None = None) -> Store:
    store = Store(config.state_dir)
    for _ in range(2):
        store.add_release(git_commit="c" * 40, git_dirty=False, diff_path=None, compose_config={},
                          services={svc: {"image": f"{svc}:1", "image_id": image}
                                    for svc, image in (images or {"web": IMAGE}).items()})
    return store


def _by_name(report: Any) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


def test_everything_ready(tmp_path: Path) -> None:
    config = _config(tmp_path)
    report = run_doctor(Environment(), config, None, _store(config), _sources())
    assert report.ok and report.failed == []
    names = [c.name for c in report.checks]
    assert names == ["docker engine", "docker compose", "config", "git repository", "zstd",
                     "disk room", "database mysql", "database cache", "retained images", "lock",
                     "interrupted operation"]
    checks = _by_name(report)
    assert "10.11.6-MariaDB" in checks["database mysql"].detail
    assert all(c.fix is None for c in report.checks)


def test_the_engine_down_fails_and_what_needs_it_is_not_claimed(tmp_path: Path) -> None:
    config = _config(tmp_path)

    def down() -> str:
        raise DockerUnavailableError("Docker Engine is not reachable", fix="start dockerd")

    checked: list[str] = []
    report = run_doctor(Environment(), config, None, _store(config), _sources(
        engine_version=down, image_present=lambda image: checked.append(image) or True))
    checks = _by_name(report)
    assert not checks["docker engine"].ok and checks["docker engine"].fix == "start dockerd"
    assert not checks["database mysql"].ok and "not checked" in checks["database mysql"].detail
    assert not checks["retained images"].ok and checked == []
    assert checks["lock"].ok  # what does not need the engine is still checked


def test_old_versions_and_missing_tools(tmp_path: Path) -> None:
    config = _config(tmp_path)

    def no_compose() -> str:
        raise BackoutError("Docker Compose v2 does not answer: not installed")

    report = run_doctor(Environment(), config, None, _store(config), _sources(
        engine_version=lambda: "19.03.12", compose_version=no_compose,
        which=lambda tool: None, git_repository=lambda _p: False))
    checks = _by_name(report)
    assert "older than 20.10" in checks["docker engine"].detail
    assert not checks["docker compose"].ok and "Compose v2" in str(checks["docker compose"].fix)
    assert not checks["zstd"].ok and "apt-get install zstd" in str(checks["zstd"].fix)
    assert not checks["git repository"].ok and "git init" in str(checks["git repository"].fix)
    old = run_doctor(Environment(), config, None, _store(config),
                     _sources(compose_version=lambda: "v2.12.2"))
    assert "older than v2.17" in _by_name(old)["docker compose"].detail


def test_a_database_that_does_not_answer_names_why(tmp_path: Path) -> None:
    config = _config(tmp_path)

    def version(db: DatabaseConfig) -> str:
        if db.name == "mysql":
            raise BackoutError("mysql: access denied for user root (using password: YES)",
                               fix="check databases.mysql.password_env")
        return "7.0"

    report = run_doctor(Environment(), config, None, _store(config),
                        _sources(database_version=version))
    checks = _by_name(report)
    assert not checks["database mysql"].ok and "access denied" in checks["database mysql"].detail
    assert checks["database mysql"].fix == "check databases.mysql.password_env"
    assert checks["database cache"].ok and report.failed == [checks["database mysql"]]


def test_retained_images_of_the_last_releases(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = _store(config, {"web": IMAGE, "api": "sha256:" + "b" * 64})
    report = run_doctor(Environment(), config, None, store,
                        _sources(image_present=lambda image: image == IMAGE))
    check = _by_name(report)["retained images"]
    assert not check.ok and "release 2: api" in check.detail and "release 1: api" in check.detail
    fresh = _config(tmp_path / "fresh")
    report = run_doctor(Environment(), fresh, None, None, _sources())
    check = _by_name(report)["retained images"]
    assert not check.ok and "no release recorded" in check.detail
    assert "backout release record" in str(check.fix)
    assert not (fresh.state_dir / "state.db").exists()  # doctor made no store


def test_disk_room_for_the_next_checkpoint(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = _store(config)
    writer = SetWriter(config.backup_dir, "20261201T000000Z-ab").open()
    (writer.dir / "mysql.sql.zst").write_bytes(b"x" * 4096)
    writer.publish({"format": "backout-backup", "format_version": 1,
                    "artifacts": {"mysql.sql.zst": {"bytes": 4096}}})
    store.db.execute("INSERT INTO checkpoints (created_at, created_by, release_id, label, path,"
                     " status) VALUES ('t', 'me', 2, NULL, '20261201T000000Z-ab', 'complete')")
    tight = run_doctor(Environment(), config, None, store,
                       _sources(disk_free=lambda _p: SimpleNamespace(free=5000)))
    check = _by_name(tight)["disk room"]
    assert not check.ok and "not enough room" in check.detail and "prune" in str(check.fix)
    roomy = run_doctor(Environment(), config, None, store, _sources())
    assert _by_name(roomy)["disk room"].ok


def test_the_lock_held_and_an_interrupted_operation(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = _store(config)
    with OperationLock(config.state_dir).acquire("backout rollback db"):
        check = _by_name(run_doctor(Environment(), config, None, store, _sources()))["lock"]
        assert not check.ok and "backout rollback db" in check.detail
    plan = Plan("rollback.db", {}, (Step("x", "emergency.up", "r"),), summary="s")
    op = Executor(store, run_context(store)).start(plan)  # journaled, never finished: as after a kill -9
    check = _by_name(run_doctor(Environment(), config, None, store, _sources()))[
        "interrupted operation"]
    assert not check.ok and f"#{op}" in check.detail and "backout resume" in str(check.fix)


def test_a_broken_config_still_checks_the_engine(tmp_path: Path) -> None:
    report = run_doctor(Environment(), None, BackoutError("backout.toml: invalid TOML",
                                                          fix="correct the syntax"),
                        None, _sources())
    assert [c.name for c in report.checks] == ["docker engine", "docker compose", "config"]
    assert report.failed[0].fix == "correct the syntax"


def test_the_command_exits_0_or_1_and_speaks_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import backout.setup.doctor

    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "backout.toml").write_text(
        '[project]\ncompose_files = ["docker-compose.yml"]\nenv_file = ""\n')
    _store(Config(path=tmp_path / "backout.toml", project_dir=tmp_path))
    monkeypatch.setattr(backout.setup.doctor, "real_sources", lambda env, config: _sources())
    assert main(["doctor", "--json", "--project-dir", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["command"] == "doctor" and data["failed"] == []
    assert {"name", "ok", "detail", "fix"} <= set(data["checks"][0])
    monkeypatch.setattr(backout.setup.doctor, "real_sources",
                        lambda env, config: _sources(which=lambda tool: None))
    assert main(["doctor", "--project-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL zstd: zstd is not installed" in out and "fix: install it" in out
    assert out.strip().endswith("doctor: 1 problem(s): zstd")
