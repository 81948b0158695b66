"""The journaling executor with fake actions on a real SQLite store: each step is
journaled before and after it runs, failures skip later steps except `always`
ones, and a resumed run skips what is done and re-runs what was interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from backout.errors import ExternalError
from backout.operations.executor import Executor, RunContext, load_plan, register_action
from backout.operations.plan import Plan, Step
from backout.state import Store
from tests.support.fakes import run_context

CALLS: list[str] = []


@register_action("test.record")
def _record(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    CALLS.append(params["name"])
    return {"seen": sorted(results)}


@register_action("test.fail")
def _fail(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    CALLS.append("fail")
    raise ExternalError("boom")


def _plan(*steps: Step) -> Plan:
    return Plan("test", {}, steps, summary="test plan")


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


def test_steps_run_in_order_and_see_earlier_results(tmp_path: Path) -> None:
    store = Store(tmp_path)
    plan = _plan(Step("a", "test.record", "first", {"name": "a"}),
                 Step("b", "test.record", "second", {"name": "b"}))
    ex = Executor(store, run_context(store))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "succeeded"
    assert CALLS == ["a", "b"]
    assert outcome.results["b"] == {"seen": ["a"]}
    rows = store.db.execute("SELECT name, status, started_at, finished_at FROM steps ORDER BY seq")
    assert [(r["name"], r["status"]) for r in rows] == [("a", "done"), ("b", "done")]
    assert store.history()[0]["status"] == "succeeded"


def test_failure_skips_later_steps_but_runs_always_steps(tmp_path: Path) -> None:
    store = Store(tmp_path)
    plan = _plan(Step("a", "test.record", "", {"name": "a"}),
                 Step("x", "test.fail", ""),
                 Step("b", "test.record", "", {"name": "b"}),
                 Step("cleanup", "test.record", "", {"name": "cleanup"}, always=True))
    ex = Executor(store, run_context(store))
    outcome = ex.run(plan, ex.start(plan))
    assert outcome.status == "failed" and outcome.failed_step == "x"
    assert CALLS == ["a", "fail", "cleanup"]
    statuses = [r["status"] for r in store.db.execute("SELECT status FROM steps ORDER BY seq")]
    assert statuses == ["done", "failed", "skipped", "done"]


def test_plan_round_trips_through_the_journal(tmp_path: Path) -> None:
    store = Store(tmp_path)
    plan = _plan(Step("a", "test.record", "why a", {"name": "a"}, always=True))
    op = Executor(store, run_context(store)).start(plan)
    assert load_plan(store, op) == plan
    assert [o["id"] for o in store.unfinished_operations()] == [op]


CRASHER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from tests.unit.test_executor import _plan, Step
    from backout.operations.executor import Executor
    from backout.state import Store
    from tests.support.fakes import run_context
    store = Store(Path(sys.argv[1]))
    plan = _plan(Step("a", "test.record", "", {"name": "a"}),
                 Step("b", "test.record", "", {"name": "b"}),
                 Step("c", "test.record", "", {"name": "c"}))
    ex = Executor(store, run_context(store))
    ex.run(plan, ex.start(plan))
""")


@pytest.mark.parametrize("point", ["step-0-started", "step-1-started", "step-1-done",
                                   "step-2-done"])
def test_kill_9_then_resume_finishes_the_plan(tmp_path: Path, point: str) -> None:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, BACKOUT_FAULT_INJECT=f"{point}=kill")
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path), root], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    store = Store(tmp_path)
    [op] = store.unfinished_operations()
    plan = load_plan(store, op["id"])
    outcome = Executor(store, run_context(store)).run(plan, op["id"])
    assert outcome.status == "succeeded"
    done_before = {"step-0-started": [], "step-1-started": ["a"], "step-1-done": ["a", "b"],
                   "step-2-done": ["a", "b", "c"]}[point]
    # resumed run executes exactly the steps not journaled as done
    assert [s for s in ["a", "b", "c"] if s not in done_before] == CALLS
    details = [json.loads(r["detail"]) for r in
               store.db.execute("SELECT detail FROM steps WHERE operation_id = ? ORDER BY seq",
                                (op["id"],))]
    assert details[-1] == {"seen": ["a", "b"]}


def test_only_always_runs_just_the_cleanup_of_an_abandoned_plan(tmp_path: Path) -> None:
    store = Store(tmp_path)
    plan = _plan(Step("a", "test.record", "", {"name": "a"}),
                 Step("b", "test.record", "", {"name": "b"}),
                 Step("cleanup", "test.record", "", {"name": "cleanup"}, always=True))
    ex = Executor(store, run_context(store))
    op = ex.start(plan)
    outcome = ex.run(plan, op, only_always=True)
    assert CALLS == ["cleanup"]
    assert outcome.results == {"cleanup": {"seen": []}}


def test_on_failure_steps_run_only_after_a_failure(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ok_plan = _plan(Step("a", "test.record", "", {"name": "a"}),
                    Step("undo", "test.record", "", {"name": "undo"}, on_failure=True),
                    Step("report", "test.record", "", {"name": "report"}, always=True))
    ex = Executor(store, run_context(store))
    assert ex.run(ok_plan, ex.start(ok_plan)).status == "succeeded"
    assert CALLS == ["a", "report"]
    CALLS.clear()
    bad_plan = _plan(Step("x", "test.fail", ""),
                     Step("b", "test.record", "", {"name": "b"}),
                     Step("undo", "test.record", "", {"name": "undo"}, on_failure=True),
                     Step("report", "test.record", "", {"name": "report"}, always=True))
    op = ex.start(bad_plan)
    outcome = ex.run(bad_plan, op)
    assert outcome.status == "failed" and outcome.failed_step == "x"
    assert CALLS == ["fail", "undo", "report"]
    statuses = [r["status"] for r in store.db.execute(
        "SELECT status FROM steps WHERE operation_id = ? ORDER BY seq", (op,))]
    assert statuses == ["failed", "skipped", "done", "done"]
    assert "only if an earlier step fails" in "\n".join(bad_plan.render())


def test_resume_after_a_failure_keeps_it_failed_and_finishes_the_on_failure_steps(
        tmp_path: Path) -> None:
    """Interrupted after step x failed and while `undo` ran: the resumed run must not
    retry x nor run b, but finish undo and report, as the first run would have."""
    store = Store(tmp_path)
    plan = _plan(Step("x", "test.fail", ""),
                 Step("b", "test.record", "", {"name": "b"}),
                 Step("undo", "test.record", "", {"name": "undo"}, on_failure=True),
                 Step("report", "test.record", "", {"name": "report"}, always=True))
    ex = Executor(store, run_context(store))
    op = ex.start(plan)
    store.db.execute("UPDATE steps SET status = 'failed', detail = ? WHERE operation_id = ? "
                     "AND seq = 0", (json.dumps({"error": "boom"}), op))
    store.db.execute("UPDATE steps SET status = 'running' WHERE operation_id = ? AND seq = 2",
                     (op,))
    outcome = ex.run(plan, op)
    assert CALLS == ["undo", "report"]
    assert outcome.status == "failed" and outcome.failed_step == "x"
    assert outcome.error is not None and "boom" in outcome.error.message
