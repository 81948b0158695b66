"""The PromQL signal source against a real Prometheus (Debian's 2.42) scraping the
test stack's backend."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backout.environment import Environment
from backout.signals.external import promql

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (scripts/ensure-docker.sh installs it)")
    work = tmp_path_factory.mktemp("prom")
    target = f"127.0.0.1:{stack.ports['backend']}"
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: backend\n    static_configs: [{{targets: ['{target}']}}]\n")
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(work / "log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while promql(Environment(), url, 'up{job="backend"}') != 1.0:
            assert proc.poll() is None, (work / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus never scraped the backend"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_promql_reads_what_prometheus_scraped(prometheus: str, stack: Any) -> None:
    env = Environment()
    for _ in range(20):
        stack.http("backend", "/api/v1/items")
    deadline = time.monotonic() + 30
    total = None
    while time.monotonic() < deadline:
        total = promql(env, prometheus, 'sum(http_requests_total{path="/api/v1/items"})')
        if total is not None and total >= 20:
            break
        time.sleep(1)
    assert total is not None and total >= 20
    ratio = promql(env, prometheus, 'sum(rate(http_requests_total{status=~"5.."}[30s])) '
                                    "/ sum(rate(http_requests_total[30s]))")
    assert ratio in (None, 0.0) or ratio < 0.05  # the healthy backend answers 2xx
    assert promql(env, prometheus, "no_such_metric_anywhere") is None


def test_promql_against_a_dead_server_is_no_data() -> None:
    assert promql(Environment(), f"http://127.0.0.1:{_free_port()}", "up") is None


