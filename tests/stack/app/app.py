#!/usr/bin/env python3
"""The backout test app: one program, three roles, five modes.

ROLE (backend | frontend | model-server) picks the endpoints; MODE (healthy | errors |
slow | crashloop | unhealthy) picks the built-in fault. Both are baked into the image
(see Dockerfile) so that an image tag such as ``backout-test/backend:errors`` *is* a
version with a known behaviour.

Standard library only, plus Debian's python3-pymysql / python3-redis / python3-psycopg2
and the pymongo wheel, imported lazily so that ``app.py healthcheck`` starts fast.

Endpoints (all roles):
  GET  /metrics          Prometheus text format
  GET  /_fault           current fault settings (JSON)
  POST /_fault           change fault settings at run time, e.g.
                         {"health": false}, {"error_rate": 0.5}, {"latency_seconds": 6},
                         {"circuit_breakers_open": 3}, {"db_pool_in_use": 10},
                         {"auth_failure_rate": 0.9}, {"queue_lag": 5000},
                         {"write_interval": 0}, {"hold_mb": 200}, {"reset": true}
                         (hold_mb: keep that many MiB of touched memory allocated, as a
                         leak would; 0 frees it)
backend:       GET /api/v1/health/check, GET|POST /api/v1/items, POST /api/v1/login,
               GET /api/v1/stats
frontend:      GET /, GET /health
model-server:  GET /healthy-check, GET|POST /predict
"""

import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager, suppress
from datetime import UTC, datetime

ROLE = os.environ.get("ROLE", "backend")
MODE = os.environ.get("MODE", "healthy")
VERSION = os.environ.get("APP_VERSION") or MODE
DEFAULT_PORTS = {"backend": 8000, "frontend": 3000, "model-server": 8005}
PORT = int(os.environ.get("PORT") or DEFAULT_PORTS.get(ROLE, 8000))
HEALTH_PATHS = {
    "backend": "/api/v1/health/check",
    "frontend": "/health",
    "model-server": "/healthy-check",
}
HEALTH_PATH = HEALTH_PATHS.get(ROLE, "/health")
ROUTES = {
    "backend": {"/api/v1/health/check", "/api/v1/items", "/api/v1/login", "/api/v1/stats", "/"},
    "frontend": {"/", "/health"},
    "model-server": {"/healthy-check", "/predict", "/"},
}
COMMON_ROUTES = {"/metrics", "/_fault"}
# Requests to these paths are never slowed down or failed by the error/slow modes.
NON_API = {HEALTH_PATH, "/metrics", "/_fault"}
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def healthcheck() -> int:
    """`app.py healthcheck`: exit 0 if the local health endpoint answers 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{HEALTH_PATH}", timeout=8) as r:
            return 0 if r.status == 200 else 1
    except Exception as exc:
        print(f"healthcheck failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__" and sys.argv[1:2] == ["healthcheck"]:
    sys.exit(healthcheck())  # before the rest of the module: keep the probe cheap

# --------------------------------------------------------------------------- logging

_log_lock = threading.Lock()


def log(level: str, msg: str) -> None:
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with _log_lock:
        sys.stdout.write(f"{ts} {level} {ROLE}[{MODE}] {msg}\n")
        sys.stdout.flush()


# --------------------------------------------------------------------------- config


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


class Faults:
    """Fault knobs: initial values from MODE and env, changeable via POST /_fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = self.defaults()

    @staticmethod
    def defaults() -> dict:
        in_use = os.environ.get("DB_POOL_IN_USE", "")
        return {
            "health": MODE != "unhealthy",
            "error_rate": env_float("ERROR_RATE", 0.6) if MODE == "errors" else 0.0,
            "latency_seconds": env_float("SLOW_SECONDS", 6.0) if MODE == "slow" else 0.0,
            "circuit_breakers_open": env_int("CIRCUIT_BREAKERS_OPEN", 0),
            "db_pool_size": env_int("DB_POOL_SIZE", 10),
            # None: report the real number of pooled connections in use
            "db_pool_in_use": int(in_use) if in_use.strip() else None,
            "auth_failure_rate": env_float("AUTH_FAILURE_RATE", 0.0),
            "queue_lag": env_float("QUEUE_LAG", 0.0),
            "write_interval": env_float("WRITE_INTERVAL", 0.5),
            "hold_mb": 0.0,
        }

    def get(self, key: str):
        with self._lock:
            return self._state[key]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._state)

    def update(self, changes: dict) -> dict:
        with self._lock:
            if changes.get("reset"):
                self._state = self.defaults()
            for key, value in changes.items():
                if key == "reset":
                    continue
                if key not in self._state:
                    raise ValueError(f"unknown fault {key!r}; known: {sorted(self._state)}")
                if key == "health":
                    value = bool(value)
                elif key == "db_pool_in_use" and value is None:
                    pass
                elif key in ("circuit_breakers_open", "db_pool_size", "db_pool_in_use"):
                    value = int(value)
                else:
                    value = float(value)
                self._state[key] = value
            hold_memory(self._state["hold_mb"])
            return dict(self._state)


_HELD: list[bytes] = []


def hold_memory(mib: float) -> None:
    """Keep ``mib`` MiB allocated and written (so resident, not just reserved), in 1 MiB
    blocks; the blocks are mmap'ed by the allocator, so dropping them gives the memory
    back to the kernel at once."""
    want = max(0, int(mib))
    del _HELD[want:]
    while len(_HELD) < want:
        _HELD.append(bytes([len(_HELD) % 251 + 1]) * (1 << 20))


FAULTS = Faults()


# --------------------------------------------------------------------------- metrics


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.hist: dict[str, list] = {}
        self.auth_attempts = 0
        self.auth_failures = 0
        self.writer_ticks = 0
        self.writer_errors = 0
        self.started = time.time()

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (path, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.hist.get(path)
            if h is None:
                h = self.hist[path] = [[0] * len(BUCKETS), 0.0, 0]
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[0][i] += 1
            h[1] += seconds
            h[2] += 1

    def render(self, pool_in_use: int) -> str:
        f = FAULTS.snapshot()
        r = f'role="{ROLE}"'
        out = []

        def metric(name, mtype, help_, samples):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {mtype}")
            out.extend(samples)

        with self.lock:
            metric("app_info", "gauge", "Static information about this app instance.",
                   [f'app_info{{{r},mode="{MODE}",version="{VERSION}"}} 1'])
            metric("process_start_time_seconds", "gauge", "Start time of the process (unix seconds).",
                   [f"process_start_time_seconds {self.started:.3f}"])
            metric("http_requests_total", "counter", "HTTP requests by path and status.",
                   [f'http_requests_total{{{r},path="{p}",status="{s}"}} {n}'
                    for (p, s), n in sorted(self.requests.items())])
            samples = []
            for p, (counts, total, count) in sorted(self.hist.items()):
                for b, c in zip(BUCKETS, counts, strict=True):
                    samples.append(f'http_request_duration_seconds_bucket{{{r},path="{p}",le="{b!r}"}} {c}')
                samples.append(f'http_request_duration_seconds_bucket{{{r},path="{p}",le="+Inf"}} {count}')
                samples.append(f'http_request_duration_seconds_sum{{{r},path="{p}"}} {total:.6f}')
                samples.append(f'http_request_duration_seconds_count{{{r},path="{p}"}} {count}')
            metric("http_request_duration_seconds", "histogram", "HTTP request latency.", samples)
            in_use = f["db_pool_in_use"] if f["db_pool_in_use"] is not None else pool_in_use
            metric("circuit_breakers_open", "gauge", "Circuit breakers currently open.",
                   [f"circuit_breakers_open{{{r}}} {f['circuit_breakers_open']}"])
            metric("db_pool_in_use", "gauge", "Database connections checked out of the pool.",
                   [f"db_pool_in_use{{{r}}} {in_use}"])
            metric("db_pool_size", "gauge", "Database connection pool size.",
                   [f"db_pool_size{{{r}}} {f['db_pool_size']}"])
            metric("auth_attempts_total", "counter", "Login attempts.",
                   [f"auth_attempts_total{{{r}}} {self.auth_attempts}"])
            metric("auth_failures_total", "counter", "Failed login attempts.",
                   [f"auth_failures_total{{{r}}} {self.auth_failures}"])
            metric("queue_lag", "gauge", "Messages waiting in the work queue.",
                   [f"queue_lag{{{r}}} {_fmt(f['queue_lag'])}"])
            metric("backend_writer_ticks_total", "counter", "Background writer transactions committed.",
                   [f"backend_writer_ticks_total{{{r}}} {self.writer_ticks}"])
            metric("backend_writer_errors_total", "counter", "Background writer failures.",
                   [f"backend_writer_errors_total{{{r}}} {self.writer_errors}"])
        return "\n".join(out) + "\n"


METRICS = Metrics()


# --------------------------------------------------------------------------- databases


def load_schema() -> list[str]:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")
    with open(path, encoding="utf-8") as fh:
        text = "\n".join(line for line in fh if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


class Pool:
    """A small MySQL connection pool whose checked-out count feeds db_pool_in_use."""

    def __init__(self, size: int) -> None:
        import pymysql

        self.pymysql = pymysql
        self.size = max(1, size)
        self.idle: list = []
        self.in_use = 0
        self.cond = threading.Condition()
        self.params = dict(
            host=os.environ.get("MYSQL_HOST", "mysql"),
            port=env_int("MYSQL_PORT", 3306),
            user=os.environ.get("MYSQL_USER", "app"),
            password=os.environ.get("MYSQL_PASSWORD", ""),
            database=os.environ.get("MYSQL_DATABASE", "app"),
            connect_timeout=3,
            read_timeout=15,
            write_timeout=15,
            autocommit=False,
            charset="utf8mb4",
        )

    @contextmanager
    def connection(self):
        with self.cond:
            deadline = time.monotonic() + 5
            while self.in_use >= self.size:
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    raise TimeoutError("database pool exhausted")
            self.in_use += 1
            conn = self.idle.pop() if self.idle else None
        try:
            if conn is None:
                conn = self.pymysql.connect(**self.params)
            else:
                conn.ping(reconnect=True)
            yield conn
        except BaseException:
            if conn is not None:
                with suppress(Exception):
                    conn.close()
                conn = None
            raise
        finally:
            with self.cond:
                self.in_use -= 1
                if conn is not None:
                    self.idle.append(conn)
                self.cond.notify()


STORES_USED = {
    # PostgreSQL only where POSTGRES_HOST says so (a stack without the service works).
    "backend": ("mysql", "redis", "mongo") + (("postgres",) if os.environ.get("POSTGRES_HOST") else ()),
    "frontend": ("redis",),
    "model-server": ("mongo",),
}


class Stores:
    """Lazily created clients for the databases this role uses."""

    def __init__(self) -> None:
        self.uses = STORES_USED.get(ROLE, ())
        self.pool = Pool(env_int("DB_POOL_SIZE", 10)) if "mysql" in self.uses else None
        self._redis = None
        self._mongo = None
        self._pg = threading.local()
        self.mongo_db_name = (
            os.environ.get("MONGO_DATABASE") or os.environ.get("MONGO_INITDB_DATABASE") or "app"
        )
        self.ready = threading.Event()

    @property
    def redis(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis(
                host=os.environ.get("REDIS_HOST", "redis"),
                port=env_int("REDIS_PORT", 6379),
                password=os.environ.get("REDIS_PASSWORD") or None,
                socket_timeout=3,
                socket_connect_timeout=3,
                decode_responses=True,
            )
        return self._redis

    @property
    def mongo(self):
        if self._mongo is None:
            import pymongo

            client = pymongo.MongoClient(
                host=os.environ.get("MONGO_HOST", "mongodb"),
                port=env_int("MONGO_PORT", 27017),
                serverSelectionTimeoutMS=3000,
                connectTimeoutMS=3000,
                socketTimeoutMS=10000,
            )
            self._mongo = client[self.mongo_db_name]
        return self._mongo

    @property
    def pg(self):
        """This thread's PostgreSQL connection (autocommit), made again after a failure."""
        conn = getattr(self._pg, "conn", None)
        if conn is None or conn.closed:
            import psycopg2

            conn = psycopg2.connect(
                host=os.environ.get("POSTGRES_HOST", "postgres"),
                port=env_int("POSTGRES_PORT", 5432),
                user=os.environ.get("POSTGRES_USER", "postgres"),
                password=os.environ.get("POSTGRES_PASSWORD", ""),
                dbname=os.environ.get("POSTGRES_DB", "app"),
                connect_timeout=3,
            )
            conn.autocommit = True
            self._pg.conn = conn
        return conn

    def pg_execute(self, sql: str, args: tuple = ()) -> list:
        try:
            with self.pg.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []
        except Exception:
            with suppress(Exception):
                self._pg.conn.close()
            self._pg.conn = None
            raise

    def pool_in_use(self) -> int:
        return self.pool.in_use if self.pool else 0

    def check(self) -> dict:
        """Ping every store this role uses; {name: "ok" | error text}."""
        result = {}
        for name in self.uses:
            try:
                if name == "mysql":
                    with self.pool.connection() as conn, conn.cursor() as cur:
                        cur.execute("SELECT 1")
                        cur.fetchall()
                        conn.rollback()
                elif name == "redis":
                    self.redis.ping()
                elif name == "mongo":
                    self.mongo.command("ping")
                elif name == "postgres":
                    self.pg_execute("SELECT 1")
                result[name] = "ok"
            except Exception as exc:
                result[name] = f"{type(exc).__name__}: {exc}"
        return result

    def initialise(self, stop: threading.Event) -> None:
        """Create the schema (retrying until the databases answer), then mark ready."""
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                if self.pool:
                    with self.pool.connection() as conn, conn.cursor() as cur:
                        for stmt in load_schema():
                            cur.execute(stmt)
                        conn.commit()
                if "redis" in self.uses:
                    self.redis.ping()
                if "mongo" in self.uses:
                    self.mongo.command("ping")
                if "postgres" in self.uses:
                    self.pg_execute(PG_SCHEMA)
                log("INFO", f"databases ready after {attempt} attempt(s): {', '.join(self.uses) or 'none'}")
                self.ready.set()
                return
            except Exception as exc:
                log("WARNING", f"databases not ready yet (attempt {attempt}): {type(exc).__name__}: {exc}")
                stop.wait(1.0)


STORES: Stores | None = None
PG_SCHEMA = ("CREATE TABLE IF NOT EXISTS items (id BIGSERIAL PRIMARY KEY, item_id BIGINT NOT NULL,"
             " name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())")


# --------------------------------------------------------------------------- writer


def writer_loop(stop: threading.Event) -> None:
    """Continuously change data in all three databases (backend only)."""
    rng = random.Random()
    last_report = time.monotonic()
    ticks_since = 0
    STORES.ready.wait()
    while not stop.is_set():
        interval = FAULTS.get("write_interval")
        if interval <= 0:
            stop.wait(0.5)
            continue
        try:
            write_tick(rng)
            with METRICS.lock:
                METRICS.writer_ticks += 1
            ticks_since += 1
        except Exception as exc:
            with METRICS.lock:
                METRICS.writer_errors += 1
            log("ERROR", f"writer tick failed: {type(exc).__name__}: {exc}")
            stop.wait(1.0)
        if time.monotonic() - last_report >= 30:
            log("INFO", f"writer: {ticks_since} transactions in the last {time.monotonic() - last_report:.0f}s")
            last_report, ticks_since = time.monotonic(), 0
        stop.wait(interval)


def write_tick(rng: random.Random) -> None:
    amounts = [rng.randint(100, 5000) for _ in range(rng.randint(1, 3))]
    total = sum(amounts)
    with STORES.pool.connection() as conn, conn.cursor() as cur:
        try:
            cur.execute(
                "INSERT INTO orders (customer_id, total_cents) VALUES (%s, %s)",
                (rng.randint(1, 20), total),
            )
            order_id = cur.lastrowid
            cur.executemany(
                "INSERT INTO order_lines (order_id, sku, amount_cents) VALUES (%s, %s, %s)",
                [(order_id, f"SKU-{rng.randint(1, 50):03d}", a) for a in amounts],
            )
            src, dst = rng.sample(range(1, 11), 2)
            amount = rng.randint(1, 2000)
            cur.execute(
                "SELECT id, balance_cents FROM accounts WHERE id IN (%s, %s) ORDER BY id FOR UPDATE",
                (src, dst),
            )
            balances = dict(cur.fetchall())
            if src in balances and dst in balances and balances[src] >= amount:
                cur.execute("UPDATE accounts SET balance_cents = balance_cents - %s WHERE id = %s", (amount, src))
                cur.execute("UPDATE accounts SET balance_cents = balance_cents + %s WHERE id = %s", (amount, dst))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    now = datetime.now(UTC)
    pipe = STORES.redis.pipeline(transaction=True)
    pipe.incr("writer:ticks")
    pipe.incrby("orders:total_cents", total)
    pipe.set(f"order:{order_id}", json.dumps({"total_cents": total, "lines": len(amounts)}), ex=86400)
    pipe.lpush("orders:recent", order_id)
    pipe.ltrim("orders:recent", 0, 99)
    pipe.execute()
    STORES.mongo.events.insert_one(
        {
            "type": "order_created",
            "order_id": order_id,
            "total_cents": total,
            "lines": len(amounts),
            "at": now.isoformat(),
            "ts": now.timestamp(),
        }
    )


# --------------------------------------------------------------------------- HTTP

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


FRONTEND_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>backout test app</title></head>
<body><h1>backout test app</h1>
<p>frontend version <span id="version">{version}</span> (mode {mode})</p>
<p>page views: <span id="views">{views}</span></p>
<p><a href="/api/v1/items">items</a></p>
</body></html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = f"backout-test-{ROLE}/{VERSION}"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_HEAD(self):
        self.dispatch("HEAD")

    # -- plumbing

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise HTTPError(400, "expected a JSON object")
        return data

    def dispatch(self, method: str) -> None:
        start = time.monotonic()
        split = urlsplit(self.path)
        path = split.path
        route = path if path in ROUTES.get(ROLE, set()) | COMMON_ROUTES else "other"
        level = "INFO"
        try:
            if path not in NON_API:
                latency = FAULTS.get("latency_seconds")
                if latency > 0:
                    time.sleep(latency)
                rate = FAULTS.get("error_rate")
                if rate > 0 and random.random() < rate:
                    raise HTTPError(500, "injected error (MODE=errors)")
            status, body, ctype = self.route(method, path, parse_qs(split.query))
        except HTTPError as exc:
            status, body, ctype = exc.status, {"error": str(exc)}, "json"
            if status >= 500:
                level = "ERROR"
        except Exception as exc:
            status, body, ctype = 500, {"error": f"{type(exc).__name__}: {exc}"}, "json"
            level = "ERROR"
            log("ERROR", f"unhandled exception in {method} {path}: "
                + " | ".join(traceback.format_exc().strip().splitlines()[-3:]))
        if ctype == "json":
            payload, ctype = (json.dumps(body) + "\n").encode(), "application/json"
        elif ctype == "html":
            payload, ctype = body.encode(), "text/html; charset=utf-8"
        else:
            payload, ctype = body.encode(), "text/plain; version=0.0.4; charset=utf-8"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-App-Role", ROLE)
            self.send_header("X-App-Version", VERSION)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - start
        METRICS.observe(route, status, elapsed)
        if status >= 500:
            level = "ERROR"
        detail = f" {body.get('error')}" if level == "ERROR" and isinstance(body, dict) else ""
        log(level, f'{self.client_address[0]} "{method} {self.path}" {status} {elapsed:.3f}s{detail}')

    # -- routes

    def route(self, method: str, path: str, query: dict):
        if path == "/metrics" and method in ("GET", "HEAD"):
            return 200, METRICS.render(STORES.pool_in_use()), "text"
        if path == "/_fault":
            if method == "POST":
                try:
                    return 200, FAULTS.update(self.read_json()), "json"
                except (TypeError, ValueError) as exc:
                    raise HTTPError(400, str(exc)) from exc
            return 200, FAULTS.snapshot(), "json"
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return self.health()
        handler = getattr(self, f"{ROLE.replace('-', '_')}_route")
        return handler(method, path, query)

    def health(self):
        body = {"status": "ok", "role": ROLE, "mode": MODE, "version": VERSION}
        if not FAULTS.get("health"):
            body["status"] = "unhealthy"
            return 503, body, "json"
        if not STORES.ready.is_set():
            body["status"] = "starting"
            return 503, body, "json"
        checks = STORES.check()
        body["checks"] = checks
        if any(v != "ok" for v in checks.values()):
            body["status"] = "degraded"
            return 503, body, "json"
        return 200, body, "json"

    def backend_route(self, method, path, query):
        if path == "/" and method == "GET":
            return 200, {"service": "backend", "version": VERSION, "mode": MODE}, "json"
        if path == "/api/v1/items":
            if method == "GET":
                limit = max(1, min(500, int((query.get("limit") or ["50"])[0])))
                with STORES.pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT id, name, created_at FROM items ORDER BY id DESC LIMIT %s", (limit,))
                    rows = cur.fetchall()
                    conn.rollback()
                items = [{"id": r[0], "name": r[1], "created_at": r[2].isoformat()} for r in rows]
                return 200, {"items": items}, "json"
            if method == "POST":
                data = self.read_json()
                name = str(data.get("name") or f"item-{random.randint(0, 10**9)}")[:255]
                with STORES.pool.connection() as conn, conn.cursor() as cur:
                    try:
                        cur.execute("INSERT INTO items (name) VALUES (%s)", (name,))
                        item_id = cur.lastrowid
                        conn.commit()
                    except BaseException:
                        conn.rollback()
                        raise
                STORES.redis.set(f"item:{item_id}", name)
                STORES.redis.incr("items:created")
                STORES.mongo.items.insert_one({"item_id": item_id, "name": name, "ts": time.time()})
                if "postgres" in STORES.uses:
                    STORES.pg_execute("INSERT INTO items (item_id, name) VALUES (%s, %s)",
                                      (item_id, name))
                return 201, {"id": item_id, "name": name}, "json"
        if path == "/api/v1/login" and method == "POST":
            data = self.read_json()
            rate = FAULTS.get("auth_failure_rate")
            failed = data.get("password") in (None, "", "wrong") or (rate > 0 and random.random() < rate)
            with METRICS.lock:
                METRICS.auth_attempts += 1
                if failed:
                    METRICS.auth_failures += 1
            if failed:
                log("WARNING", f"login failed for user {str(data.get('username'))[:64]!r}")
                return 401, {"error": "invalid credentials"}, "json"
            return 200, {"token": f"tok-{random.getrandbits(64):016x}"}, "json"
        if path == "/api/v1/stats" and method == "GET":
            with STORES.pool.connection() as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM order_lines),"
                    " (SELECT COUNT(*) FROM items), (SELECT COALESCE(SUM(balance_cents), 0) FROM accounts)"
                )
                orders, lines, items, balance = cur.fetchone()
                conn.rollback()
            return 200, {
                "orders": orders,
                "order_lines": lines,
                "items": items,
                "accounts_balance_cents": int(balance),
                "redis_writer_ticks": int(STORES.redis.get("writer:ticks") or 0),
                "mongo_events": STORES.mongo.events.estimated_document_count(),
            }, "json"
        raise HTTPError(404 if method in ("GET", "HEAD", "POST") else 405, f"no route for {method} {path}")

    def frontend_route(self, method, path, query):
        if path == "/" and method in ("GET", "HEAD"):
            try:
                views = STORES.redis.incr("frontend:pageviews")
            except Exception as exc:
                log("WARNING", f"page view counter unavailable: {exc}")
                views = "?"
            return 200, FRONTEND_PAGE.format(version=VERSION, mode=MODE, views=views), "html"
        raise HTTPError(404, f"no route for {method} {path}")

    def model_server_route(self, method, path, query):
        if path == "/" and method == "GET":
            return 200, {"service": "model-server", "version": VERSION, "mode": MODE}, "json"
        if path == "/predict" and method in ("GET", "POST"):
            data = self.read_json() if method == "POST" else {}
            x = float(data.get("x", (query.get("x") or ["1"])[0]))
            prediction = 2.5 * x + 1.0
            STORES.mongo.predictions.insert_one({"x": x, "y": prediction, "version": VERSION, "ts": time.time()})
            return 200, {"model": "demo-linear", "version": VERSION, "x": x, "prediction": prediction}, "json"
        raise HTTPError(404, f"no route for {method} {path}")


# --------------------------------------------------------------------------- main


def serve() -> int:
    global STORES
    stop = threading.Event()

    def on_signal(signum, _frame):
        log("INFO", f"received signal {signum}, shutting down")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    STORES = Stores()
    httpd = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    log("INFO", f"listening on 0.0.0.0:{PORT} (version {VERSION}, health {HEALTH_PATH})")
    threading.Thread(target=STORES.initialise, args=(stop,), name="init", daemon=True).start()
    if ROLE == "backend":
        threading.Thread(target=writer_loop, args=(stop,), name="writer", daemon=True).start()

    if MODE == "crashloop":
        deadline = time.monotonic() + env_float("CRASH_AFTER", 2.0)
        while not stop.is_set() and time.monotonic() < deadline:
            stop.wait(0.1)
        if not stop.is_set():
            raise RuntimeError("simulated fatal error: cannot load configuration (MODE=crashloop)")

    while not stop.wait(0.5):
        pass
    httpd.shutdown()
    httpd.server_close()
    log("INFO", "stopped")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["healthcheck"]:
        return healthcheck()
    try:
        return serve()
    except Exception:
        log("ERROR", "fatal: " + traceback.format_exc().strip().splitlines()[-1])
        sys.stdout.write(traceback.format_exc())
        sys.stdout.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
