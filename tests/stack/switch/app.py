"""A tiny HTTP app for the zero-downtime switch tests (issue 14), bind-mounted into an
image built FROM the test stack's backend image (python3 is there).

GET /health      200 once ready (READY_AFTER seconds after start), else 503;
                 never 200 when SWITCH_HEALTHY=0 (a release that never gets healthy),
                 nor once /tmp/drain exists (a pre_stop hook drains it)
GET /slow?s=N    answers after N seconds (an in-flight request during a switch)
GET /            {"version": ..., "container": hostname}

SWITCH_DIES_AFTER=N: the process exits (status 1) N seconds after its exec (the
container's start, not after Python's imports), an image that dies at once (with no
healthcheck, running is all the engine can report).

On SIGTERM it stops accepting at once (the listening socket is closed, so a proxy
retries another upstream) and exits only when every in-flight request is answered:
the drain a start-first switch relies on (stop_grace_period bounds it).
"""

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8080"))
VERSION = os.environ.get("SWITCH_VERSION", "v1")
HEALTHY = os.environ.get("SWITCH_HEALTHY", "1") != "0"
READY_AFTER = float(os.environ.get("READY_AFTER", "0.5"))
DIES_AFTER = os.environ.get("SWITCH_DIES_AFTER")
STARTED = time.monotonic()
DRAIN_FILE = "/tmp/drain"  # a pre_stop hook's `touch`: /health says 503 from then on


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/health":
            ready = (HEALTHY and time.monotonic() - STARTED >= READY_AFTER
                     and not os.path.exists(DRAIN_FILE))
            return self.answer(200 if ready else 503, {"ready": ready})
        if path == "/slow":
            seconds = float(dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("s", 5))
            time.sleep(seconds)
        return self.answer(200, {"version": VERSION, "container": socket.gethostname()})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def age() -> float:
    """Seconds since this process was exec'd (its start time in /proc, in clock ticks
    since boot)."""
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started


def serve() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if DIES_AFTER is not None:
        threading.Timer(max(0.0, float(DIES_AFTER) - age()), lambda: os._exit(1)).start()
    ThreadingHTTPServer.daemon_threads = False  # server_close joins in-flight requests
    ThreadingHTTPServer.request_queue_size = 128  # bursts of proxied requests wait, not fail
    httpd = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    stop.wait()
    httpd.socket.close()  # no new connections from here on
    httpd.shutdown()
    httpd.server_close()  # waits for the in-flight requests
    return 0


def healthcheck() -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=8) as r:
            return 0 if r.status == 200 else 1
    except Exception:
        return 1


if __name__ == "__main__":
    sys.exit(healthcheck() if sys.argv[1:2] == ["healthcheck"] else serve())
