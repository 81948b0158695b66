"""Signal adapters against real local HTTP servers and real commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from backout.config import ServiceConfig
from backout.environment import Environment
from backout.platforms.base import ContainerInfo, newest_running
from backout.signals.engine import container_signals, service_signals
from backout.signals.external import command_value, promql
from backout.signals.probes import ProbeTracker


class Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path.split("?")[0], (404, b"no"))
        if self.path.startswith("/api/v1/query"):
            status, body = self.routes["/api/v1/query"]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_probe_counts_consecutive_failures_and_resets(server: str) -> None:
    env = Environment()
    svc = ServiceConfig("backend", health_url=f"{server}/health", health_body="ok")
    tracker = ProbeTracker()
    Handler.routes["/health"] = (200, b"ok")
    assert tracker.probe(env, svc).ok and tracker.consecutive["backend"] == 0
    Handler.routes["/health"] = (503, b"down")
    tracker.probe(env, svc)
    result = tracker.probe(env, svc)
    assert not result.ok and result.status == 503 and tracker.consecutive["backend"] == 2
    Handler.routes["/health"] = (200, b"not the body")
    assert not tracker.probe(env, svc).ok and tracker.consecutive["backend"] == 3
    Handler.routes["/health"] = (200, b"ok")
    assert tracker.probe(env, svc).ok and tracker.consecutive["backend"] == 0


def test_probe_of_a_closed_port_is_a_failure() -> None:
    svc = ServiceConfig("x", health_url="http://127.0.0.1:9/health")
    result = ProbeTracker().probe(Environment(), svc, timeout=1)
    assert not result.ok and result.status is None and "no answer" in result.detail


def test_promql_vector_scalar_and_empty(server: str) -> None:
    env = Environment()
    Handler.routes["/api/v1/query"] = (200, json.dumps({"status": "success", "data": {
        "resultType": "vector", "result": [{"metric": {}, "value": [1, "0.625"]}]}}).encode())
    assert promql(env, server, "sum(rate(x[1m]))") == 0.625
    Handler.routes["/api/v1/query"] = (200, json.dumps({"status": "success", "data": {
        "resultType": "scalar", "result": [1, "3"]}}).encode())
    assert promql(env, server, "scalar(1)") == 3.0
    Handler.routes["/api/v1/query"] = (200, json.dumps({"status": "success", "data": {
        "resultType": "vector", "result": []}}).encode())
    assert promql(env, server, "absent_metric") is None
    Handler.routes["/api/v1/query"] = (400, b"bad query")
    assert promql(env, server, "((") is None


def test_command_value() -> None:
    env = Environment()
    assert command_value(env, "echo 1200") == 1200.0
    assert command_value(env, "sh -c 'echo noise; echo 7.5'") == 7.5
    assert command_value(env, "sh -c 'exit 3'") is None
    assert command_value(env, "echo not-a-number") is None
    assert command_value(env, "no-such-binary-xyz") is None


def box(cid: str, state: str = "running", health: str | None = "healthy", streak: int = 0,
        restarts: int = 0, started: str = "2026-12-04T10:00:00Z",
        image: str = "sha256:old") -> ContainerInfo:
    return ContainerInfo(id=cid, name=f"web-{cid}", service="web", state=state, health=health,
                         image="web", image_id=image, restart_count=restarts,
                         started_at=started, failing_streak=streak)


@pytest.mark.parametrize(("containers", "running", "health", "streak"), [
    # one container: as it is
    ([box("1")], True, "healthy", 0),
    ([box("1", health="unhealthy", streak=3)], True, "unhealthy", 3),
    ([box("1", state="exited", health="unhealthy", streak=5)], False, "unhealthy", 5),
    # a switch's new container still starting beside the healthy old one: no outage
    ([box("1"), box("2", health="starting")], True, "healthy", 0),
    ([box("2", health="starting"), box("1")], True, "healthy", 0),  # order does not matter
    # no healthcheck (running is all it says) ranks above still starting, below healthy
    ([box("1", health="starting"), box("2", health=None)], True, None, 0),
    ([box("1", health=None), box("2", health="unhealthy", streak=2)], True, None, 0),
    # among equally unhealthy ones, the shortest streak
    ([box("1", health="unhealthy", streak=9), box("2", health="unhealthy", streak=3)],
     True, "unhealthy", 3),
    # one replica of three failing is not an outage; all of them failing is
    ([box("1"), box("2", health="unhealthy", streak=4), box("3")], True, "healthy", 0),
    ([box("1", health="unhealthy", streak=4), box("2", health="unhealthy", streak=2)],
     True, "unhealthy", 2),
    # down only when none runs; a replica that exited beside a running one is not
    ([box("1", state="exited", health=None), box("2")], True, "healthy", 0),
    # a status Docker does not document ranks with unhealthy: only the streak decides
    ([box("1", health="degraded", streak=0), box("2", health="unhealthy", streak=2)],
     True, "degraded", 0),
    ([box("1", state="exited", health="degraded", streak=4),
      box("2", state="exited", health="unhealthy", streak=2)], False, "degraded", 4),
    # none runs: the worst one's health first, then its streak
    ([box("1", state="exited", health="unhealthy", streak=1),
      box("2", state="exited", health="starting", streak=2)], False, "unhealthy", 1),
    # none runs: the worst one's streak (an exited leftover must not hide it)
    ([box("1", state="exited"), box("2", state="exited", health="unhealthy", streak=5)],
     False, "unhealthy", 5),
])
def test_a_service_of_several_containers_is_read_as_one(
        containers: list[ContainerInfo], running: bool, health: str | None,
        streak: int) -> None:
    got = service_signals("web", containers, {})
    assert (got.running, got.health, got.failing_streak) == (running, health, streak)
    assert got.service == "web"
    # no figures (a container gone between list and stats): nothing, not a guess of 0 %
    assert (got.memory_percent, got.cpu_percent) == (None, None)
    failed = service_signals("web", containers, None)  # the read failed
    assert (failed.running, failed.health, failed.failing_streak) == (running, health, streak)
    assert (failed.memory_percent, failed.cpu_percent) == (None, None)


def test_the_newest_is_read_from_the_time_not_the_text() -> None:
    """Docker trims the nanoseconds' trailing zeros: as text "…:00Z" sorts after
    "…:00.3Z" though it started earlier."""
    older = box("1", started="2026-12-04T10:00:00Z", image="sha256:old")
    newer = box("2", started="2026-12-04T10:00:00.3Z", image="sha256:new")
    nanos = box("3", started="2026-12-04T10:00:00.123456789Z", image="sha256:mid")
    for order in ([older, newer, nanos], [newer, nanos, older], [nanos, older, newer]):
        assert service_signals("web", order, {}).image_id == "sha256:new"
        assert newest_running(order)["web"].image_id == "sha256:new"
    assert newest_running([older, nanos])["web"].image_id == "sha256:mid"


def test_signals_are_grouped_by_service_and_stats_asked_of_running_containers() -> None:
    class Stub:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def containers(self) -> list[ContainerInfo]:
            return [box("1"), box("2", state="exited"),
                    ContainerInfo(id="9", name="db-9", service="db", state="running",
                                  health=None, image="db", image_id="sha256:db",
                                  restart_count=0, started_at="2026-12-04T10:00:00Z")]

        def stats(self, ids: list[str]) -> dict[str, dict[str, float]]:
            self.asked = list(ids)
            return {i: {"memory_percent": 10.0, "cpu_percent": 1.0} for i in ids}

    stub = Stub()
    got = container_signals(stub)  # type: ignore[arg-type]
    assert stub.asked == ["1", "9"]  # not the exited one
    assert sorted(got) == ["db", "web"]
    assert got["web"].service == "web" and got["db"].service == "db"
    assert got["web"].memory_percent == 10.0 and got["db"].image_id == "sha256:db"


def test_restarts_and_cpu_add_up_memory_is_the_fullest_and_the_image_the_newest() -> None:
    containers = [box("1", restarts=2), box("2", restarts=1, started="2026-12-04T10:05:00Z",
                                            image="sha256:new"),
                  box("3", state="exited", restarts=4, started="2026-12-04T11:00:00Z",
                      image="sha256:gone")]
    stats = {"1": {"memory_percent": 40.0, "cpu_percent": 3.0},
             "2": {"memory_percent": 90.0, "cpu_percent": 5.0},
             "3": {"memory_percent": 99.0, "cpu_percent": 9.0}}  # stale: not running
    got = service_signals("web", containers, stats)
    assert got.restart_count == 7
    assert got.memory_percent == 90.0 and got.cpu_percent == 8.0
    assert got.image_id == "sha256:new"  # the newest *running* one


def test_memory_of_the_measured_containers_only() -> None:
    """A replica without figures does not read 0 % beside one that has them."""
    got = service_signals("web", [box("1"), box("2")],
                          {"2": {"memory_percent": 30.0, "cpu_percent": 2.0}})
    assert (got.memory_percent, got.cpu_percent) == (30.0, 2.0)


def _collector(tmp_path: Any, platform: Any) -> Any:
    from pathlib import Path

    from backout.config import Config
    from backout.monitor.collect import Collector

    config = Config(path=Path(tmp_path) / "backout.toml", project_dir=Path(tmp_path),
                    services={"web": ServiceConfig("web")})
    return Collector(Environment(), config, platform)


def test_a_failed_stats_read_keeps_health_and_restarts_and_leaves_memory_out(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An unhealthy container must not go unseen because its stats could not be read:
    health and restarts stay; memory is not collected this evaluation (not 0 %; not
    no data either, which would turn the level NODATA for one failed read)."""
    from backout.errors import ExternalError
    from backout.signals.engine import StatsReader
    from tests.support.fakes import FakePlatform

    platform = FakePlatform(running={"web": "sha256:w"})
    platform.containers = lambda *services: [  # type: ignore[method-assign]
        box("1", health="unhealthy", streak=4, restarts=2)]
    collector = _collector(tmp_path, platform)
    collector.stats = StatsReader(platform, wait=None)  # each evaluation reads afresh
    platform.stats = lambda ids: {"1": {"memory_percent": 97.0, "cpu_percent": 1.0}}  # type: ignore[method-assign]
    snapshot, views = collector.collect(t=1_000.0)
    assert snapshot.signals["memory_percent{service=web}"] == 97.0

    def fail(ids: Any) -> Any:
        raise ExternalError("the Docker Engine did not answer the stats read")

    platform.stats = fail  # type: ignore[method-assign]
    snapshot, views = collector.collect(t=1_005.0)
    assert "memory_percent{service=web}" not in snapshot.signals
    assert snapshot.signals["health_consecutive_failures{service=web}"] == 4.0
    assert snapshot.signals["restarts{service=web}"] == 0.0
    assert views["web"].health == "unhealthy"
    assert "memory and CPU figures unavailable" in caplog.text


def test_a_running_container_without_figures_leaves_memory_uncollected(tmp_path: Any) -> None:
    """An engine that gives no memory figures (no memory cgroup): the signal is not
    collected (the rule shows as unwatched), not 0 % (silently green)."""
    from tests.support.fakes import FakePlatform

    platform = FakePlatform(running={"web": "sha256:w"})
    platform.containers = lambda *services: [box("1")]  # type: ignore[method-assign]
    snapshot, _ = _collector(tmp_path, platform).collect(t=1_000.0)
    assert "memory_percent{service=web}" not in snapshot.signals
    assert snapshot.signals["health_consecutive_failures{service=web}"] == 0.0


def test_restarts_count_from_what_is_left_when_a_container_goes(tmp_path: Any) -> None:
    """A switch's old container (3 restarts) removed: the count does not go negative,
    and a later restart of the new one counts 1 (green-single-restart can hold)."""
    from pathlib import Path

    from backout.config import Config
    from backout.monitor.collect import Collector
    from tests.support.fakes import FakePlatform

    platform = FakePlatform(running={"web": "sha256:w"})
    boxes = [box("1", restarts=3), box("2", started="2026-12-04T10:05:00Z")]
    platform.containers = lambda *services: list(boxes)  # type: ignore[method-assign]
    config = Config(path=Path(tmp_path) / "backout.toml", project_dir=Path(tmp_path),
                    services={"web": ServiceConfig("web")})
    collector = Collector(Environment(), config, platform)

    def restarts() -> float | None:
        return collector.collect(t=1_000.0)[0].signals["restarts{service=web}"]

    assert restarts() == 0.0
    boxes.pop(0)  # the old one retired
    assert restarts() == 0.0
    boxes[0] = box("2", restarts=1, started="2026-12-04T10:06:00Z")
    assert restarts() == 1.0


def backend_scraped(server: str, tmp_path: Any) -> Callable[[float, bytes],
                                                             dict[str, float | None]]:
    """A collector of one service, "backend", whose /metrics the test server answers:
    (t, the page to serve) -> the signals of that evaluation (10 s window)."""
    from pathlib import Path

    from backout.config import Config
    from backout.monitor.collect import Collector
    from tests.support.fakes import FakePlatform

    config = Config(path=Path(tmp_path) / "backout.toml", project_dir=Path(tmp_path),
                    services={"backend": ServiceConfig("backend",
                                                       metrics_url=f"{server}/metrics")})
    collector = Collector(Environment(), config, FakePlatform(running={"backend": "sha256:b"}),
                          window=10)

    def signals(t: float, body: bytes) -> dict[str, float | None]:
        Handler.routes["/metrics"] = (200, body)
        return collector.collect(t=t)[0].signals

    return signals


def test_a_replaced_container_s_error_rate_is_its_own(server: str, tmp_path: Any) -> None:
    """A broken release replacing a healthy one: error_rate is the new process's 5xx
    share from the first scrape that shows its counters started again, not the old
    one's healthy requests still in the window."""
    def page(ok: int, errors: int) -> bytes:
        lines = ["# TYPE http_requests_total counter",
                 f'http_requests_total{{path="/api/v1/items",status="200"}} {ok}',
                 f'http_requests_total{{path="/metrics",status="200"}} {ok}']
        if errors:
            lines.append(f'http_requests_total{{path="/api/v1/items",status="500"}} {errors}')
        return ("\n".join(lines) + "\n").encode()

    scraped = backend_scraped(server, tmp_path)

    def error_rate(t: float, body: bytes) -> float | None:
        return scraped(t, body)["error_rate{service=backend}"]

    assert error_rate(100, page(4000, 0)) is None  # one scrape: no rate yet
    assert error_rate(102, page(4080, 0)) == 0.0
    assert error_rate(104, page(16, 24)) == pytest.approx(0.6)  # started again
    assert error_rate(106, page(48, 72)) == pytest.approx(0.6)


def test_a_share_of_too_few_events_since_a_restart_is_rated_over_the_window(
        server: str, tmp_path: Any) -> None:
    """Two logins since the restart, both mistyped, are not a 100 % auth-failure
    ratio (red-auth-failures has no `for`): under MIN_EVENTS the whole window rates
    it, the old process's logins too; the requests' share, with enough of them, is
    the new process's own."""
    from backout.monitor.collect import MIN_EVENTS

    def page(ok: int, errors: int, logins: int, failed: int) -> bytes:
        return ("# TYPE http_requests_total counter\n"
                f'http_requests_total{{path="/api",status="200"}} {ok}\n'
                f'http_requests_total{{path="/api",status="500"}} {errors}\n'
                f"auth_attempts_total {logins}\nauth_failures_total {failed}\n").encode()

    signals = backend_scraped(server, tmp_path)

    signals(100, page(4000, 0, 1000, 50))
    signals(102, page(4080, 0, 1040, 52))
    got = signals(104, page(16, 24, 2, 2))  # started again: 40 requests, 2 logins
    assert 2 < MIN_EVENTS <= 40
    assert got["error_rate{service=backend}"] == pytest.approx(0.6)
    ratio = got["auth_failure_ratio{service=backend}"]
    assert ratio is not None and ratio < 0.2  # the old process's 40 logins, 2 failed, too


def test_p95_of_a_histogram_only_service_is_its_new_process_s(server: str,
                                                               tmp_path: Any) -> None:
    """No http_requests_total: the P95 since a restart counts its events with the
    histogram's own _count, not with a request counter the service lacks."""
    def page(fast: int, slow: int) -> bytes:
        h = "http_request_duration_seconds"
        return (f"# TYPE {h} histogram\n"
                f'{h}_bucket{{path="/api",le="0.1"}} {fast}\n'
                f'{h}_bucket{{path="/api",le="1.0"}} {fast + slow}\n'
                f'{h}_bucket{{path="/api",le="+Inf"}} {fast + slow}\n'
                f'{h}_count{{path="/api"}} {fast + slow}\n'
                f'{h}_sum{{path="/api"}} {0.05 * fast + 0.9 * slow}\n').encode()

    scraped = backend_scraped(server, tmp_path)

    def p95(t: float, body: bytes) -> float | None:
        return scraped(t, body)["p95_latency_seconds{service=backend}"]

    p95(100, page(4000, 0))
    assert (p95(102, page(4800, 0)) or 1) <= 0.1  # all fast
    slow = p95(104, page(0, 20))  # started again: its 20 requests slow (the old 800 fast)
    assert slow is not None and slow > 0.5


def test_an_evaluation_asks_every_service_at_once(tmp_path: Any) -> None:
    """Three health URLs that answer only once all three are asked (a barrier in the
    server): asked one after the other, each would wait out the barrier and fail."""
    from pathlib import Path

    from backout.config import Config
    from backout.monitor.collect import Collector
    from tests.support.fakes import FakePlatform

    barrier = threading.Barrier(3, timeout=5)

    class Together(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                barrier.wait()
                status = 200
            except threading.BrokenBarrierError:
                status = 503
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Together)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/health"
        names = ("api", "web", "model")
        config = Config(path=Path(tmp_path) / "backout.toml", project_dir=Path(tmp_path),
                        services={n: ServiceConfig(n, health_url=url) for n in names})
        collector = Collector(Environment(), config,
                              FakePlatform(running={n: "sha256:x" for n in names}))
        _snapshot, views = collector.collect(t=100.0)
    finally:
        srv.shutdown()
    assert [views[n].probe.split(" ")[0] for n in names] == ["200", "200", "200"]
    assert collector.probes.consecutive == {"api": 0, "web": 0, "model": 0}
