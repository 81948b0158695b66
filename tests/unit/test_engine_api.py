"""The Engine API adapter and the Compose platform's reads through it, against a real
HTTP server on a unix socket of the test's own, answering with responses recorded
from Docker Engine 20.10 (tests/data/engine_api): version negotiation, one reused
connection, concurrent reads, multiplexed logs, a chunked event stream, and the
engine's failures mapped to backout's errors."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from backout.adapters import engine_api
from backout.adapters.docker import container_info
from backout.adapters.engine_api import (
    EngineAPI,
    cpu_percent,
    demultiplex,
    memory_percent,
    negotiate,
    socket_path,
    unix_time,
)
from backout.config import Config
from backout.config.model import ProjectConfig
from backout.environment import Environment
from backout.errors import DockerUnavailableError, ExitCode, ExternalError
from backout.platforms.compose import ComposePlatform

DATA = Path(__file__).resolve().parents[1] / "data" / "engine_api"
LIST = json.loads((DATA / "list.json").read_text())
WEB = json.loads((DATA / "inspect-web.json").read_text())
TTY = json.loads((DATA / "inspect-tty.json").read_text())
STATS = json.loads((DATA / "stats-web.json").read_text())
PROJECT = WEB["Config"]["Labels"]["com.docker.compose.project"]

Route = Callable[["Handler", dict[str, list[str]]], tuple[int, bytes] | None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the engine speaks
    server: Engine

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        self.server.requests.append((parsed.path, query))
        self.server.methods.append(f"{self.command} {parsed.path}")
        route = self.server.route(parsed.path)
        if route is None:
            self._send(404, json.dumps({"message": f"page not found: {parsed.path}"}).encode())
            return
        answer = route(self, query)
        if answer is not None:  # None: the route wrote (or withheld) its own answer
            self._send(*answer)

    do_POST = do_GET
    do_DELETE = do_GET

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Api-Version", self.server.api_version)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A Docker Engine stand-in: routes by path (without the /vX.Y prefix); counts
    the connections it accepted and the requests it served."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.methods: list[str] = []  # "POST /v1.41/containers/..."
        self.connections = 0
        self.api_version = "1.41"
        super().__init__(str(path), Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()

    def route(self, path: str) -> Route | None:
        if path == "/_ping":
            return self.routes.get(path, lambda h, q: (200, b"OK"))
        bare = "/" + path.split("/", 2)[2] if path.startswith("/v1.") else path
        for pattern, route in self.routes.items():
            if bare == pattern or (pattern.endswith("*") and bare.startswith(pattern[:-1])):
                return route
        return None

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    server = Engine(tmp_path / "docker.sock")
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def api(engine: Engine, timeout: float = 5.0) -> EngineAPI:
    return EngineAPI(Environment(), engine.server_address, timeout=timeout)  # type: ignore[arg-type]


def platform(engine: Engine, tmp_path: Path) -> ComposePlatform:
    env = Environment(env={"DOCKER_HOST": f"unix://{engine.server_address}", "PATH": ""})
    cfg = Config(path=tmp_path / "backout.toml", project_dir=tmp_path,
                 project=ProjectConfig(name=PROJECT))
    return ComposePlatform(env, cfg)


def json_route(doc: Any) -> Route:
    return lambda h, q: (200, json.dumps(doc).encode())


def recorded_stack(engine: Engine) -> None:
    engine.routes["/containers/json"] = json_route(LIST)
    engine.routes[f"/containers/{WEB['Id']}/json"] = json_route(WEB)
    engine.routes[f"/containers/{TTY['Id']}/json"] = json_route(TTY)


# -- which engine, which version -------------------------------------------------------
def test_socket_path_speaks_only_to_a_local_socket(tmp_path: Path) -> None:
    assert socket_path({}) == "/var/run/docker.sock"
    assert socket_path({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}) == \
        "/run/user/1000/docker.sock"
    assert socket_path({"DOCKER_HOST": "tcp://10.0.0.2:2376"}) is None
    assert socket_path({"DOCKER_HOST": "ssh://deploy@host"}) is None
    assert socket_path({"DOCKER_CONTEXT": "prod"}) is None
    assert socket_path({"DOCKER_CONTEXT": "default"}) == "/var/run/docker.sock"
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "remote"}))
    assert socket_path({"DOCKER_CONFIG": str(tmp_path)}) is None
    # DOCKER_HOST beats the context, as the CLI does
    assert socket_path({"DOCKER_CONFIG": str(tmp_path), "DOCKER_HOST": "unix:///s"}) == "/s"


def test_a_remote_engine_keeps_the_cli_path(tmp_path: Path) -> None:
    env = Environment(env={"DOCKER_HOST": "ssh://deploy@host"})
    cfg = Config(path=tmp_path / "backout.toml", project_dir=tmp_path)
    assert ComposePlatform(env, cfg).engine is None
    assert ComposePlatform(env, cfg).events() is None


def test_negotiate_takes_the_older_version() -> None:
    assert negotiate("1.41") == "1.41"
    assert negotiate("1.47") == "1.43"
    assert negotiate("1.24") == "1.24"
    assert negotiate(None) == "1.43"
    assert negotiate("garbage") == "1.43"


def test_version_is_negotiated_once_and_one_connection_serves_every_call(
        engine: Engine) -> None:
    engine.routes["/version"] = json_route(json.loads((DATA / "version.json").read_text()))
    engine.routes["/containers/json"] = json_route(LIST)
    engine.api_version = "1.40"
    client = api(engine)
    assert client.version() == "20.10.24+dfsg1"
    client.list_containers([f"com.docker.compose.project={PROJECT}"])
    client.list_containers([f"com.docker.compose.project={PROJECT}"])
    assert engine.paths() == ["/_ping", "/v1.40/version", "/v1.40/containers/json",
                              "/v1.40/containers/json"]
    assert engine.connections == 1
    filters = json.loads(engine.requests[-1][1]["filters"][0])
    assert filters == {"label": [f"com.docker.compose.project={PROJECT}"]}
    assert engine.requests[-1][1]["all"] == ["1"]


def test_a_connection_the_engine_closed_while_idle_is_replaced(engine: Engine) -> None:
    engine.routes["/containers/json"] = json_route(LIST)
    client = api(engine)
    client.list_containers([])
    for connection in client._idle:  # the engine dropped it (a restart, an idle timeout)
        assert connection.sock is not None
        connection.sock.shutdown(socket.SHUT_RDWR)
    assert client.list_containers([]) == LIST
    assert engine.connections == 2


def test_after_an_engine_restart_every_idle_connection_is_replaced(engine: Engine) -> None:
    engine.routes["/containers/json"] = json_route(LIST)
    client = api(engine)
    client.list_containers([])
    for _ in range(2):
        extra = engine_api._UnixConnection(engine.server_address, 5.0)
        extra.connect()
        client._give_back(extra)
    for connection in client._idle:  # the engine restarted: all of them are gone
        assert connection.sock is not None
        connection.sock.shutdown(socket.SHUT_RDWR)
    assert client.list_containers([]) == LIST
    assert client.list_containers([]) == LIST


# -- failures --------------------------------------------------------------------------
def test_no_socket_is_docker_unavailable(tmp_path: Path) -> None:
    client = EngineAPI(Environment(), str(tmp_path / "absent.sock"))
    with pytest.raises(DockerUnavailableError) as caught:
        client.version()
    assert caught.value.exit_code == ExitCode.EXTERNAL
    assert "not reachable at unix://" in caught.value.message and caught.value.fix


def test_an_engine_that_does_not_answer_times_out(tmp_path: Path) -> None:
    # A socket that accepts and never answers (a hung engine).
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(tmp_path / "hung.sock"))
    hung.listen(8)
    try:
        client = EngineAPI(Environment(), str(tmp_path / "hung.sock"), timeout=0.2)
        with pytest.raises(DockerUnavailableError, match="does not answer"):
            client.version()
    finally:
        hung.close()


def test_engine_errors_carry_its_message_and_a_missing_container_is_none(
        engine: Engine) -> None:
    engine.routes["/containers/json"] = lambda h, q: (500, b'{"message":"disk on fire"}')
    client = api(engine)
    with pytest.raises(ExternalError, match="500 disk on fire"):
        client.list_containers([])
    assert client.inspect_container("nonexistent") is None  # recorded: 404 No such container


# -- containers, stats, logs through the platform --------------------------------------
def test_containers_are_one_list_and_their_inspects(engine: Engine, tmp_path: Path) -> None:
    recorded_stack(engine)
    engine.routes["/containers/json"] = json_route(LIST[::-1])  # the engine's own order
    found = platform(engine, tmp_path).containers()
    assert [c.service for c in found] == ["tty", "web"]  # by name, as compose ps
    web = found[1]
    assert web.id == WEB["Id"] and web.state == "running" and web.health == "unhealthy"
    assert web.failing_streak == WEB["State"]["Health"]["FailingStreak"] > 0
    assert web.image == "debian:bookworm-slim" and web.image_id.startswith("sha256:")
    assert web.restart_count == 0 and web.started_at == WEB["State"]["StartedAt"]
    assert found[0].health is None
    assert engine.paths().count("/v1.41/containers/json") == 1
    labels = json.loads(engine.requests[1][1]["filters"][0])["label"]
    assert labels == [f"com.docker.compose.project={PROJECT}"]


def test_containers_of_one_service_are_filtered_by_the_engine(engine: Engine,
                                                             tmp_path: Path) -> None:
    recorded_stack(engine)
    engine.routes["/containers/json"] = lambda h, q: (200, json.dumps(
        [c for c in LIST if "com.docker.compose.service=web" not in
         json.loads(q["filters"][0])["label"] or c["Labels"]["com.docker.compose.service"]
         == "web"]).encode())
    found = platform(engine, tmp_path).containers("web")
    assert [c.service for c in found] == ["web"]
    assert json.loads(engine.requests[1][1]["filters"][0])["label"] == [
        f"com.docker.compose.project={PROJECT}", "com.docker.compose.service=web"]
    assert f"/v1.41/containers/{TTY['Id']}/json" not in engine.paths()


def test_a_container_removed_between_list_and_inspect_is_left_out(engine: Engine,
                                                                  tmp_path: Path) -> None:
    recorded_stack(engine)
    del engine.routes[f"/containers/{TTY['Id']}/json"]
    assert [c.service for c in platform(engine, tmp_path).containers()] == ["web"]


def test_stats_are_one_shot_reads_run_concurrently(engine: Engine) -> None:
    both = threading.Barrier(2, timeout=5)  # broken (test fails) unless two run at once

    def stats(h: Handler, q: dict[str, list[str]]) -> tuple[int, bytes]:
        assert q == {"stream": ["false"], "one-shot": ["true"]}
        both.wait()
        return 200, json.dumps(STATS).encode()

    engine.routes["/containers/*"] = stats
    client = api(engine)
    out = client.stats(["aaa", "bbb"])
    assert set(out) == {"aaa", "bbb"}
    assert out["aaa"]["memory_percent"] == pytest.approx(memory_percent(STATS))
    assert out["aaa"]["cpu_percent"] == 0.0  # one sample: no rate yet
    assert not both.broken


def test_memory_and_cpu_percent_as_docker_stats_computes_them() -> None:
    mem = STATS["memory_stats"]
    assert memory_percent(STATS) == pytest.approx(
        (mem["usage"] - mem["stats"]["total_inactive_file"]) / mem["limit"] * 100)
    v1 = {"memory_stats": {"usage": 1000, "limit": 4000,
                           "stats": {"total_inactive_file": 600, "inactive_file": 100}}}
    assert memory_percent(v1) == pytest.approx(10.0)  # cgroup v1's total_ counter first
    v2 = {"memory_stats": {"usage": 1000, "limit": 4000, "stats": {"inactive_file": 200}}}
    assert memory_percent(v2) == pytest.approx(20.0)
    assert memory_percent({"memory_stats": {}}) == 0.0
    # 0.5 s of container CPU in 2 s of host time (all CPUs), on 2 CPUs: 50 %
    assert cpu_percent((1_000, 10_000_000_000), (500_001_000, 12_000_000_000), 2) == \
        pytest.approx(50.0)
    assert cpu_percent(None, (1, 1), 2) == 0.0


def test_cpu_percent_is_the_rate_between_two_reads(engine: Engine) -> None:
    samples = iter([(10**9, 100 * 10**9), (2 * 10**9, 104 * 10**9)])

    def stats(h: Handler, q: dict[str, list[str]]) -> tuple[int, bytes]:
        used, host = next(samples)
        doc = {**STATS, "cpu_stats": {"cpu_usage": {"total_usage": used},
                                      "system_cpu_usage": host, "online_cpus": 2}}
        return 200, json.dumps(doc).encode()

    engine.routes["/containers/*"] = stats
    client = api(engine)
    assert client.stats(["web"])["web"]["cpu_percent"] == 0.0
    assert client.stats(["web"])["web"]["cpu_percent"] == pytest.approx(50.0)


def test_stats_of_a_stopped_or_removed_container_are_left_out(engine: Engine) -> None:
    engine.routes["/containers/gone/*"] = lambda h, q: (404, b'{"message":"No such container"}')
    engine.routes["/containers/stopped/*"] = json_route({"read": "0001-01-01T00:00:00Z",
                                                         "memory_stats": {}, "cpu_stats": {}})
    assert api(engine).stats(["gone", "stopped"]) == {}


def test_demultiplex_reads_frames_of_both_streams() -> None:
    frames = demultiplex((DATA / "logs-web.bin").read_bytes())
    assert [stream for stream, _ in frames] == [2, 1, 1]
    assert frames[0][1].endswith(b"Z ERROR something broke\n")
    assert demultiplex(b"\x01\x00\x00\x00\x00\x00\x00\x03ab") == [(1, b"ab")]  # truncated
    assert demultiplex(b"") == []


def unix_since(body: bytes) -> Route:
    """A logs route that, like Engine 20.10, reads ``since`` as Unix time only."""
    def route(h: Handler, q: dict[str, list[str]]) -> tuple[int, bytes]:
        try:
            float(q.get("since", ["0"])[0])
        except ValueError:
            return 500, json.dumps({"message": f'strconv.ParseInt: parsing "{q["since"][0]}": '
                                               "invalid syntax"}).encode()
        return 200, body
    return route


def test_since_is_sent_as_unix_time() -> None:
    assert unix_time("1796274000") == "1796274000"
    assert unix_time("1796274000.5") == "1796274000.5"
    assert unix_time("2026-12-03T05:00:00Z") == "1796274000.000000"
    assert unix_time("2026-12-03T05:00:00.123456789Z") == "1796274000.123456"
    assert unix_time("2026-12-03T06:00:00+01:00") == "1796274000.000000"
    assert unix_time("10m", now=1000.0) == "400.000000000"
    assert unix_time("1h30s", now=5000.0) == "1370.000000000"
    with pytest.raises(ExternalError, match="not a time"):
        unix_time("yesterday")


def test_logs_demultiplexed_for_a_plain_container_raw_for_a_tty(engine: Engine,
                                                               tmp_path: Path) -> None:
    recorded_stack(engine)
    web_logs = (DATA / "logs-web.bin").read_bytes()
    tty_logs = (DATA / "logs-tty.bin").read_bytes()
    engine.routes[f"/containers/{WEB['Id']}/logs"] = unix_since(web_logs)
    engine.routes[f"/containers/{TTY['Id']}/logs"] = unix_since(tty_logs)
    engine.routes["/containers/json"] = lambda h, q: (200, json.dumps(
        [c for c in LIST if f"com.docker.compose.service={c['Labels']['com.docker.compose.service']}"
         in json.loads(q["filters"][0])["label"]]).encode())
    plat = platform(engine, tmp_path)
    text = plat.logs("web", "2026-12-03T05:00:00.000000Z", timestamps=True)
    assert text.splitlines()[0].endswith("Z ERROR something broke")
    assert [line.split(" ", 1)[1] for line in text.splitlines()] == [
        "ERROR something broke", "starting up", "ok line"]
    query = engine.requests[-1][1]  # three entries: the tail was the whole log
    assert query["tail"] == ["200"] and query["timestamps"] == ["1"]
    assert plat.logs("tty", "0", timestamps=True).rstrip().endswith("tty hello")
    # a container's TTY setting is read once (it never changes)
    plat.logs("web", "0")
    assert engine.paths().count(f"/v1.41/containers/{WEB['Id']}/json") == 1


# -- logs since a moment, from the tail first ----------------------------------------
T0 = 1796274000  # 2026-12-03T05:00:00Z
CID = "c" * 64


def stamped(i: int, stamp: str | None = None, *, at: int | None = None,
            end: str = "\n") -> tuple[int, str]:
    """Entry ``i`` of a log 10 ms apart from T0, as (its time in entries, the engine's
    line); ``at``: stamped as entry ``at`` instead; ``end``: "" for a part of a line."""
    at = i if at is None else at
    text = stamp or (datetime.fromtimestamp(T0 + at // 100, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                     + f".{(at % 100) * 10_000_000:09d}Z")
    return at, f"{text} line {i}{end}"


def since_read(entries: list[tuple[int, str]], i: int) -> str:
    """What the engine's own ``since`` gives from entry ``i``'s moment."""
    return "".join(line for at, line in entries if at >= i)


def log_route(entries: list[tuple[int, str]]) -> Route:
    """A plain container's logs as Engine 20.10 answers: ``tail`` the last N entries,
    ``since`` (Unix time) those stamped from then on, each entry one stdout frame."""
    def route(h: Handler, q: dict[str, list[str]]) -> tuple[int, bytes]:
        chosen = entries
        if "since" in q:
            cut = round((float(q["since"][0]) - T0) * 100)  # in entries, 10 ms each
            chosen = [e for e in chosen if e[0] >= cut]
        if "tail" in q:
            chosen = chosen[-int(q["tail"][0]):] if int(q["tail"][0]) else []
        return 200, b"".join(b"\x01\x00\x00\x00" + len(line.encode()).to_bytes(4, "big")
                             + line.encode() for _, line in chosen)
    return route


@pytest.fixture
def first_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' arithmetic: a first tail of 1000 entries (10 s of their logs)."""
    monkeypatch.setattr(engine_api, "LOG_TAIL_FIRST", 1000)


def log_queries(engine: Engine) -> list[dict[str, str]]:
    return [{k: v[0] for k, v in q.items() if k in ("tail", "since")}
            for path, q in engine.requests if path.endswith("/logs")]


def since(i: int) -> str:
    return f"{T0 + i // 100}.{(i % 100) * 10_000:06d}"  # as unix_time gives it


@pytest.mark.usefixtures("first_tail")
def test_logs_since_a_moment_come_from_the_tail_when_it_reaches_back(engine: Engine) -> None:
    entries = [stamped(i) for i in range(5000)]  # 50 s of a busy log
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    client = api(engine)
    # 1000 entries are the last 10 s: since 3 s ago they hold all, and a second more
    text = client.logs(CID, since=since(4700), timestamps=True, tty=False)
    assert text == "".join(line for _, line in entries[4700:])
    assert log_queries(engine) == [{"tail": "1000"}]  # the whole log was not decoded
    # an entry stamped at the moment itself is kept (the engine's since keeps it)
    assert client.logs(CID, since=since(4999), timestamps=True,
                       tty=False) == entries[4999][1]
    assert client.logs(CID, since=since(5000), timestamps=True, tty=False) == ""


@pytest.mark.usefixtures("first_tail")
def test_logs_since_a_moment_the_tail_does_not_reach_are_read_whole(engine: Engine) -> None:
    entries = [stamped(i) for i in range(5000)]
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    client = api(engine)
    text = client.logs(CID, since=since(3000), timestamps=True, tty=False)
    assert text == "".join(line for _, line in entries[3000:])
    assert log_queries(engine) == [{"tail": "1000"}, {"since": since(3000)}]
    # the next tail is twice what came: 20 s of it now reach back
    engine.requests.clear()
    assert client.logs(CID, since=since(3500), timestamps=True,
                       tty=False) == "".join(line for _, line in entries[3500:])
    assert log_queries(engine) == [{"tail": "4000"}]
    # then twice what came since the moment (1500), and back to the first size when
    # little comes
    engine.requests.clear()
    client.logs(CID, since=since(4990), timestamps=True, tty=False)
    client.logs(CID, since=since(4990), timestamps=True, tty=False)
    assert log_queries(engine) == [{"tail": "3000"}, {"tail": "1000"}]


@pytest.mark.usefixtures("first_tail")
def test_a_tail_must_begin_a_second_before_the_moment(engine: Engine) -> None:
    # stdout's and stderr's entries reach the log a little out of their stamps' order
    entries = [stamped(i) for i in range(3000, 5000)]  # the tail of 1000 begins at 40.00 s
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    for moment, queries in ((4050, [{"tail": "1000"}, {"since": since(4050)}]),
                            # its second entry (40.01) must be before the reach too
                            (4101, [{"tail": "1000"}, {"since": since(4101)}]),
                            (4102, [{"tail": "1000"}])):
        engine.requests.clear()
        assert api(engine).logs(CID, since=since(moment), timestamps=True,
                                tty=False) == since_read(entries, moment)
        assert log_queries(engine) == queries, moment


@pytest.mark.usefixtures("first_tail")
def test_a_log_shorter_than_the_tail_is_whole(engine: Engine) -> None:
    entries = [stamped(i) for i in range(4050, 5000)]  # 950 entries
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    assert api(engine).logs(CID, since=since(4060), timestamps=True,
                            tty=False) == since_read(entries, 4060)
    assert log_queries(engine) == [{"tail": "1000"}]


@pytest.mark.usefixtures("first_tail")
def test_a_tail_beginning_at_a_long_lines_last_part_is_not_trusted(engine: Engine) -> None:
    # A line over 16 KB is split, every part stamped as its first (10.00 s): its last
    # part begins the tail, after an entry of the other stream stamped 45.00 s.
    entries = [*(stamped(i) for i in range(3000, 3999)), stamped(3999, at=4500),
               stamped(4000, at=1000), *(stamped(i, at=i + 600) for i in range(4001, 5000))]
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    assert api(engine).logs(CID, since=since(4200), timestamps=True,
                            tty=False) == since_read(entries, 4200)
    assert log_queries(engine) == [{"tail": "1000"}, {"since": since(4200)}]


@pytest.mark.usefixtures("first_tail")
def test_a_tail_holding_parts_of_a_long_line_is_not_trusted(engine: Engine) -> None:
    # a part without its newline: the next entry's stamp is inside the line
    entries = [stamped(i, end="" if i == 4799 else "\n") for i in range(3000, 5000)]
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    client = api(engine)
    assert client.logs(CID, since=since(4800), timestamps=True,
                       tty=False) == since_read(entries, 4800)
    assert client.logs(CID, since=since(4800), timestamps=True, tty=False)
    # read since the moment each time, the tail not grown for it (it reached back)
    assert log_queries(engine) == [{"tail": "1000"}, {"since": since(4800)}] * 2


def test_engine_stamps_are_exact() -> None:
    assert engine_api.engine_stamp("1796274000") == "2026-12-03T05:00:00.000000000Z"
    assert engine_api.engine_stamp("1796274000.5") == "2026-12-03T05:00:00.500000000Z"
    assert engine_api.engine_stamp("1796274000.123456", -1) == "2026-12-03T04:59:59.123456000Z"
    assert engine_api.engine_stamp("400.000000001") == "1970-01-01T00:06:40.000000001Z"


@pytest.mark.usefixtures("first_tail")
def test_logs_whose_stamps_are_not_utc_are_read_since_the_moment(engine: Engine) -> None:
    entries = [stamped(i, "2026-12-03T06:00:00.000000000+01:00") for i in range(2000)]
    engine.routes[f"/containers/{CID}/logs"] = log_route(entries)
    client = api(engine)
    assert client.logs(CID, since=since(1990), timestamps=True,
                       tty=False) == "".join(line for _, line in entries[1990:])
    client.logs(CID, since=since(1995), timestamps=True, tty=False)
    # the tail is not asked again for this container: it cannot be checked
    assert log_queries(engine) == [{"tail": "1000"}, {"since": since(1990)},
                                   {"since": since(1995)}]


@pytest.mark.usefixtures("first_tail")
def test_an_empty_log_is_one_question_and_logs_without_stamps_one_since(
        engine: Engine) -> None:
    engine.routes[f"/containers/{CID}/logs"] = log_route([])
    client = api(engine)
    assert client.logs(CID, since=since(0), timestamps=True, tty=False) == ""
    assert log_queries(engine) == [{"tail": "1000"}]
    engine.routes[f"/containers/{CID}/logs"] = log_route([stamped(i) for i in range(3)])
    engine.requests.clear()
    assert client.logs(CID, since=since(1), timestamps=False, tty=False) is not None
    assert log_queries(engine) == [{"since": since(1)}]


def test_logs_of_several_containers_are_one_timeline(engine: Engine, tmp_path: Path) -> None:
    second = {**WEB, "Id": "f" * 64, "Name": "/x-web-2"}
    engine.routes["/containers/json"] = json_route(
        [LIST[1], {**LIST[1], "Id": second["Id"], "Names": ["/x-web-2"]}])
    engine.routes[f"/containers/{WEB['Id']}/json"] = json_route(WEB)
    engine.routes[f"/containers/{second['Id']}/json"] = json_route(second)

    def frame(text: str) -> bytes:
        return b"\x01\x00\x00\x00" + len(text).to_bytes(4, "big") + text.encode()

    engine.routes[f"/containers/{WEB['Id']}/logs"] = unix_since(
        frame("2026-12-03T05:00:01Z a\n") + frame("2026-12-03T05:00:03Z c\n"))
    engine.routes[f"/containers/{second['Id']}/logs"] = unix_since(
        frame("2026-12-03T05:00:02Z b\n"))
    text = platform(engine, tmp_path).logs("web", "0", timestamps=True)
    assert [line[-1] for line in text.splitlines()] == ["a", "b", "c"]


def test_logs_leave_out_a_one_off_compose_run_container(engine: Engine, tmp_path: Path) -> None:
    run_id = "e" * 64
    labels = {**LIST[1]["Labels"], "com.docker.compose.oneoff": "True"}
    engine.routes["/containers/json"] = json_route(
        [LIST[1], {**LIST[1], "Id": run_id, "Names": ["/x-web-run-1"], "Labels": labels}])
    engine.routes[f"/containers/{WEB['Id']}/json"] = json_route(WEB)
    engine.routes[f"/containers/{WEB['Id']}/logs"] = unix_since(
        b"\x01\x00\x00\x00\x00\x00\x00\x08served\n\n")
    engine.routes[f"/containers/{run_id}/logs"] = unix_since(
        b"\x01\x00\x00\x00\x00\x00\x00\x0bERROR: mig\n")
    assert platform(engine, tmp_path).logs("web", "0") == "served\n\n"
    assert not any(run_id in path for path in engine.paths())


def one_off(state: str, n: int) -> dict[str, Any]:
    """A `docker compose run` container of web, as the engine lists it."""
    return {**LIST[1], "Id": f"{n}" * 64, "Names": [f"/x-web-run-{n}"], "State": state,
            "Labels": {**LIST[1]["Labels"], "com.docker.compose.oneoff": "True"}}


def test_a_one_off_job_is_not_the_service(engine: Engine, tmp_path: Path) -> None:
    """An exited `compose run` (a migration) must not read as web down, nor a running
    one as a replica or as the running release: containers() is the service's own."""
    recorded_stack(engine)
    engine.routes["/containers/json"] = json_route([*LIST, one_off("exited", 1),
                                                    one_off("running", 2)])
    plat = platform(engine, tmp_path)
    assert [c.id for c in plat.containers("web")] == [WEB["Id"]]
    assert plat.running_images() == {"web": WEB["Image"], "tty": TTY["Image"]}
    assert not any("1" * 64 in path or "2" * 64 in path for path in engine.paths())
    # the CLI path (`docker compose ps -a` lists jobs too) leaves them out the same way
    cli = platform(engine, tmp_path)
    cli.engine = None
    job = container_info({**WEB, "Id": "1" * 64, "Config": {
        **WEB["Config"], "Labels": {**WEB["Config"]["Labels"],
                                    "com.docker.compose.oneoff": "True"}}})
    cli.compose.containers = lambda *services: [container_info(WEB), job]  # type: ignore[method-assign]
    assert [c.id for c in cli.containers()] == [WEB["Id"]]
    assert [c.id for c in cli.one_off_jobs()] == ["1" * 64]


def job_inspect(n: str, state: str) -> dict[str, Any]:
    return {**WEB, "Id": n * 64, "Name": f"/x-web-run-{n}",
            "State": {**WEB["State"], "Status": state},
            "Config": {**WEB["Config"], "Labels": one_off(state, int(n))["Labels"]}}


def jobs_stack(engine: Engine, states: dict[str, str]) -> dict[str, str]:
    """The recorded stack plus a job per entry (number -> state); the engine lists and
    inspects them as ``states`` says at the time (a test changes it)."""
    recorded_stack(engine)
    engine.routes["/containers/json"] = lambda h, q: (200, json.dumps(
        [*LIST, *(one_off(st, int(n)) for n, st in states.items())]).encode())
    for n in states:
        engine.routes[f"/containers/{n * 64}/json"] = (
            lambda h, q, n=n: (200, json.dumps(job_inspect(n, states[n])).encode()))
    stopping_web(engine)  # the service's own container stops when asked
    return states


def quiet_compose(plat: ComposePlatform, **web: Any) -> list[tuple[str, ...]]:
    """Compose's runs recorded, not made; the definition: web (with ``web``'s keys)
    and tty."""
    ran: list[tuple[str, ...]] = []
    plat.compose.run = lambda *a, **k: ran.append(a)  # type: ignore[method-assign,assignment,return-value]
    plat.definition = lambda: {"services": {"web": web, "tty": {}}}  # type: ignore[method-assign]
    return ran


def test_stopping_a_service_stops_its_live_jobs_and_says_so(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`docker compose stop web` leaves a `compose run` of web running: a job writing
    into a database being restored. It is stopped with the service, and named; so is
    a paused one (unpaused later it would write into the restored data)."""
    states = jobs_stack(engine, {"1": "exited", "2": "running", "3": "paused"})

    def stop(n: str) -> Route:
        def route(h: Any, q: Any) -> tuple[int, bytes]:
            states[n] = "exited"
            return 204, b""
        return route

    for n in ("2", "3"):
        engine.routes[f"/containers/{n * 64}/stop"] = stop(n)
    plat = platform(engine, tmp_path)
    composed = quiet_compose(plat)
    with caplog.at_level("WARNING"):
        assert plat.stop(["web"]) == ["web"]
    # the service's container by the engine, with its own grace (no t: the one Compose
    # set on it from stop_grace_period), as `docker compose stop` asks; no Compose run
    assert composed == [] and [q for p, q in engine.requests
                               if p == f"/v1.41/containers/{WEB['Id']}/stop"] == [{}]
    # only the live jobs, with Compose's grace; the exited one is left alone
    assert sorted((p, q["t"]) for p, q in engine.requests
                  if p.endswith("/stop") and WEB["Id"] not in p) == [
        (f"/v1.41/containers/{n * 64}/stop", ["10"]) for n in ("2", "3")]
    for n in ("2", "3"):
        assert f"stopped x-web-run-{n}, a `docker compose run` job of web" in caplog.text
    assert "x-web-run-1" not in caplog.text


def stopping_web(engine: Engine, *, stops: bool = True) -> list[dict[str, list[str]]]:
    """The web container, running until the engine is asked to stop it (``stops``
    False: it goes on running); returns the queries of its stops."""
    state = {"web": "running"}
    asked: list[dict[str, list[str]]] = []
    listed = engine.routes["/containers/json"]

    def listing(h: Any, q: Any) -> tuple[int, bytes]:
        status, body = listed(h, q)
        docs = [{**c, "State": state["web"]} if c["Id"] == WEB["Id"] else c
                for c in json.loads(body)]
        return status, json.dumps(docs).encode()

    def stop(h: Any, q: dict[str, list[str]]) -> tuple[int, bytes]:
        asked.append(q)
        if stops:
            state["web"] = "exited"
        return 204, b""

    engine.routes["/containers/json"] = listing
    engine.routes[f"/containers/{WEB['Id']}/json"] = lambda h, q: (200, json.dumps(
        {**WEB, "State": {**WEB["State"], "Status": state["web"],
                          "Running": state["web"] == "running"}}).encode())
    engine.routes[f"/containers/{WEB['Id']}/stop"] = stop
    return asked


def test_a_service_container_still_running_after_its_stop_fails_the_stop(
        engine: Engine, tmp_path: Path) -> None:
    """Nothing may write once the writers are stopped: a container the engine still
    runs after its stop (a stop signal it ignores under a grace the engine did not
    end) fails the step, named."""
    recorded_stack(engine)
    stopping_web(engine, stops=False)
    plat = platform(engine, tmp_path)
    quiet_compose(plat)
    with pytest.raises(ExternalError, match=r"could not stop \S+-web-1$") as caught:
        plat.stop(["web"])
    assert caught.value.fix is not None and "docker stop" in caught.value.fix


@pytest.mark.parametrize("web", [{"pre_stop": [{"command": ["./flush.sh"]}]},
                                 {"stop_grace_period": "2m"}], ids=["pre_stop", "grace"])
def test_a_service_with_a_pre_stop_hook_or_its_own_grace_is_stopped_by_compose(
        engine: Engine, tmp_path: Path, web: dict[str, Any]) -> None:
    """Compose runs a service's pre_stop hooks before the stop (a writer may flush
    acknowledged writes there) and waits its stop_grace_period: the engine alone
    does neither, so Compose stops it."""
    recorded_stack(engine)
    asked = stopping_web(engine)
    plat = platform(engine, tmp_path)
    composed = quiet_compose(plat, **web)
    assert plat.stop(["web"]) == ["web"]
    assert composed == [("stop", "web")] and asked == []


def test_without_the_engine_api_compose_stops_the_services(
        engine: Engine, tmp_path: Path) -> None:
    recorded_stack(engine)
    plat = platform(engine, tmp_path)
    composed = quiet_compose(plat)
    listed = plat.containers("web")
    plat.engine = None
    plat.containers = lambda *services: listed  # type: ignore[method-assign]
    plat.one_off_jobs = lambda *services: []  # type: ignore[method-assign]
    assert plat.stop(["web"]) == ["web"] and composed == [("stop", "web")]


def test_a_job_gone_before_its_stop_is_not_said_to_be_stopped(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    states = jobs_stack(engine, {"2": "running"})

    def gone(h: Any, q: Any) -> tuple[int, bytes]:
        del states["2"]  # a --rm job that finished: removed
        return 404, b'{"message":"No such container"}'

    engine.routes[f"/containers/{'2' * 64}/stop"] = gone
    plat = platform(engine, tmp_path)
    quiet_compose(plat)
    with caplog.at_level("WARNING"):
        plat.stop(["web"])
    assert "x-web-run-2, a `docker compose run` job of web, had ended" in caplog.text
    assert "stopped x-web-run-2" not in caplog.text


@pytest.mark.parametrize("answer", [(204, b""), (500, b'{"message":"cannot kill"}')])
def test_a_job_that_will_not_stop_fails_the_stop(engine: Engine, tmp_path: Path,
                                                 answer: tuple[int, bytes]) -> None:
    """Better no restore than one a job keeps writing into: whether the engine said
    it stopped (yet it runs on) or refused, the stop fails and names the job."""
    jobs_stack(engine, {"2": "running"})
    engine.routes[f"/containers/{'2' * 64}/stop"] = lambda h, q: answer
    plat = platform(engine, tmp_path)
    quiet_compose(plat)
    with pytest.raises(ExternalError, match="could not stop x-web-run-2") as caught:
        plat.stop(["web"])
    assert caught.value.fix and "docker stop x-web-run-2" in caught.value.fix


def test_stopping_no_service_stops_nothing(engine: Engine, tmp_path: Path) -> None:
    jobs_stack(engine, {"2": "running"})
    plat = platform(engine, tmp_path)
    composed = quiet_compose(plat)
    assert plat.stop([]) == [] and composed == []
    assert not any(p.endswith("/stop") for p in engine.paths())


# -- the event stream ------------------------------------------------------------------
class Stream:
    """A chunked /events answer the test feeds one event at a time."""

    def __init__(self) -> None:
        self.lines: list[bytes | None] = []
        self.ready = threading.Condition()
        self.opened = threading.Event()
        self.query: dict[str, list[str]] = {}

    def feed(self, line: bytes | None) -> None:
        with self.ready:
            self.lines.append(line)
            self.ready.notify()

    def __call__(self, h: Handler, q: dict[str, list[str]]) -> None:
        self.query = q
        h.send_response(200)
        h.send_header("Api-Version", "1.41")
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        self.opened.set()
        while True:
            with self.ready:
                self.ready.wait_for(lambda: bool(self.lines), timeout=10)
                if not self.lines:
                    return
                line = self.lines.pop(0)
            with contextlib.suppress(OSError):
                if line is None:  # the engine ends the stream
                    h.wfile.write(b"0\r\n\r\n")
                    h.wfile.flush()
                    h.close_connection = True
                    return
                h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                h.wfile.flush()


def test_events_arrive_one_by_one_as_the_engine_sends_them(engine: Engine,
                                                           tmp_path: Path) -> None:
    recorded = (DATA / "events.jsonl").read_bytes().splitlines(keepends=True)
    stream = Stream()
    engine.routes["/events"] = stream
    events = platform(engine, tmp_path).events()
    assert events is not None
    filters = json.loads(stream.query["filters"][0])
    assert filters == {"type": ["container"], "label": [f"com.docker.compose.project={PROJECT}"],
                       "event": ["health_status", "die", "oom", "restart"]}
    got = iter(events)
    stream.feed(recorded[0])
    first = next(got)
    assert (first.service, first.action) == ("web", "health_status: unhealthy")
    assert first.container_id == WEB["Id"] and first.time == pytest.approx(1796277251.52157)
    stream.feed(b'{"Type":"container","Action":"exec_start: sh","Actor":{}}\n')  # not ours
    stream.feed(recorded[1])
    second = next(got)
    assert (second.service, second.action) == ("tty", "die")
    stream.feed(None)
    assert list(got) == []


def test_closing_the_stream_ends_a_reader_waiting_for_the_next_event(
        engine: Engine, tmp_path: Path) -> None:
    stream = Stream()
    engine.routes["/events"] = stream
    events = platform(engine, tmp_path).events()
    assert events is not None
    done = threading.Event()

    def read() -> None:
        for _ in events:
            pass
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert stream.opened.wait(5)
    time.sleep(0.05)  # the reader is blocked in readline
    events.close()
    assert done.wait(5)
    stream.feed(None)  # let the server's handler finish


def test_one_unreadable_log_is_left_out_but_a_silent_engine_is_an_error(
        engine: Engine, tmp_path: Path) -> None:
    second = {**WEB, "Id": "f" * 64, "Name": "/x-web-2"}
    engine.routes["/containers/json"] = json_route(
        [LIST[1], {**LIST[1], "Id": second["Id"], "Names": ["/x-web-2"]}])
    engine.routes[f"/containers/{WEB['Id']}/json"] = json_route(WEB)
    engine.routes[f"/containers/{second['Id']}/json"] = json_route(second)
    engine.routes[f"/containers/{WEB['Id']}/logs"] = lambda h, q: (
        500, b'{"message":"configured logging driver does not support reading"}')
    engine.routes[f"/containers/{second['Id']}/logs"] = unix_since(
        b"\x01\x00\x00\x00\x00\x00\x00\x03ok\n")
    plat = platform(engine, tmp_path)
    assert plat.logs("web", "0") == "ok\n"
    plat.engine = EngineAPI(Environment(), str(tmp_path / "absent.sock"))
    with pytest.raises(DockerUnavailableError):
        plat.logs("web", "0")


# -- retiring a container and reading its processes --------------------------------
def test_retire_stops_then_runs_after_stop_then_removes(engine: Engine, tmp_path: Path) -> None:
    engine.routes["/containers/aaa/stop"] = lambda h, q: (204, b"")
    engine.routes["/containers/bbb/stop"] = lambda h, q: (404, b'{"message":"No such container"}')
    engine.routes["/containers/aaa"] = lambda h, q: (204, b"")
    at_after_stop: list[str] = []
    gone = platform(engine, tmp_path).retire(
        ["aaa", "bbb"], grace_seconds=9.6,
        after_stop=lambda: at_after_stop.extend(m for m in engine.methods if "/containers/" in m))
    assert gone == ["aaa"]  # bbb was already gone: nothing to remove
    # the proxies' reload ran once both stops were answered, before any removal
    assert sorted(at_after_stop) == ["POST /v1.41/containers/aaa/stop",
                                     "POST /v1.41/containers/bbb/stop"]
    assert [m for m in engine.methods if "/containers/" in m][2:] == [
        "DELETE /v1.41/containers/aaa"]
    assert [q["t"] for p, q in engine.requests if p.endswith("/stop")] == [["10"], ["10"]]
    assert [q["force"] for p, q in engine.requests if p.endswith("/aaa")] == [["1"]]


def test_retire_after_a_crash_between_stop_and_remove(engine: Engine, tmp_path: Path) -> None:
    """`resume` after a kill -9 between the stop and the removal: the engine answers
    304 (already stopped); the reload still runs and the container is removed."""
    engine.routes["/containers/aaa/stop"] = lambda h, q: (304, b"")
    engine.routes["/containers/aaa"] = lambda h, q: (204, b"")
    ran: list[bool] = []
    assert platform(engine, tmp_path).retire(["aaa"], grace_seconds=0.4,
                                             after_stop=lambda: ran.append(True)) == ["aaa"]
    assert ran == [True] and engine.methods[-1] == "DELETE /v1.41/containers/aaa"
    # a 0.4 s stop_grace_period is not rounded down to an immediate SIGKILL
    assert [q["t"] for p, q in engine.requests if p.endswith("/stop")] == [["1"]]


def test_retire_removes_what_the_engine_would_not_stop(engine: Engine, tmp_path: Path) -> None:
    """As `docker stop` failing then `docker rm -f`: the container still goes."""
    engine.routes["/containers/aaa/stop"] = lambda h, q: (500, b'{"message":"cannot kill"}')
    engine.routes["/containers/aaa"] = lambda h, q: (204, b"")
    assert platform(engine, tmp_path).retire(["aaa"], grace_seconds=1) == ["aaa"]
    assert engine.methods[-1] == "DELETE /v1.41/containers/aaa"


def test_a_stop_the_engine_refuses_is_an_error(engine: Engine) -> None:
    engine.routes["/containers/aaa/stop"] = lambda h, q: (500, b'{"message":"cannot kill"}')
    with pytest.raises(ExternalError, match="stop aaa: 500 cannot kill"):
        api(engine).stop_container("aaa", grace_seconds=1)


def test_processes_as_docker_top_prints_them(engine: Engine) -> None:
    engine.routes["/containers/aaa/top"] = json_route({
        "Titles": ["PID", "COMMAND"],
        "Processes": [["12", "nginx: master process nginx -g daemon off;"],
                      ["13", "nginx: worker process is shutting down"]]})
    client = api(engine)
    assert client.processes("aaa") == ["12 nginx: master process nginx -g daemon off;",
                                       "13 nginx: worker process is shutting down"]
    assert engine.requests[-1][1]["ps_args"] == ["-o pid,args"]
    assert client.processes("gone") == []  # 404: no processes, not an error


# -- images ----------------------------------------------------------------------------
IMAGE = {"Id": "sha256:" + "9f" * 32, "RepoTags": ["backout-test/backend:healthy"],
         "RepoDigests": [], "Created": "2026-12-01T10:00:00Z",
         "Config": {"Labels": {"org.opencontainers.image.revision": "abc"}}}


def test_an_image_is_inspected_by_name_or_id_and_a_missing_one_is_none(
        engine: Engine, tmp_path: Path) -> None:
    engine.routes["/images/backout-test/backend:healthy/json"] = json_route(IMAGE)
    engine.routes[f"/images/{IMAGE['Id']}/json"] = json_route(IMAGE)
    plat = platform(engine, tmp_path)
    for ref in ("backout-test/backend:healthy", IMAGE["Id"]):
        info = plat.image(ref)
        assert info is not None and info.id == IMAGE["Id"]
        assert info.repo_tags == ("backout-test/backend:healthy",)
        assert info.labels == {"org.opencontainers.image.revision": "abc"}
    assert plat.image("backout-test/backend:gone") is None  # the engine's 404


def test_a_tag_is_split_into_repository_and_tag(engine: Engine, tmp_path: Path) -> None:
    engine.routes[f"/images/{IMAGE['Id']}/tag"] = lambda h, q: (201, b"")
    plat = platform(engine, tmp_path)
    plat.tag(IMAGE["Id"], "backout-retained/proj.backend:target-9f86dd214879")
    plat.tag(IMAGE["Id"], "registry.local:5000/team/app")  # a port is not a tag
    sent = [q for p, q in engine.requests if p.endswith("/tag")]
    assert sent == [{"repo": ["backout-retained/proj.backend"], "tag": ["target-9f86dd214879"]},
                    {"repo": ["registry.local:5000/team/app"], "tag": ["latest"]}]
    assert engine.methods[-1] == f"POST /v1.41/images/{IMAGE['Id']}/tag"


def test_a_tag_the_engine_refuses_is_an_error(engine: Engine) -> None:
    engine.routes["/images/sha256:aa/tag"] = lambda h, q: (
        400, b'{"message":"invalid reference format"}')
    with pytest.raises(ExternalError, match="400 invalid reference format"):
        api(engine).tag_image("sha256:aa", "Bad:Ref")


# -- exec into a service -----------------------------------------------------------------
def _listed(*containers: tuple[str, str, str, str | None]) -> list[dict[str, Any]]:
    """(id, number, state, oneoff) -> a container as the engine lists it."""
    return [{"Id": cid, "Names": [f"/{PROJECT}-redis-{number}"], "State": state,
             "Labels": {"com.docker.compose.project": PROJECT,
                        "com.docker.compose.service": "redis",
                        "com.docker.compose.container-number": number,
                        **({"com.docker.compose.oneoff": oneoff} if oneoff else {})}}
            for cid, number, state, oneoff in containers]


@pytest.mark.parametrize(("containers", "target"), [
    ((("c1", "1", "running", "False"),), "c1"),
    # a one-off `compose run` container numbered 1 too: never the exec target
    ((("run1", "1", "running", "True"), ("c1", "1", "running", "False")), "c1"),
    # number 1 stopped, 2 running (after a start-first switch): Compose picks
    ((("c1", "1", "exited", None), ("c2", "2", "running", None)), None),
    ((("c2", "2", "running", None),), None),
    ((), None),  # no container: Compose says "service is not running"
])
def test_exec_goes_straight_to_the_container_compose_exec_would_pick(
        engine: Engine, tmp_path: Path, containers: Any, target: str | None) -> None:
    engine.routes["/containers/json"] = json_route(_listed(*containers))
    argv = platform(engine, tmp_path).exec_argv("redis", ["redis-cli", "PING"],
                                                ["REDISCLI_AUTH"])
    if target is None:
        assert argv[:2] == ["docker", "compose"]
        assert argv[argv.index("exec"):] == ["exec", "-T", "-e", "REDISCLI_AUTH", "redis",
                                             "redis-cli", "PING"]
    else:
        assert argv == ["docker", "exec", "-i", "-e", "REDISCLI_AUTH", target,
                        "redis-cli", "PING"]
    listed = [q for p, q in engine.requests if p.endswith("/containers/json")]
    assert json.loads(listed[-1]["filters"][0])["label"] == [
        f"com.docker.compose.project={PROJECT}", "com.docker.compose.service=redis"]


@pytest.mark.parametrize(("containers", "target"), [
    ((("c1", "1", "running", "False"),), "c1"),
    ((("run1", "1", "running", "True"), ("c1", "1", "running", "False")), "c1"),
    ((("c1", "1", "exited", None), ("c2", "2", "running", None)), None),
    ((), None),
])
def test_a_container_beside_a_service_shares_its_network_and_binds_backouts_directory(
        engine: Engine, tmp_path: Path, containers: Any, target: str | None) -> None:
    listed = _listed(*containers)
    for entry in listed:
        entry["ImageID"] = f"sha256:{entry['Id']}image"
    left = [{"Id": "left1", "Labels": {"io.backout.dump-helper": "x"}}]

    def listing(h: Any, q: dict[str, list[str]]) -> tuple[int, bytes]:
        labels = json.loads(q["filters"][0])["label"]
        return 200, json.dumps(left if labels == ["io.backout.dump-helper=x"] else listed).encode()

    engine.routes["/containers/json"] = listing
    engine.routes["/containers/left1"] = lambda h, q: (204, b"")
    engine.routes["/version"] = json_route({"KernelVersion": os.uname().release})
    argv = platform(engine, tmp_path).beside_argv(
        "redis", ["sh", "-c", "dump > /in/x"], ["MYSQL_PWD"], mount=(tmp_path / "d", "/in"),
        label="io.backout.dump-helper=x")
    if target is None:
        assert argv is None  # the caller's other way: nothing here to stand beside
        return
    # one left by a killed run (waiting for ever to open its FIFO) goes first, with the
    # anonymous volumes of its image; nothing else is removed
    removals = [(p, q) for p, q in engine.requests if "/containers/left1" in p]
    assert [q.get("v") for _, q in removals] == [["1"]]
    assert [m for m in engine.methods if m.startswith("DELETE")] == [
        m for m in engine.methods if m.startswith("DELETE") and "left1" in m] != []
    assert argv == ["docker", "run", "--rm", "--network", f"container:{target}",
                    "--user", f"{os.getuid()}:{os.getgid()}",
                    "--mount", f"type=bind,src={tmp_path / 'd'},dst=/in",
                    "--label", "io.backout.dump-helper=x", "-e", "MYSQL_PWD",
                    "--entrypoint", "sh", f"sha256:{target}image", "-c", "dump > /in/x"]


def test_no_container_beside_where_the_directory_could_not_be_bound(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = _listed(("c1", "1", "running", None))
    listed[0]["ImageID"] = "sha256:i"
    engine.routes["/containers/json"] = lambda h, q: (
        200, json.dumps([] if "label=l" in str(q) or '"l"' in str(q) else listed).encode())
    engine.routes["/version"] = json_route({"KernelVersion": os.uname().release})
    beside = platform(engine, tmp_path)

    def argv(directory: Path) -> list[str] | None:
        return beside.beside_argv("redis", ["true"], mount=(directory, "/in"), label="l")

    assert argv(tmp_path) is not None
    assert argv(tmp_path / "a,b") is None  # --mount's values are comma-separated
    assert argv(tmp_path / 'a"b') is None
    # an engine on another kernel (Docker Desktop's VM behind a local socket): its
    # bind mounts are its file system's, the FIFO there not the one read here
    engine.routes["/version"] = json_route({"KernelVersion": "6.10.14-linuxkit"})
    assert platform(engine, tmp_path).beside_argv(
        "redis", ["true"], mount=(tmp_path, "/in"), label="l") is None
    monkeypatch.setattr(sys, "platform", "darwin")  # the engine in a VM: its own /tmp
    assert argv(tmp_path) is None
    assert ComposePlatform(Environment(env={"DOCKER_HOST": "tcp://10.0.0.1:2375", "PATH": ""}),
                           beside.config).beside_argv(
        "redis", ["true"], mount=(tmp_path, "/in"), label="l") is None
