"""The pieces every benchmark uses: statistics, result rows, running backout and the
bare tools against one TestStack, deploys by hand, a load generator on 127.0.0.1,
a monitor subprocess and /proc readings.

Secrets never reach argv: the bare pipelines get passwords in their environment
(``docker compose exec -e NAME`` copies them into the container), like backout does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backout.adapters import http
from tests.support.stack import TestStack, wait_for

JsonDict = dict[str, Any]


class BenchError(RuntimeError):
    """A step of a benchmark did not behave as it must (not a timing judgement)."""


# --------------------------------------------------------------------------- statistics


def stats(values: Sequence[float], digits: int = 3) -> JsonDict:
    """median, min, max and every run of a list of measurements."""
    if not values:
        raise BenchError("no measurements")
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "n": len(values), "runs": [round(v, digits) for v in values]}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


@dataclass
class Row:
    """One measured figure of a benchmark, paired with its bare-tool baseline."""

    name: str
    unit: str
    backout: Sequence[float]
    baseline: Sequence[float] | None = None
    baseline_label: str | None = None
    # "lower": ratio = backout median / baseline median, lower is better (times, CPU);
    # "higher": the same ratio, higher is better (MB/s);
    # "count": no ratio (failure counts, compared side by side).
    kind: str = "lower"
    floor: JsonDict | None = None
    extra: JsonDict = field(default_factory=dict)

    def as_json(self) -> JsonDict:
        out: JsonDict = {"name": self.name, "unit": self.unit, "backout": stats(self.backout),
                         "baseline": stats(self.baseline) if self.baseline else None,
                         "baseline_label": self.baseline_label, "kind": self.kind,
                         "ratio": None, "ratio_meaning": None, "floor": self.floor,
                         "extra": self.extra}
        if self.baseline and self.kind in ("lower", "higher"):
            out["ratio"] = ratio(statistics.median(self.backout), statistics.median(self.baseline))
            out["ratio_meaning"] = (f"backout / baseline ({self.unit}), "
                                    f"{self.kind} is better")
        return out


def floor(label: str, value: float, unit: str) -> JsonDict:
    return {"label": label, "value": round(value, 3), "unit": unit}


# --------------------------------------------------------------------------- running things


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> JsonDict:
        text = self.stdout.strip()
        if not text.startswith("{"):
            raise BenchError(f"no JSON on stdout: {text[-500:]!r} / {self.stderr[-1500:]!r}")
        data: JsonDict = json.loads(text)
        return data


class Rig:
    """One running TestStack with backout initialised in it."""

    def __init__(self, stack: TestStack, scratch: Path) -> None:
        self.stack = stack
        self.project = stack.project_dir
        self.scratch = scratch  # bare dumps, dd test files: removed with the run
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.init_toml = ""  # backout.toml as `backout init` wrote it
        # measurements one benchmark makes and a later one of the same run reuses
        self.measured: dict[str, list[float]] = {}

    # -- backout and bare commands

    def backout(self, *args: str, timeout: float = 3600, expect: int | None = 0) -> Timed:
        """`backout ARGS --json` as an operator runs it (a fresh process), timed."""
        argv = [sys.executable, "-m", "backout", *args, "--json"]
        result = self._timed(argv, timeout=timeout, env=dict(os.environ))
        if expect is not None and result.returncode != expect:
            raise BenchError(f"backout {' '.join(args)} exited {result.returncode} "
                             f"(expected {expect}): {result.stdout[-1500:]} {result.stderr[-1500:]}")
        return result

    def settle(self) -> None:
        """Write back what earlier steps left dirty, untimed, so that a timed command does
        not pay for the writeback of the one before it (a 1 GB load leaves gigabytes:
        table file, binlog, redo)."""
        subprocess.run(["sync"], check=True, timeout=1800)

    def sh(self, script: str, *, env: Mapping[str, str] | None = None,
           timeout: float = 3600) -> Timed:
        """A bare pipeline through bash -o pipefail, in the project directory, with the
        compose environment (+ env: the secrets it needs, never in the script text)."""
        full = self.stack.compose_env()
        full.update(env or {})
        result = self._timed(["bash", "-o", "pipefail", "-ec", script], timeout=timeout, env=full)
        if result.returncode != 0:
            raise BenchError(f"bare command failed ({result.returncode}): {script}\n"
                             f"{result.stderr[-2000:]}")
        return result

    def _timed(self, argv: list[str], *, timeout: float, env: dict[str, str]) -> Timed:
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=self.project, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return Timed(time.monotonic() - start, proc.returncode, proc.stdout, proc.stderr)

    def compose_up(self, *services: str, no_deps: bool = True) -> float:
        """`docker compose up -d [--no-deps] --wait SERVICES`, timed (the bare command)."""
        args = "up -d" + (" --no-deps" if no_deps else "") + " --wait --wait-timeout 240"
        return self.sh(f"docker compose {args} {' '.join(services)}", timeout=600).seconds

    # -- versions (deploys by hand: edit the image tag, commit)

    def git(self, *args: str) -> str:
        return self.stack._git(*args)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def set_image(self, service: str, tag: str) -> str:
        """Point service at backout-test/<service>:<tag> in docker-compose.yml and commit
        it on main (checked out first); returns the new HEAD."""
        if self.git("rev-parse", "--abbrev-ref", "HEAD") != "main":
            self.git("checkout", "-q", "-f", "main")
        text = self.stack.compose_file.read_text()
        lines = text.splitlines(keepends=True)
        start, end = self.stack._service_block(lines, service)
        rx = re.compile(rf"^(\s+image:\s*backout-test/{re.escape(service)}:)\S+(\s*)$")
        hits = 0
        for i in range(start, end):
            if rx.match(lines[i]):
                lines[i] = rx.sub(rf"\g<1>{tag}\g<2>", lines[i])
                hits += 1
        if hits != 1:
            raise BenchError(f"no image line for {service} in docker-compose.yml")
        self.stack.compose_file.write_text("".join(lines))
        self.git("add", "docker-compose.yml")
        if self.git("status", "--porcelain", "docker-compose.yml"):
            self.git("commit", "-q", "-m", f"bench: {service} {tag}")
        return self.head()

    def deploy(self, service: str, tag: str) -> str:
        """A deploy by hand: commit the tag, `docker compose up -d --no-deps --wait`."""
        commit = self.set_image(service, tag)
        self.compose_up(service)
        want = tag_image_id(f"backout-test/{service}:{tag}")
        if self.image_id(service) != want:  # compose kept a container backout made
            self.sh(f"docker compose up -d --no-deps --force-recreate --wait "
                    f"--wait-timeout 240 {service}", timeout=600)
        if self.image_id(service) != want:
            raise BenchError(f"{service} does not run {tag} after the deploy")
        return commit

    def back_to_main(self, *services: str) -> None:
        """main checked out and SERVICES (default: all) running as its compose file says."""
        self.git("checkout", "-q", "-f", "main")
        self.compose_up(*services, no_deps=bool(services))

    def image_id(self, service: str) -> str:
        return str(self.stack.inspect(service)["Image"])

    # -- the state store (read between commands only)

    @contextlib.contextmanager
    def store(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.project / ".backout" / "state.db", timeout=30)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def step_times(self, operation_id: int, name_prefix: str) -> tuple[float, float]:
        """When one journaled step of an operation started and finished (epoch seconds,
        from the store)."""
        with self.store() as conn:
            row = conn.execute("SELECT started_at, finished_at FROM steps WHERE operation_id = ? "
                               "AND name LIKE ? ORDER BY seq LIMIT 1",
                               (operation_id, name_prefix + "%")).fetchone()
        if row is None or row[0] is None or row[1] is None:
            raise BenchError(f"operation {operation_id} has no finished step {name_prefix!r}")
        return iso_epoch(row[0]), iso_epoch(row[1])

    def step_seconds(self, operation_id: int, name_prefix: str) -> float:
        """Duration of one journaled step of an operation (from the store)."""
        started, finished = self.step_times(operation_id, name_prefix)
        return finished - started

    def reset_monitor_state(self) -> None:
        """Forget the policy state of an earlier monitor run (a real monitor keeps it on
        purpose, so that a restart neither forgets a pending `for` nor fires twice)."""
        with self.store() as conn:
            conn.execute("DELETE FROM facts WHERE key LIKE 'monitor.%'")
            conn.execute("UPDATE incidents SET status = 'resolved' WHERE status != 'resolved'")

    def manifest(self, set_id: str) -> JsonDict:
        data: JsonDict = json.loads(
            (self.project / ".backout" / "backups" / set_id / "manifest.json").read_text())
        return data

    # -- configuration

    def writers(self, database: str) -> list[str]:
        """The app services that write to a database (writes_to in backout.toml)."""
        services = tomllib.loads(self.init_toml).get("services", {})
        return sorted(name for name, svc in services.items()
                      if database in svc.get("writes_to", []))

    def write_config(self, extra: str = "") -> None:
        """backout.toml as `backout init` wrote it, plus the bench's settings and extra."""
        (self.project / "backout.toml").write_text(self.init_toml + BENCH_TOML + extra)


# The restart watch after a rollback is a deliberate wait (10 s by default), not work:
# the bench turns it off so that the figures compare work with work.
BENCH_TOML = "\n# bench/: no deliberate restart watch after rollbacks\n[verify]\nsettle_seconds = 0\n"


def tag_image_id(image: str) -> str:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise BenchError(f"no image {image}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def iso_epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- load generator


@dataclass
class Sample:
    start: float  # time.time()
    end: float
    status: int  # 0: no HTTP answer (refused, reset, timeout)


class Load:
    """Steady HTTP GETs from threads on 127.0.0.1, every request recorded.

    Each of `workers` threads sends one request, waits `period` seconds, repeats.
    """

    def __init__(self, url: str, *, workers: int = 2, period: float = 0.05,
                 timeout: float = 10, limit_s: float = 1800) -> None:
        if not url.startswith("http://127.0.0.1:"):
            raise BenchError(f"load only goes to 127.0.0.1, not {url}")
        self.url, self.period, self.timeout, self.limit_s = url, period, timeout, limit_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.time()
            status = 0
            try:
                with http.urlopen(self.url, timeout=self.timeout) as resp:
                    resp.read()
                    status = int(getattr(resp, "status", 0))
            except urllib.error.HTTPError as err:
                status = err.code
                err.close()
            except (urllib.error.URLError, OSError):
                status = 0
            self.samples.append(Sample(start, time.time(), status))
            self._stop.wait(self.period)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def between(self, t0: float, t1: float) -> list[Sample]:
        return sorted((s for s in list(self.samples) if t0 <= s.start <= t1),
                      key=lambda s: s.start)

    def first_failure_after(self, t0: float, *, server_errors: bool = False) -> float | None:
        """When the first request after ``t0`` that failed started (``server_errors``:
        only an answer with a 5xx status, not a refused or cut connection)."""
        bad = [s.start for s in list(self.samples) if s.start >= t0 and (
            500 <= s.status < 600 if server_errors else not 200 <= s.status < 400)]
        return min(bad) if bad else None


def gap_figures(samples: Sequence[Sample], t0: float) -> JsonDict:
    """Failed requests, the span from the first failure to the end of the last one,
    and the longest stretch without a successful answer, over one window (and when it
    began, in seconds from ``t0``)."""
    failed = [s for s in samples if not 200 <= s.status < 400]
    ok_ends = sorted(s.end for s in samples if 200 <= s.status < 400)
    longest, at = max(((b - a, a) for a, b in itertools.pairwise(ok_ends)), default=(0.0, t0))
    return {"requests": len(samples), "failed": len(failed),
            "longest_at_s": round(at - t0, 3),
            "failed_span_s": round(max(s.end for s in failed) - min(s.start for s in failed), 3)
            if failed else 0.0,
            "longest_without_success_s": round(longest, 3),
            "statuses": sorted({s.status for s in failed})}


# --------------------------------------------------------------------------- monitor and /proc


class Monitor:
    """`backout monitor --json ARGS` as a subprocess; its decisions with arrival times."""

    def __init__(self, rig: Rig, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "backout", "monitor", "--json", *args],
                                     cwd=rig.project, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        self.decisions: list[tuple[float, JsonDict]] = []
        self.stderr = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                decision = json.loads(line)
                with self._lock:
                    self.decisions.append((time.time(), decision))

    def wait_for(self, predicate: Any, timeout: float, what: str) -> tuple[float, JsonDict]:
        """The first (arrival time, decision) for which predicate(decision) holds."""
        def find() -> tuple[float, JsonDict] | None:
            if self.proc.poll() is not None and not self._reader.is_alive():
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise BenchError(f"monitor exited {self.proc.returncode}: {err[-1500:]}")
            with self._lock:
                return next(((t, d) for t, d in self.decisions if predicate(d)), None)

        found = wait_for(find, timeout=timeout, interval=0.1, message=what)
        assert found is not None
        return found

    def spacing(self) -> float | None:
        """Median time between two consecutive decisions (the effective interval)."""
        with self._lock:
            ts = [float(d["t"]) for _a, d in self.decisions if "t" in d]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        return round(statistics.median(gaps), 3) if gaps else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.stderr = self.proc.stderr.read()
        return self.proc.returncode


def fired(decision: JsonDict, rule: str, service: str | None = None) -> bool:
    return any(tr.get("rule") == rule and tr.get("kind") == "fired"
               and (service is None or service in str(tr.get("signal")))
               for tr in decision.get("transitions", []))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own utime+stime, reaped children's cutime+cstime) of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the comm field: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return own, children


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
