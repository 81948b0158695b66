"""The demo's web service: counts visits in Redis and exposes Prometheus metrics.

GET /         "hello from <version>", one visit counted (v3 fails ERROR_RATE of them)
GET /health   200 when Redis answers
GET /metrics  http_requests_total{path,status}, http_request_duration_seconds
`app.py healthcheck` exits 0 when /health answers 200 (the image's HEALTHCHECK).
"""

import os
import random
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 8080
if sys.argv[1:2] == ["healthcheck"]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=3) as r:
            sys.exit(0 if r.status == 200 else 1)
    except Exception:
        sys.exit(1)

import redis  # noqa: E402  (after the healthcheck: keep the probe cheap)

VERSION = os.environ.get("VERSION", "v1")
ERROR_RATE = float(os.environ.get("ERROR_RATE", "0"))
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
db = redis.Redis(host=os.environ.get("REDIS_HOST", "redis"), socket_timeout=2)
lock = threading.Lock()
requests: dict[tuple[str, int], int] = {}
histograms: dict[str, list[float]] = {}  # path -> per-bucket counts, +Inf count, sum


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        start = time.monotonic()
        path = self.path.split("?")[0]
        if path == "/metrics":
            status, body = 200, self.metrics()
        elif path == "/health":
            try:
                db.ping()
                status, body = 200, "ok\n"
            except redis.RedisError:
                status, body = 503, "redis unreachable\n"
        elif path == "/":
            if random.random() < ERROR_RATE:
                status, body = 500, "internal server error\n"
            else:
                visits = db.incr("visits")
                db.rpush("visit_log", f"{time.time():.3f} {VERSION}")
                status, body = 200, f"hello from {VERSION} (visit {visits})\n"
        else:
            status, body = 404, "not found\n"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with lock:
            requests[(path, status)] = requests.get((path, status), 0) + 1
            took = time.monotonic() - start
            h = histograms.setdefault(path, [0.0] * (len(BUCKETS) + 2))
            for i, b in enumerate(BUCKETS):
                h[i] += took <= b
            h[-2] += 1
            h[-1] += took

    def metrics(self) -> str:
        with lock:
            lines = ["# TYPE http_requests_total counter"]
            lines += [f'http_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(requests.items())]
            # The gauges and counters the runbook's matrix reads; this tiny app has no
            # circuit breakers, pool or logins, so they are honest zeros.
            lines += ["# TYPE circuit_breakers_open gauge", "circuit_breakers_open 0",
                      "# TYPE db_pool_in_use gauge", "db_pool_in_use 0",
                      "# TYPE db_pool_size gauge", "db_pool_size 10",
                      "# TYPE auth_attempts_total counter", "auth_attempts_total 0",
                      "# TYPE auth_failures_total counter", "auth_failures_total 0",
                      "# TYPE queue_lag gauge", "queue_lag 0"]
            lines.append("# TYPE http_request_duration_seconds histogram")
            for p, h in sorted(histograms.items()):
                for b, count in zip(BUCKETS, h, strict=False):
                    lines.append(f'http_request_duration_seconds_bucket{{path="{p}",le="{b}"}} '
                                 f"{count:g}")
                lines.append(f'http_request_duration_seconds_bucket{{path="{p}",le="+Inf"}} '
                             f"{h[-2]:g}")
                lines.append(f'http_request_duration_seconds_sum{{path="{p}"}} {h[-1]}')
                lines.append(f'http_request_duration_seconds_count{{path="{p}"}} {h[-2]:g}')
        return "\n".join(lines) + "\n"

    def log_message(self, fmt: str, *args: object) -> None:
        # An access log line per request, as most servers write: a 500 is a status
        # here, not an "error" line, so only the metrics (the watch) reveal v3.
        sys.stdout.write(f"{self.address_string()} {fmt % args}\n")


print(f"demo web {VERSION} listening on :{PORT}", flush=True)
ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
