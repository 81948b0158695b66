"""Issue 6 acceptance on a real stack: ``backout deploy`` of a healthy ref stays, of a
5xx ref is rolled back by itself (code, and with ``--migration`` data too, also after a
``kill -9`` and ``backout resume``); preflight refusals change nothing.

The deployment repository is the stack's git repository; new releases are commits on
branches (as a CI would push a tag) while the running release stays checked out.
Traffic comes from a load generator on 127.0.0.1: error-rate rules judge requests.
The watch uses a shorter RED rule (error rate > 50 % for 10 s) so a test finishes in
seconds, not the runbook's minute; everything else is the default policy.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cli import assert_clean_error, backout, ok, ok_json
from tests.support.load import Load
from tests.support.stack import TestStack

pytestmark = pytest.mark.docker

FAST_POLICY = """
[verify]
settle_seconds = 3

[monitor]
interval_seconds = 2
window_seconds = 10

[[monitor.rules]]
name = "red-error-rate"
signal = "error_rate"
comparison = ">"
threshold = 0.5
for_seconds = 10
level = "RED"
severity = "SEV-1"
action = "rollback-emergency"
clear_threshold = 0.1
clear_for_seconds = 10
"""


@pytest.fixture(scope="module")
def dstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestStack]:
    stack = TestStack.create(tmp_path_factory.mktemp("deploy"))
    try:
        stack.build_images()
        stack.up()
        stack.seed()
        ok(backout("init", cwd=stack.project_dir))
        config = stack.project_dir / "backout.toml"
        # The 5xx version logs each injected error; a deploy would be rolled back at
        # its verify step for that alone. Allow them, so the watch (the decision
        # matrix on live traffic) is what catches the bad release here.
        text = config.read_text().replace(
            "[services.backend]\n", "[services.backend]\nlog_error_allowance = 1000000\n", 1)
        assert "log_error_allowance = 1000000" in text
        config.write_text(text + FAST_POLICY)
        ok(backout("config", "check", cwd=stack.project_dir))
        yield stack
    finally:
        stack.down()


def branch_with(stack: TestStack, name: str, edit: Any) -> str:
    """Commit ``edit(stack)`` on a new branch from HEAD and come back: the running
    release stays checked out, as on a deploy host that fetched a new tag."""
    stack._git("checkout", "-q", "-b", name)
    edit(stack)
    sha = stack.head()
    stack._git("checkout", "-q", "-")
    return sha


def slower_writes(stack: TestStack) -> None:
    path = stack.compose_file
    text = path.read_text()
    assert 'WRITE_INTERVAL: "${WRITE_INTERVAL:-0.5}"' in text
    path.write_text(text.replace('WRITE_INTERVAL: "${WRITE_INTERVAL:-0.5}"',
                                 'WRITE_INTERVAL: "0.4"'))
    stack._git("commit", "-q", "-am", "backend: write a little faster (a healthy release)")


def state(stack: TestStack) -> dict[str, Any]:
    db = sqlite3.connect(stack.project_dir / ".backout" / "state.db")
    try:
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("releases", "checkpoints", "operations")}
    finally:
        db.close()
    return {"head": stack.head(), "containers": {s: stack.container_id(s) for s in
                                                 ("backend", "frontend", "mysql")}, **counts}


def deploy(stack: TestStack, *args: str, **env: str) -> Any:
    return backout("deploy", *args, "--json", cwd=stack.project_dir, timeout=900, **env)


def test_preflight_refusals_change_nothing(dstack: TestStack) -> None:
    ok(backout("checkpoint", cwd=dstack.project_dir))  # the disk estimate needs one
    before = state(dstack)

    assert_clean_error(deploy(dstack, "no-such-ref", "--watch", "0"), 7, "no-such-ref")

    tracked = dstack.project_dir / "env.example"
    original = tracked.read_text()
    tracked.write_text(original + "# an operator's edit\n")
    try:
        assert_clean_error(deploy(dstack, "HEAD", "--watch", "0"), 2, "uncommitted")
        allowed = ok_json(deploy(dstack, "HEAD", "--watch", "0", "--allow-dirty", "--dry-run"))
        assert allowed["plan"]["steps"][[s["name"] for s in allowed["plan"]["steps"]].index(
            "save uncommitted changes")]["action"] == "emergency.save_changes"
        assert "an operator's edit" in tracked.read_text()  # a dry run touched nothing
    finally:
        tracked.write_text(original)

    config = dstack.project_dir / "backout.toml"
    text = config.read_text()
    config.write_text(text + "\n[deploy]\ndisk_margin = 1e12\n")
    try:
        line = assert_clean_error(deploy(dstack, "HEAD", "--watch", "0"), 2, "not enough room")
        assert "MiB free" in line
    finally:
        config.write_text(text)

    bad = branch_with(dstack, "broken-yaml", lambda s: (
        s.compose_file.write_text(s.compose_file.read_text() + "\nservices: [\n"),
        s._git("commit", "-q", "-am", "break the compose file")))
    assert_clean_error(deploy(dstack, bad, "--watch", "0"), 2, "compose configuration")
    assert state(dstack) == before


def test_healthy_deploy_stays_then_broken_deploy_rolls_back(dstack: TestStack) -> None:
    project = dstack.project_dir
    v2 = branch_with(dstack, "v2", slower_writes)
    backend_v1 = dstack.inspect("backend")["Image"]
    frontend = dstack.container_id("frontend")

    dry = ok_json(deploy(dstack, "v2", "--watch", "6", "--dry-run"))
    assert dry["dry_run"] and all(c["ok"] for c in dry["preflight"]["checks"])
    assert any(s["on_failure"] for s in dry["plan"]["steps"])
    assert dstack.head() != v2  # a dry run changes nothing

    with Load(f"{dstack.url('nginx')}/api/v1/items"):
        first = deploy(dstack, "v2", "--watch", "8")
    data = ok_json(first)
    assert data["outcome"] == "deployed" and data["checkpoint_id"]
    assert dstack.head() == v2
    assert dstack.container_id("frontend") == frontend  # untouched: its config is unchanged
    backend_v2 = dstack.inspect("backend")["Image"]
    assert backend_v2 == backend_v1  # same image, new environment: recreated, healthy

    v3 = branch_with(dstack, "v3", lambda s: s.set_image_tag("backend", "errors"))
    with Load(f"{dstack.url('nginx')}/api/v1/items") as load:
        second = deploy(dstack, "v3", "--watch", "120")
    assert dstack._git("rev-parse", "v3") == v3
    assert load.sent > 50
    assert second.returncode == 8, (second.stdout[-2000:], second.stderr[-3000:])
    report = json.loads(second.stdout)
    assert report["outcome"] == "rolled_back" and report["ok"] is False
    assert "red-error-rate" in report["reason"]
    assert dstack.head() == v2
    assert dstack.inspect("backend")["Image"] == backend_v2
    assert "errors" not in dstack.inspect("backend")["Config"]["Image"]

    releases = ok_json(backout("releases", "--json", cwd=project))["releases"]
    by_id = {r["id"]: r for r in releases}
    assert by_id[report["release_id"]]["status"] == "rolled_back"
    assert by_id[data["release_id"]]["status"] == "deployed"
    incident = next(i for i in ok_json(backout("incidents", "--json", cwd=project))["incidents"]
                    if i["id"] == report["incident"])
    kinds = [e["kind"] for e in incident["timeline"]]
    for kind in ("action", "verified", "resolved"):
        assert kind in kinds, kinds
    assert incident["status"] == "resolved"
    ok(backout("verify", "--settle", "3", cwd=project))


def test_migration_deploy_killed_mid_rollback_resumes_to_the_checkpoints_data(
        dstack: TestStack) -> None:
    project = dstack.project_dir
    v4 = branch_with(dstack, "v4", lambda s: s.set_image_tag("backend", "errors"))
    plan = ok_json(deploy(dstack, v4, "--watch", "120", "--migration", "--dry-run"))["plan"]
    names = [s["name"] for s in plan["steps"]]
    restore = names.index("restore mysql")
    # The data the checkpoint will hold, and a row the bad release "migrates" away.
    dstack.mysql_query("INSERT INTO customers (id, name, email) VALUES (999999, 'sentinel', "
                       "'sentinel@example.test')")
    with Load(f"{dstack.url('nginx')}/api/v1/items"):
        killed = deploy(dstack, v4, "--watch", "120", "--migration",
                        BACKOUT_FAULT_INJECT=f"step-{restore}-started=kill")
    assert killed.returncode in (-9, 137), (killed.returncode, killed.stderr[-2000:])
    # While the rollback is down, the bad "migration" destroys the row.
    dstack.mysql_query("DELETE FROM customers WHERE name = 'sentinel'")
    assert dstack.mysql_scalar("SELECT COUNT(*) FROM customers WHERE name = 'sentinel'") == "0"
    resumed = backout("resume", "--json", cwd=project, timeout=900)
    assert resumed.returncode == 8, (resumed.stdout[-2000:], resumed.stderr[-3000:])
    assert json.loads(resumed.stdout)["outcome"] == "rolled_back"
    assert dstack.mysql_scalar("SELECT COUNT(*) FROM customers WHERE name = 'sentinel'") == "1"
    assert "errors" not in dstack.inspect("backend")["Config"]["Image"]
    ok(backout("verify", "--settle", "3", cwd=project))
