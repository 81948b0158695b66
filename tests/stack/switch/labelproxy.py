"""A STAND-IN for a label-driven proxy (Traefik's Docker provider), for the switch
tests (issue 14): Traefik itself cannot be pulled or installed here. It follows what
Traefik documents and does (traefik/traefik#11252, #7886): it reads the containers
carrying its label from the Docker Engine, leaves out those whose healthcheck says
starting or unhealthy, and reads them again only at a container's `start`, `die` or
`health_status` event -- so a container told to stop is still sent requests until
it has exited. A request is passed to one backend, round robin, with no retry: a
refused connection is a 502, as Traefik answers without its retry middleware.

    python3 labelproxy.py   (PROXY_LABEL: the label to follow, its value the port;
                             PROXY_PROJECT: the Compose project it serves)
"""

import http.client
import itertools
import json
import os
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LABEL = os.environ.get("PROXY_LABEL", "io.backout.test.labelproxy.port")
SOCKET = "/var/run/docker.sock"
BACKENDS: list[str] = []
LOCK = threading.Lock()
TURN = itertools.count()


class Engine(http.client.HTTPConnection):
    def __init__(self) -> None:
        super().__init__("localhost", timeout=None)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(SOCKET)


def engine_get(path: str) -> object:
    conn = Engine()
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def resync() -> None:
    labels = [LABEL, f"com.docker.compose.project={os.environ['PROXY_PROJECT']}"]
    query = urllib.parse.urlencode({"filters": json.dumps({"label": labels})})
    found = []
    for c in engine_get(f"/containers/json?{query}"):  # running ones only
        status = c.get("Status", "")
        if "unhealthy" in status or "health: starting" in status:
            continue
        port = c["Labels"][LABEL]
        for net in (c.get("NetworkSettings") or {}).get("Networks", {}).values():
            if net.get("IPAddress"):
                found.append(f"{net['IPAddress']}:{port}")
                break
    with LOCK:
        BACKENDS[:] = sorted(found)


def watch() -> None:
    query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container"]})})
    conn = Engine()
    conn.request("GET", f"/events?{query}")
    events = conn.getresponse()
    while True:
        line = events.readline()
        if not line:
            return
        action = json.loads(line).get("Action", "")
        if action in ("start", "die") or action.startswith("health_status"):
            resync()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/proxy-health":
            return self.answer(200, b"ok\n")
        with LOCK:
            backends = list(BACKENDS)
        if not backends:
            return self.answer(503, b"no backend\n")
        backend = backends[next(TURN) % len(backends)]
        host, port = backend.rsplit(":", 1)
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", self.path)
            resp = conn.getresponse()
            body = resp.read()
        except OSError:
            return self.answer(502, b"bad gateway\n")
        self.answer(resp.status, body)

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    resync()
    threading.Thread(target=watch, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
