"""Issue 5 on a real stack: faults driven in the test stack reach their levels, and
`--auto-rollback` rolls a 5xx deploy back exactly once, verifies, and records the
incident's timeline. The monitor runs as an operator would run it (a subprocess
streaming --json decisions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import TestStack

pytestmark = pytest.mark.docker


def backout(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backout", *args], cwd=project,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def mstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestStack]:
    stack = TestStack.create(tmp_path_factory.mktemp("monitor"))
    try:
        stack.build_images()
        stack.up()
        stack.seed()
        result = backout(stack.project_dir, "init")
        assert result.returncode == 0, result.stderr
        text = (stack.project_dir / "backout.toml").read_text()
        assert "metrics_url" in text.replace("# metrics_url", "")  # init found /metrics
        assert backout(stack.project_dir, "release", "record").returncode == 0
        yield stack
    finally:
        stack.down()


class Load:
    """Steady API traffic on 127.0.0.1, bounded in time, counting failures."""

    def __init__(self, url: str, period: float = 0.05) -> None:
        self.url, self.period = url, period
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.sent += 1
            try:
                urllib.request.urlopen(self.url, timeout=10).read()
            except (urllib.error.URLError, OSError):
                self.failed += 1
            time.sleep(self.period)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def monitor(project: Path, *args: str, until: Any, timeout: float) -> list[dict[str, Any]]:
    """Run `backout monitor --json ARGS`, collecting decisions until ``until(decisions)``."""
    proc = subprocess.Popen([sys.executable, "-m", "backout", "monitor", "--json", *args],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    decisions: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            decisions.append(json.loads(line))
            if until(decisions) or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return decisions


def test_5xx_deploy_goes_red_and_is_rolled_back_once(mstack: TestStack) -> None:
    project = mstack.project_dir
    healthy = mstack.inspect("backend")["Image"]
    with Load(f"{mstack.url('backend')}/api/v1/items") as load:
        time.sleep(3)
        mstack.set_image_tag("backend", "errors")
        mstack.compose("up", "-d", "--wait", "backend")
        fault_at = time.time()

        # The automatic rollback and its verification run inside the evaluation that
        # saw RED, so the first RED decision arrives after both are done.
        decisions = monitor(project, "--auto-rollback", "--interval", "2",
                            until=lambda ds: ds[-1]["level"] == "RED", timeout=240)
        assert load.sent > 100
    red = next(d for d in decisions if d["level"] == "RED")
    fired = next(tr for d in decisions for tr in d["transitions"]
                 if tr["rule"] == "red-error-rate" and tr["kind"] == "fired")
    assert "backend" in fired["signal"] and fired["value"] > 0.5
    # within the rule's 60 s window + one evaluation interval (+ scrape warm-up)
    assert red["t"] - fault_at <= 60 + 2 + 15, red["t"] - fault_at
    ops = json.loads(backout(project, "history", "--json").stdout)["operations"]
    rollbacks = [o for o in ops if o["kind"].startswith("rollback")]
    assert len(rollbacks) == 1 and rollbacks[0]["status"] == "succeeded"
    assert mstack.inspect("backend")["Image"] == healthy
    verify = backout(project, "verify", "--settle", "3", "--json")
    assert verify.returncode == 0, verify.stdout
    incidents = json.loads(backout(project, "incidents", "--json").stdout)["incidents"]
    red_incident = next(i for i in incidents if i["rule"] == "red-error-rate")
    kinds = [e["kind"] for e in red_incident["timeline"]]
    assert kinds[0] == "detected" and "action" in kinds and "verified" in kinds
    # restore the compose file's healthy tag for the next test
    mstack.set_image_tag("backend", "healthy")
    mstack.compose("up", "-d", "--wait", "backend")


def test_health_endpoint_down_is_red_after_exactly_two_failed_probes(mstack: TestStack) -> None:
    project = mstack.project_dir
    try:
        def health_fired(ds: list[dict[str, Any]]) -> bool:
            if len(ds) == 1:  # the monitor runs and saw a healthy service: now break it
                mstack.fault("model-server", health=False)
            return any(tr["rule"] == "red-health-check" and tr["kind"] == "fired"
                       for tr in ds[-1]["transitions"])

        decisions = monitor(project, "--interval", "1", until=health_fired, timeout=90)
    finally:
        mstack.fault("model-server", health=True)
    fired = [tr for d in decisions for tr in d["transitions"]
             if tr["rule"] == "red-health-check" and tr["kind"] == "fired"]
    assert fired and "model-server" in fired[0]["signal"]
    assert fired[0]["value"] == 2.0  # fired on the second consecutive failure, not later
    # no rollback without --auto-rollback, but an incident is recorded
    incidents = json.loads(backout(project, "incidents", "--json").stdout)["incidents"]
    assert any(i["rule"] == "red-health-check" for i in incidents)


def test_policy_test_replays_a_recording(mstack: TestStack, tmp_path: Path) -> None:
    records = [{"t": t, "signals": {"error_rate{service=backend}": 0.6 if 10 <= t < 100 else 0.0}}
               for t in range(0, 200, 5)]
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = backout(mstack.project_dir, "policy", "test", str(path), "--json")
    assert result.returncode == 0, result.stderr
    transitions = json.loads(result.stdout)["transitions"]
    fired = [t for t in transitions if t["kind"] == "fired" and t["rule"] == "red-error-rate"]
    assert fired and fired[0]["t"] == 70  # condition from t=10, held for 60 s
    assert any(t["kind"] == "cleared" and t["rule"] == "red-error-rate" for t in transitions)
