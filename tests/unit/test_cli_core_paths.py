"""The commands whose logic moved from cli/ to the core (issue 12, stage D): status,
backups prune, resume and history, run in-process through ``main`` with the real
state store and a fake platform (no Docker). Output and exit codes are the CLI's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import backout.platforms
from backout.cli.main import main
from backout.errors import DockerUnavailableError
from backout.operations.executor import Executor, RunContext, register_action
from backout.operations.plan import Plan, Step
from backout.state import Store
from backout.storage import sets
from tests.support.fakes import FakePlatform, run_context

RAN: list[str] = []


@register_action("test.core_paths.note")
def _note(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    RAN.append(params["name"])
    return {"noted": params["name"]}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "backout.toml").write_text(
        '[project]\ncompose_files = ["docker-compose.yml"]\nenv_file = ""\n'
        '[backups]\ndir = "backups"\nkeep_last = 1\nkeep_daily = 0\n')
    return tmp_path


@pytest.fixture
def platform(project: Path, monkeypatch: pytest.MonkeyPatch) -> FakePlatform:
    fake = FakePlatform(project, running={"app": "sha256:" + "a" * 64})
    fake.stack["services"]["app"]["image"] = "sha256:" + "a" * 64
    monkeypatch.setattr(backout.platforms, "for_config", lambda env, config: fake)
    return fake


def run(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = main([*args, "--json", "--project-dir", str(project)])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def human(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, "--project-dir", str(project)])
    out, err = capsys.readouterr()
    return code, out, err


def a_set(backup_dir: Path, set_id: str, completed_at: str) -> None:
    path = backup_dir / set_id
    path.mkdir(parents=True)
    (path / sets.MANIFEST).write_text(json.dumps(
        {"format": sets.FORMAT, "format_version": sets.FORMAT_VERSION, "kind": "backup",
         "completed_at": completed_at, "artifacts": {}}))


def unfinished(project: Path, *names: str) -> int:
    """An operation whose plan was journaled but never ran (a kill -9 at once)."""
    store = Store(project / ".backout")
    plan = Plan("test", {}, tuple(Step(n, "test.core_paths.note", n, params={"name": n})
                                  for n in names), summary="test plan")
    return Executor(store, run_context(store)).start(plan)


# ----------------------------------------------------------------------------- status


def test_status_of_a_fresh_project(project: Path, platform: FakePlatform,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, data, err = run(project, capsys, "status")
    assert code == 0 and err == ""
    assert data["command"] == "status" and data["ok"] is True
    assert data["release"] is None and data["checkpoint"] is None and data["lock"] is None
    assert data["interrupted"] == [] and data["drift"] == {} and data["warnings"] == []
    assert data["project_dir"] == str(project)
    code, out, _ = human(project, capsys, "status")
    assert code == 0
    assert out.splitlines()[:4] == [f"project:    {project}", "release:    none recorded",
                                    "checkpoint: none", "lock:       free"]


def test_status_names_an_interrupted_operation_and_drift(
        project: Path, platform: FakePlatform, capsys: pytest.CaptureFixture[str]) -> None:
    op = unfinished(project, "first")
    platform.stack["services"]["app"]["image"] = "sha256:" + "b" * 64  # compose names another
    platform.images["sha256:" + "b" * 64] = "sha256:" + "b" * 64
    code, data, _ = run(project, capsys, "status")
    assert code == 0
    assert data["interrupted"] == [{"id": op, "kind": "test"}]
    assert data["last_operation"]["id"] == op and data["last_operation"]["status"] == "running"
    assert set(data["drift"]) == {"app"}
    _, out, _ = human(project, capsys, "status")
    assert f"INTERRUPTED: operation #{op} (test) did not finish: run `backout resume`" in out
    assert "DRIFT: app runs" in out


def test_status_with_the_engine_down_warns_and_exits_1(
        project: Path, platform: FakePlatform, capsys: pytest.CaptureFixture[str]) -> None:
    platform.fail_on("containers", DockerUnavailableError("the Docker Engine does not answer"))
    code, data, err = run(project, capsys, "status")
    assert code == 1, (data, err)
    assert data["drift"] is None and data["baseline"] is None
    [warning] = data["warnings"]
    assert warning.startswith("cannot compare running images: the Docker Engine does not answer")
    assert err.startswith("backout: cannot compare running images:")


# ----------------------------------------------------------------------------- prune


def test_prune_keeps_the_newest_and_removes_the_rest(project: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    backups = project / "backups"
    a_set(backups, "20261101T000000Z-aaaa", "2026-11-01T00:00:00Z")
    a_set(backups, "20261102T000000Z-bbbb", "2026-11-02T00:00:00Z")
    (backups / f"{sets.PARTIAL}20261103T000000Z-cccc").mkdir()
    code, data, _ = run(project, capsys, "backups", "prune", "--dry-run")
    assert code == 0 and data["dry_run"] is True
    assert data["removed"] == ["20261101T000000Z-aaaa"]
    assert data["removed_partial_sets"] == [f"{sets.PARTIAL}20261103T000000Z-cccc"]
    assert data["kept"] == {"20261102T000000Z-bbbb": "newest set"}
    assert (backups / "20261101T000000Z-aaaa").is_dir()  # a dry run removes nothing
    code, out, _ = human(project, capsys, "backups", "prune")
    assert code == 0
    assert out.splitlines() == [
        "removed: 20261101T000000Z-aaaa",
        f"removed partial sets of interrupted runs: {sets.PARTIAL}20261103T000000Z-cccc",
        "  keep 20261102T000000Z-bbbb: newest set"]
    assert sorted(p.name for p in backups.iterdir()) == ["20261102T000000Z-bbbb"]
    events = Store(project / ".backout").events(5)
    assert [e["action"] for e in events] == ["backups.prune"]


def test_prune_keeps_what_an_interrupted_operation_uses(project: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    backups = project / "backups"
    a_set(backups, "20261101T000000Z-aaaa", "2026-11-01T00:00:00Z")
    a_set(backups, "20261102T000000Z-bbbb", "2026-11-02T00:00:00Z")
    store = Store(project / ".backout")
    plan = Plan("test", {"set_id": "20261101T000000Z-aaaa"},
                (Step("read", "test.core_paths.note", "r",
                      params={"name": "r", "set_id": "20261101T000000Z-aaaa"}),),
                summary="test")
    Executor(store, run_context(store)).start(plan)
    code, data, _ = run(project, capsys, "backups", "prune")
    assert code == 0 and data["removed"] == []
    assert data["kept"]["20261101T000000Z-aaaa"] == \
        "used by an unfinished operation (`backout resume`)"
    assert (backups / "20261101T000000Z-aaaa").is_dir()


def test_prune_with_nothing_to_remove_takes_no_lock_and_records_nothing(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = human(project, capsys, "backups", "prune")
    assert code == 0 and out == "removed: nothing\n"
    assert Store(project / ".backout").events(5) == []


# ----------------------------------------------------------------------------- resume


def test_resume_with_nothing_unfinished(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "backups" / f"{sets.PARTIAL}20261103T000000Z-cccc").mkdir(parents=True)
    code, data, _ = run(project, capsys, "resume")
    assert code == 0 and data["resumed"] is None
    assert data["removed_partial_sets"] == [f"{sets.PARTIAL}20261103T000000Z-cccc"]
    code, out, _ = human(project, capsys, "resume")
    assert code == 0 and out == "nothing to resume\n"


def test_resume_runs_the_unfinished_operation(project: Path, platform: FakePlatform,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    RAN.clear()
    op = unfinished(project, "one", "two")
    code, data, err = run(project, capsys, "resume")
    assert code == 0 and RAN == ["one", "two"]
    assert data["resumed"] == op and data["kind"] == "test" and data["status"] == "succeeded"
    assert [s["status"] for s in data["steps"]] == ["done", "done"]
    assert "one: ok" not in err  # --json: no step lines
    RAN.clear()
    code, out, _ = human(project, capsys, "resume")
    assert code == 0 and out == "nothing to resume\n" and RAN == []  # it is finished now


def test_resume_renders_step_lines_and_the_outcome(project: Path, platform: FakePlatform,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    op = unfinished(project, "one")
    code, out, err = human(project, capsys, "resume")
    assert code == 0
    assert out.splitlines()[0] == f"resumed operation #{op} (test): succeeded"
    assert "  one: ok\n" in err


# ----------------------------------------------------------------------------- history


def test_history_lists_operations_with_their_duration(project: Path, platform: FakePlatform,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = human(project, capsys, "history")
    assert code == 0 and out == "no operations\n"
    done_op = unfinished(project, "one")
    human(project, capsys, "resume")
    running_op = unfinished(project, "two")
    code, data, _ = run(project, capsys, "history")
    assert code == 0
    ops = data["operations"]
    assert [o["id"] for o in ops] == [running_op, done_op]
    assert ops[0]["status"] == "running" and ops[0]["duration_s"] is None
    assert ops[1]["status"] == "succeeded" and ops[1]["duration_s"] >= 0
    code, out, _ = human(project, capsys, "history", "--limit", "1")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATUS", "STARTED", "TOOK", "ERROR"]
    assert len(lines) == 2 and lines[1].split()[:3] == [str(running_op), "test", "running"]
    assert lines[1].split()[4] == "-"


def test_resume_takes_the_newest_unfinished_operation(project: Path, platform: FakePlatform,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    RAN.clear()
    older = unfinished(project, "older")
    newer = unfinished(project, "newer")
    code, data, _ = run(project, capsys, "resume")
    assert code == 0 and data["resumed"] == newer and RAN == ["newer"]
    code, data, _ = run(project, capsys, "resume")
    assert code == 0 and data["resumed"] == older and RAN == ["newer", "older"]
