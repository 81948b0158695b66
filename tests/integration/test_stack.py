"""The Docker Compose test stack itself works: every later Docker test relies on it.

Needs a real Docker Engine and Compose v2: skipped without one, unless
BACKOUT_REQUIRE_DOCKER=1, in which case it fails. Runs its own stack (module scope),
torn down at the end even if a test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:
    from tests.support.stack import SERVICES, TestStack, cleanup_stale, wait_for
except ImportError:  # run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.support.stack import SERVICES, TestStack, cleanup_stale, wait_for

pytestmark = pytest.mark.docker

METRIC_NAMES = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_duration_seconds_sum",
    "http_request_duration_seconds_count",
    "circuit_breakers_open",
    "db_pool_in_use",
    "db_pool_size",
    "auth_attempts_total",
    "auth_failures_total",
    "queue_lag",
)
BUCKETS = {0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf")}
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _docker_problem() -> str | None:
    for argv in (["docker", "info", "--format", "{{.ServerVersion}}"],
                 ["docker", "compose", "version"]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(argv[:2])}: {exc}"
        if proc.returncode != 0:
            return f"{' '.join(argv[:2])} failed: {proc.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestStack]:
    problem = _docker_problem()
    if problem:
        if os.environ.get("BACKOUT_REQUIRE_DOCKER") == "1":
            pytest.fail(f"BACKOUT_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
        pytest.skip(f"no usable Docker: {problem}")
    cleanup_stale()
    s = TestStack.create(tmp_path_factory.mktemp("stack"))
    try:
        s.build_images()
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture
def backend_version(stack: TestStack) -> Iterator[None]:
    """Put the backend back on the healthy version after a test that changed it."""
    yield
    stack.set_image_tag("backend", "healthy")
    stack.up("backend")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def get_json(stack: TestStack, service: str, path: str) -> tuple[int, dict[str, object]]:
    status, _headers, body = stack.http(service, path)
    return status, json.loads(body)


# --------------------------------------------------------------------------- basics


def test_all_services_healthy(stack: TestStack) -> None:
    rows = {row["Service"]: row for row in stack.ps()}
    assert set(rows) == set(SERVICES)
    for service, row in rows.items():
        assert row["State"] == "running", (service, row)
        assert row["Health"] == "healthy", (service, row)
    # labels: containers, volumes and network all carry the run id
    label = f"label=io.backout.test.run={stack.run_id}"
    for ls in (["ps", "-aq"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
        out = subprocess.run(["docker", *ls, "--filter", label], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        assert out, f"nothing labelled {label} for docker {' '.join(ls)}"
    assert stack.inspect("mongodb")["Config"]["Labels"]["io.backout.stand-in"] == "nx-27017"


def test_published_ports_answer(stack: TestStack) -> None:
    assert get_json(stack, "backend", "/api/v1/health/check")[0] == 200
    assert get_json(stack, "frontend", "/health")[0] == 200
    status, body = get_json(stack, "model-server", "/healthy-check")
    assert status == 200 and body["status"] == "ok"
    status, body = get_json(stack, "model-server", "/predict?x=2")
    assert status == 200 and body["prediction"] == 6.0


def test_nginx_proxies_api_and_frontend(stack: TestStack) -> None:
    status, headers, body = stack.http("nginx", "/api/v1/health/check")
    assert status == 200
    assert headers["X-App-Role"] == "backend"
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["checks"] == {"mysql": "ok", "redis": "ok", "mongo": "ok", "postgres": "ok"}
    status, headers, body = stack.http("nginx", "/")
    assert status == 200
    assert headers["X-App-Role"] == "frontend"
    assert b"backout test app" in body


def test_metrics_are_prometheus_text(stack: TestStack) -> None:
    stack.http("backend", "/api/v1/items")
    stack.http("backend", "/api/v1/login", method="POST", body={"username": "u", "password": "wrong"})
    for service in ("backend", "frontend", "model-server"):
        status, headers, body = stack.http(service, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        samples = parse_metrics(body.decode())
        names = {name for name, _l, _v in samples}
        missing = set(METRIC_NAMES) - names
        assert not missing, f"{service} /metrics lacks {missing}"
        buckets = {float(labels["le"]) for name, labels, _v in samples
                   if name == "http_request_duration_seconds_bucket"}
        assert buckets >= BUCKETS, f"{service}: buckets {sorted(buckets)}"
        for name, labels, _v in samples:
            if name == "http_requests_total":
                assert {"role", "path", "status"} <= set(labels), labels
                assert labels["role"] == service
    backend = parse_metrics(stack.http("backend", "/metrics")[2].decode())
    value = {name: v for name, _l, v in backend}
    assert value["auth_attempts_total"] >= 1 and value["auth_failures_total"] >= 1
    assert value["db_pool_size"] == 10


def test_fault_endpoint_drives_metrics_and_health(stack: TestStack) -> None:
    try:
        state = stack.fault("frontend", circuit_breakers_open=3, queue_lag=1234, health=False)
        assert state["circuit_breakers_open"] == 3
        samples = parse_metrics(stack.http("frontend", "/metrics")[2].decode())
        value = {name: v for name, _l, v in samples}
        assert value["circuit_breakers_open"] == 3 and value["queue_lag"] == 1234
        assert stack.http("frontend", "/health")[0] == 503
    finally:
        stack.fault("frontend", reset=True)
    assert stack.http("frontend", "/health")[0] == 200


# --------------------------------------------------------------------------- data


def _counts(stack: TestStack) -> tuple[int, int, int]:
    orders = int(stack.mysql_scalar("SELECT COUNT(*) FROM orders") or 0)
    ticks = int(stack.redis_cmd("GET", "writer:ticks") or 0)
    events = stack.mongo_count("events")
    return orders, ticks, events


def test_backend_writer_changes_data_in_all_databases(stack: TestStack) -> None:
    before = _counts(stack)
    time.sleep(3)
    after = _counts(stack)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_seed_is_deterministic_and_invariants_hold(stack: TestStack) -> None:
    stack.seed()
    stack.seed()  # idempotent
    assert stack.mysql_scalar("SELECT COUNT(*) FROM customers") == "20"
    assert stack.mysql_query("SELECT name FROM customers WHERE id = 3") == [("Grace Hopper",)]
    assert stack.redis_cmd("LLEN", "seed:customers") == "20"
    assert stack.redis_cmd("HGET", "seed:config", "currency") == "EUR"
    assert stack.mongo_count("customers", {"seed": True}) == 20
    assert stack.mongo_docs("customers", {"_id": 2})[0]["name"] == "Alan Turing"
    first = stack.check_invariants()
    time.sleep(1.5)
    second = stack.check_invariants()
    assert second["orders"] > first["orders"]
    assert second["accounts_sum"] == 1_000_000


def test_app_user_and_binlog(stack: TestStack) -> None:
    # the official-image variables created the app user with access to the app database
    assert stack.mysql_query("SELECT CURRENT_USER()", root=False)[0][0] == "backout@%"
    assert stack.mysql_scalar("SELECT @@log_bin") == "1"
    assert stack.mysql_query("SHOW MASTER STATUS")[0][0].startswith("mysql-bin.")
    assert stack.mysql_scalar(
        "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_NAME = 'orders'") == "InnoDB"
    out = stack.compose("exec", "-T", "-e", "MYSQL_PWD", "mysql", "mariadb-dump", "-uroot",
                        "--single-transaction", "--no-data", "backout_app",
                        env={"MYSQL_PWD": stack.secrets["MYSQL_ROOT_PASSWORD"]}).stdout
    assert "CREATE TABLE `order_lines`" in out
    # no password in any container's command line
    for service in ("mysql", "redis"):
        cfg = stack.inspect(service)["Config"]
        argv = " ".join((cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or []))
        assert not any(p in argv for p in stack.secrets.values())


def test_items_roundtrip_through_nginx(stack: TestStack) -> None:
    status, _h, body = stack.http("nginx", "/api/v1/items", method="POST",
                                  body={"name": "roundtrip-item"})
    assert status == 201, body
    item_id = json.loads(body)["id"]
    assert stack.mysql_query(f"SELECT name FROM items WHERE id = {int(item_id)}") == [
        ("roundtrip-item",)]
    assert stack.redis_cmd("GET", f"item:{item_id}") == "roundtrip-item"
    assert stack.mongo_count("items", {"item_id": item_id}) == 1
    status, _h, body = stack.http("nginx", "/api/v1/items?limit=5")
    assert status == 200 and any(i["id"] == item_id for i in json.loads(body)["items"])


# --------------------------------------------------------------------------- versions


def test_errors_mode_fails_a_share_of_requests(stack: TestStack, backend_version: None) -> None:
    old = stack.head()
    sha = stack.set_image_tag("backend", "errors")
    assert sha != old and stack.image_tag("backend") == "errors"
    stack.up("backend")
    assert stack.inspect("backend")["Config"]["Labels"]["io.backout.test.mode"] == "errors"

    def one(_i: int) -> int:
        return stack.http("backend", "/api/v1/items")[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(100)))
    share = sum(s >= 500 for s in statuses) / len(statuses)
    assert 0.42 <= share <= 0.78, f"5xx share {share} (ERROR_RATE 0.6)"
    assert set(statuses) <= {200, 500}
    assert stack.http("backend", "/api/v1/health/check")[0] == 200
    assert stack.health("backend") == "healthy"
    assert "ERROR" in stack.logs("backend", tail=50)


def test_slow_mode_takes_over_five_seconds(stack: TestStack, backend_version: None) -> None:
    stack.set_image_tag("backend", "slow")
    stack.up("backend")
    start = time.monotonic()
    status, _h, _b = stack.http("backend", "/api/v1/items")
    elapsed = time.monotonic() - start
    assert status == 200
    assert 5.0 < elapsed < 20, elapsed
    start = time.monotonic()
    assert stack.http("backend", "/api/v1/health/check")[0] == 200
    assert time.monotonic() - start < 2


def test_crashloop_mode_restarts(stack: TestStack, backend_version: None) -> None:
    stack.set_image_tag("backend", "crashloop")
    stack.up("backend", wait=False)
    wait_for(lambda: stack.restart_count("backend") >= 2, timeout=60,
             message="backend RestartCount >= 2")
    logs = stack.logs("backend", tail=100)
    assert "ERROR" in logs and "Traceback" in logs


def test_unhealthy_mode_becomes_unhealthy(stack: TestStack, backend_version: None) -> None:
    stack.set_image_tag("backend", "unhealthy")
    stack.up("backend", wait=False)
    wait_for(lambda: stack.health("backend") == "unhealthy", timeout=90,
             message="backend health 'unhealthy'")
    assert stack.inspect("backend")["State"]["Running"]
    assert stack.http("backend", "/api/v1/health/check")[0] == 503


def test_back_to_healthy_after_version_changes(stack: TestStack) -> None:
    assert stack.image_tag("backend") == "healthy"
    assert stack.health("backend") == "healthy"
    log = subprocess.run(["git", "log", "--format=%s"], cwd=stack.project_dir,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "deploy backend errors" in log
    status = subprocess.run(["git", "status", "--porcelain"], cwd=stack.project_dir,
                            capture_output=True, text=True, timeout=30, check=True).stdout
    assert status == "", f"untracked or modified files in the stack repo: {status}"
    stack.check_invariants()


def test_cleanup_stale_removes_only_dead_runs(stack: TestStack) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_run = f"backout-test-{dead.pid}-dead00"
    live_run = f"backout-test-{os.getpid()}-live00"
    created: list[list[str]] = []
    try:
        for run in (stale_run, live_run):
            label = f"io.backout.test.run={run}"
            for argv in (["volume", "create", "--label", label, f"{run}-vol"],
                         ["network", "create", "--label", label, f"{run}-net"],
                         ["create", "--label", label, "--name", f"{run}-ctr",
                          "backout-test/redis:7.0"]):
                subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=60,
                               check=True)
            created.append([f"{run}-ctr", f"{run}-net", f"{run}-vol"])
            subprocess.run(["docker", "tag", "backout-test/redis:7.0",
                            f"backout-retained/{run}.redis:release-1"], capture_output=True,
                           timeout=60, check=True)
        removed = cleanup_stale()
        assert stale_run in removed and live_run not in removed
        assert stack.run_id not in removed

        def exists(kind: str, name: str) -> bool:
            return subprocess.run(["docker", kind, "inspect", name], capture_output=True,
                                  timeout=60, check=False).returncode == 0

        for kind, suffix in (("container", "ctr"), ("network", "net"), ("volume", "vol")):
            assert not exists(kind, f"{stale_run}-{suffix}")
            assert exists(kind, f"{live_run}-{suffix}")
        # the releases backout kept for a dead run's project are untagged; a live one's stay
        assert not exists("image", f"backout-retained/{stale_run}.redis:release-1")
        assert exists("image", f"backout-retained/{live_run}.redis:release-1")
        assert exists("image", "backout-test/redis:7.0")
        assert stack.health("backend") == "healthy"
    finally:
        for ctr, net, vol in created:
            subprocess.run(["docker", "rm", "-f", "-v", ctr], capture_output=True, timeout=60)
            subprocess.run(["docker", "network", "rm", net], capture_output=True, timeout=60)
            subprocess.run(["docker", "volume", "rm", "-f", vol], capture_output=True, timeout=60)
        for run in (stale_run, live_run):
            subprocess.run(["docker", "image", "rm", "--no-prune",
                            f"backout-retained/{run}.redis:release-1"], capture_output=True,
                           timeout=60)
