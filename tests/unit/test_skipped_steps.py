"""A step that did nothing is never reported as done: an action that decides to skip
(a code-only rollback leaves the data alone) and a step the executor does not run
(an on-failure step after a success, a step after a failure) are reported as
``skipped`` with their reason, to the terminal callback, in the outcome and in the
CLI's rendering. The demo's code-only rollback once printed ``restore redis: ok``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backout.cli.common import step_line
from backout.errors import ExternalError
from backout.operations.executor import Executor, RunContext, register_action
from backout.operations.plan import Plan, Step
from backout.state import Store
from tests.support.fakes import run_context


@register_action("test.skip_data")
def _skip_data(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    return {"skipped": "code-only rollback: the data stays"}


@register_action("test.noop")
def _noop(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    return {"did": params.get("name")}


@register_action("test.boom")
def _boom(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    raise ExternalError("boom")


def _run(tmp_path: Path, *steps: Step) -> tuple[Any, list[tuple[str, str, str | None]]]:
    seen: list[tuple[str, str, str | None]] = []
    store = Store(tmp_path)
    plan = Plan("test", {}, steps, summary="test")
    ex = Executor(store, run_context(store), lambda step, status, detail: seen.append((step.name, status, detail)))
    return ex.run(plan, ex.start(plan)), seen


def test_an_action_that_skips_is_reported_skipped_with_its_reason(tmp_path: Path) -> None:
    outcome, seen = _run(tmp_path, Step("restore redis", "test.skip_data", "r"),
                         Step("start", "test.noop", "s"))
    assert ("restore redis", "skipped", "code-only rollback: the data stays") in seen
    assert not any(name == "restore redis" and status == "done" for name, status, _ in seen)
    reports = {r.name: r for r in outcome.steps}
    assert reports["restore redis"].status == "skipped"
    assert reports["restore redis"].reason == "code-only rollback: the data stays"
    assert reports["start"].status == "done"
    # later steps still see the decision (the deploy's outcome reads it)
    assert outcome.results["restore redis"] == {"skipped": "code-only rollback: the data stays"}


def test_steps_the_executor_does_not_run_are_reported_with_why(tmp_path: Path) -> None:
    outcome, seen = _run(tmp_path, Step("a", "test.noop", "a"),
                         Step("roll back", "test.noop", "rb", on_failure=True))
    assert ("roll back", "skipped", "runs only if an earlier step fails") in seen
    assert [(r.name, r.status) for r in outcome.steps] == [("a", "done"),
                                                           ("roll back", "skipped")]
    outcome, seen = _run(tmp_path / "2", Step("x", "test.boom", "x"),
                         Step("b", "test.noop", "b"), Step("cleanup", "test.noop", "c",
                                                           always=True))
    skipped = [(n, d) for n, s, d in seen if s == "skipped"]
    assert skipped == [("b", "an earlier step failed (x)")]
    failed = next(r for r in outcome.steps if r.name == "x")
    assert failed.status == "failed" and failed.reason is not None and "boom" in failed.reason
    assert [r.to_json()["status"] for r in outcome.steps] == ["failed", "skipped", "done"]


def test_the_terminal_line_of_a_skipped_step_says_skipped_and_why() -> None:
    step = Step("restore redis", "x", "r")
    line = step_line(step, "skipped", "code-only rollback: the data stays", tty=True)
    assert line == "  restore redis: skipped (code-only rollback: the data stays)\n"
    assert "ok" not in line
    assert step_line(step, "done", None, tty=True) == "  restore redis: ok\n"
    assert step_line(step, "running", None, tty=False) is None
    assert step_line(step, "failed", "boom", tty=False) == "  restore redis: FAILED (boom)\n"


def test_the_json_of_a_run_lists_every_step_outcome(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, Step("restore redis", "test.skip_data", "r"))
    assert [r.to_json() for r in outcome.steps] == [
        {"name": "restore redis", "status": "skipped",
         "reason": "code-only rollback: the data stays"}]
