"""Health probes and metrics scrapes to loopback never go through a proxy.

A real HTTP proxy (a server on 127.0.0.1 that answers every proxied request with
502 and counts them) is set as http_proxy with no_proxy unset, as on many company
machines. The probe of a real server on 127.0.0.1 must reach the server itself."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from backout.adapters import http
from backout.environment import Environment


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else b"# TYPE up gauge\nup 1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


class _Proxy(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Proxy.seen.append(self.path)  # a proxied request carries the absolute URL
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, list[str]]]:
    app, proxy = _serve(_App), _serve(_Proxy)
    _Proxy.seen = []
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy"):
        monkeypatch.setenv(var, url)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's cached opener
    try:
        yield int(app.server_address[1]), _Proxy.seen
    finally:
        app.shutdown()
        proxy.shutdown()


def test_the_proxy_of_this_test_would_fail_a_probe(proxied: tuple[int, list[str]]) -> None:
    port, seen = proxied
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    assert caught.value.code == 502 and seen  # plain urllib goes through it


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_probes_and_scrapes_to_loopback_bypass_the_proxy(
        proxied: tuple[int, list[str]], host: str) -> None:
    port, seen = proxied
    probe = http.get(Environment(), f"http://{host}:{port}/health", timeout=5)
    assert probe.status == 200 and probe.body == b"ok", probe
    scrape = http.get(Environment(), f"http://{host}:{port}/metrics", timeout=5)
    assert scrape.status == 200 and b"up 1" in scrape.body
    with http.urlopen(f"http://{host}:{port}/health", timeout=5) as resp:  # demo, notify
        assert resp.read() == b"ok"
    assert seen == []


def test_what_counts_as_loopback() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost", "app.localhost", "[::1]"):
        assert http.is_loopback(host), host
    for host in ("10.0.0.1", "example.com", "", None, "127.0.0.1.example.com"):
        assert not http.is_loopback(host), host
