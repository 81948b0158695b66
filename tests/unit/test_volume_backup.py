"""Volume backups without Docker: the tar checker on archives made by GNU tar itself,
and the plan (stop, tar, start-always) that `--dry-run` shows."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from backout.backup.operation import plan_backup
from backout.backup.volumes import tar_argv
from backout.config.load import parse_document
from backout.engines.formats import VolumeTarChecker
from backout.errors import ExternalError, NotFoundError
from backout.operations.executor import Executor, RunContext, register_action
from backout.operations.plan import Plan, Step
from backout.state import Store
from backout.storage.pipeline import IntegrityError
from tests.support.fakes import FakePlatform, run_context


def gnu_tar_of(tree: Path) -> bytes:
    """What the throwaway container runs: `tar -C /v -cf - .` (GNU tar, its default format)."""
    return subprocess.run(["tar", "-C", str(tree), "-cf", "-", "."], capture_output=True,
                          check=True, timeout=60).stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "vol"
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "big.bin").write_bytes(os.urandom(70_000))
    long_dir = root / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_bytes(b"long name")  # > 100 chars: GNU ././@LongLink
    (root / "link").symlink_to("a.txt")
    (root / "zero").write_bytes(b"")
    return root


@pytest.mark.parametrize("size", [0, 1, 511, 513, 4096])
def test_gnu_tar_of_a_volume_lists_with_counts(tree: Path, size: int) -> None:
    data = gnu_tar_of(tree)
    checker = VolumeTarChecker("t")
    for i in range(0, len(data), size or len(data)):
        checker.feed(data[i:i + (size or len(data))])
    assert checker.finish() == {"files": 4, "dirs": 5, "symlinks": 1, "other": 0,
                                "bytes": 6 + 70_000 + 9}


def test_pax_headers_are_applied(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("./" + "p" * 150 + "/ü.txt")  # long + non-ASCII: pax records
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    checker = VolumeTarChecker("t")
    checker.feed(buf.getvalue())
    assert checker.finish()["files"] == 1


def test_a_truncated_tar_is_refused(tree: Path) -> None:
    data = gnu_tar_of(tree)
    for cut in (len(data) // 2, 512 * 3, 512):  # GNU tar pads to 10 KiB: cut inside data
        checker = VolumeTarChecker("backup X: volume-v.tar.zst")
        checker.feed(data[:cut])
        with pytest.raises(IntegrityError, match=r"volume-v\.tar\.zst: the archive is truncated"):
            checker.finish()


def test_a_flipped_header_byte_is_refused(tree: Path) -> None:
    data = bytearray(gnu_tar_of(tree))
    data[512 * 1 + 10] ^= 0x01  # the second header's name (the first is "./")
    with pytest.raises(IntegrityError, match="bad header checksum"):
        checker = VolumeTarChecker("t")
        checker.feed(bytes(data))
        checker.finish()


def test_an_archive_listing_nothing_is_refused() -> None:
    checker = VolumeTarChecker("t")
    checker.feed(b"\0" * 10240)
    with pytest.raises(IntegrityError, match="lists nothing"):
        checker.finish()


CONFIG = """
[databases.redis]
type = "redis"
service = "redis"

[services.backend]
writes_to = ["redis"]

[volumes.uploads]
volume = "uploads"
service = "backend"
stop_service = true

[volumes.cache]
volume = "cache"
"""


def test_the_plan_stops_tars_and_always_restarts() -> None:
    config = parse_document("backout.toml", CONFIG, Path("."))
    plan = plan_backup(config, which=["redis", "uploads", "cache"], quiesce=False,
                       checkpoint=True, label=None)
    steps = [(s.name, s.action, s.always) for s in plan.steps]
    assert steps[1:6] == [
        ("dump redis", "backup.dump", False),
        ("stop backend for volume uploads", "compose.stop", False),
        ("back up volume uploads", "backup.volume", False),
        ("start backend after volume uploads", "compose.start", True),
        ("back up volume cache", "backup.volume", False),
    ]
    start = plan.steps[4]
    assert start.params == {"services": ["backend"], "stop_step": "stop-for-volume:uploads"}
    assert plan.steps[2].key == "stop-for-volume:uploads"
    assert all(s.reason for s in plan.steps)
    assert "backend stopped while volume uploads is copied" in plan.downtime
    publish = next(s for s in plan.steps if s.action == "backup.publish")
    assert publish.params["volumes"] == ["uploads", "cache"]
    assert publish.params["databases"] == ["redis"]


def test_an_unknown_name_lists_databases_and_volumes() -> None:
    config = parse_document("backout.toml", CONFIG, Path("."))
    # a name that does not exist is "not found" (7), as for `rollback db`
    with pytest.raises(NotFoundError) as caught:
        plan_backup(config, which=["upload"], quiesce=False, checkpoint=False, label=None)
    assert 'no database or volume "upload"' in caught.value.message
    assert 'did you mean "uploads"?' in caught.value.message
    assert caught.value.fix is not None and "redis, uploads, cache" in caught.value.fix


def test_the_tar_runs_read_only_without_network_as_root() -> None:
    config = parse_document("backout.toml", CONFIG, Path("."))
    argv = tar_argv("proj_uploads", "sha256:abc", config.volumes["uploads"])
    assert argv[:3] == ["docker", "run", "--rm"]
    assert "proj_uploads:/v:ro" in argv and argv[3:5] == ["--network", "none"]
    assert argv[argv.index("--entrypoint") + 1] == "tar"
    assert argv[-5:] == ["-C", "/v", "-cf", "-", "."]


@register_action("test.volume-fail")
def _fail(_ctx: RunContext, _params: dict[str, Any], _r: dict[str, Any]) -> Any:
    raise ExternalError("the dump before failed")


def _stop_start(fail_first: bool) -> Plan:
    steps = [Step("dump mysql", "test.volume-fail", "fails")] if fail_first else []
    steps += [Step("stop backend for volume v", "compose.stop", "r", {"services": ["backend"]}),
              Step("start backend after volume v", "compose.start", "r",
                   {"services": ["backend"], "stop_step": "stop backend for volume v"},
                   always=True)]
    return Plan("backup", {}, tuple(steps))


def test_a_service_the_plan_never_stopped_is_not_started(tmp_path: Path) -> None:
    """The operator stopped backend on purpose; a dump failed before the volume's stop
    step ran: the always-step must not start backend."""
    platform = FakePlatform(stopped={"backend": "sha256:b"})
    store = Store(tmp_path)
    ex = Executor(store, run_context(store, platform=platform))
    plan = _stop_start(fail_first=True)
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "failed"
    assert outcome.results["start backend after volume v"]["started"] == []
    assert platform.calls == [] and platform.state == {"backend": "exited"}


def test_the_service_the_plan_stopped_is_started_again(tmp_path: Path) -> None:
    platform = FakePlatform(running={"backend": "sha256:b"})
    store = Store(tmp_path)
    ex = Executor(store, run_context(store, platform=platform))
    plan = _stop_start(fail_first=False)
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.results["start backend after volume v"]["started"] == ["backend"]
    assert platform.called("stop") == [(("backend",),)]
    assert platform.called("start") == [(("backend",),)]
    assert platform.state == {"backend": "running"}
