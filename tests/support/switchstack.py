"""The switch test stack (tests/stack/switch): nginx in front of one stateless app,
for the zero-downtime switch (issue 14) on the real Docker Engine and Compose. The
app images are tiny layers on the test stack's backend image (python3 is there):
``backout-test/switch-app:v1|v2`` (healthy, different versions), ``:never`` (its
health endpoint never answers 200) and ``:dies`` (its process exits 0.45 s after the
start). Cleanup is by the run label, as TestStack's."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.stack import RUN_LABEL, build_images, free_ports, remove_run

SOURCE = Path(__file__).resolve().parents[1] / "stack" / "switch"
IMAGE = "backout-test/switch-app"
VERSIONS = {"v1": "", "v2": "", "never": "SWITCH_HEALTHY=0",
            "dies": "SWITCH_DIES_AFTER=0.45"}


def build_switch_images() -> None:
    build_images()  # the base: backout-test/backend:healthy (cached by its hash label)
    for tag, extra in VERSIONS.items():
        dockerfile = (f"FROM backout-test/backend:healthy\nENV SWITCH_VERSION={tag} {extra}\n"
                      f"LABEL io.backout.test.switch={tag}\n")
        subprocess.run(["docker", "build", "-q", "-t", f"{IMAGE}:{tag}", "-"], input=dockerfile,
                       text=True, capture_output=True, check=True, timeout=600)


BACKOUT_TOML = """\
[project]
compose_files = ["docker-compose.yml"]
name = "{project}"

[services.app]
health_url = "http://127.0.0.1:{port}/health"  # through nginx

[services.nginx]
kind = "proxy"
proxy = "{proxy}"
proxy_dns_valid_seconds = 2

[verify]
settle_seconds = 0
"""


class SwitchStack:
    def __init__(self, base: Path) -> None:
        self.dir = base / "project"
        shutil.copytree(SOURCE, self.dir)
        self.run_id = f"backout-test-{os.getpid()}-sw{time.monotonic_ns() % 100000}"
        self.project = self.run_id.replace("backout-test-", "bsw-")
        self.port, self.labelproxy_port = free_ports(2)
        self.configure("nginx-static.conf", "nginx-reload")

    def configure(self, nginx_conf: str, proxy: str, app_tag: str = "v1") -> None:
        (self.dir / ".env").write_text(
            f"COMPOSE_PROJECT_NAME={self.project}\nBACKOUT_TEST_RUN={self.run_id}\n"
            f"NGINX_PORT={self.port}\nNGINX_CONF={nginx_conf}\nAPP_TAG={app_tag}\n"
            f"LABELPROXY_PORT={self.labelproxy_port}\n")
        (self.dir / "backout.toml").write_text(BACKOUT_TOML.format(port=self.port, proxy=proxy, project=self.project))

    def compose(self, *args: str, check: bool = True,
                files: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-f", "docker-compose.yml"]
        for f in files:
            argv += ["-f", f]
        return subprocess.run([*argv, *args], cwd=self.dir, capture_output=True, text=True,
                              timeout=300, check=check)

    def up(self) -> None:
        self.compose("up", "-d", "--wait")
        # A static nginx resolved app once, at its start: after compose recreated app
        # (a test left another image running) it would proxy to a gone address.
        self.compose("exec", "-T", "nginx", "nginx", "-s", "reload")
        time.sleep(0.5)

    def down(self) -> None:
        remove_run(self.run_id, self.project, RUN_LABEL)

    def app_containers(self) -> list[dict[str, Any]]:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter",
                              f"label=com.docker.compose.project={self.project}", "--filter",
                              "label=com.docker.compose.service=app"],
                             capture_output=True, text=True, check=True).stdout.split()
        if not ids:
            return []
        data: list[dict[str, Any]] = json.loads(subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
        return data

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Sample:
    start: float
    end: float
    status: int  # 0: no HTTP answer
    version: str = ""  # the app's SWITCH_VERSION, when it answered with one


@dataclass
class Load:
    """``workers`` threads GETting ``url`` with ``pause`` between requests, every
    answer logged; ``slow`` (a URL) is requested once at the start, in flight."""

    url: str
    workers: int = 4
    pause: float = 0.02
    samples: list[Sample] = field(default_factory=list)
    slow: Sample | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @staticmethod
    def get(url: str, timeout: float = 30) -> Sample:
        start = time.time()
        body = b""
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = resp.read()
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            status = 0  # no answer, or one cut short: a failed request
        try:
            answer = json.loads(body) if body.startswith(b"{") else {}
        except ValueError:
            answer = {}
        return Sample(start, time.time(), status, str(answer.get("version") or ""))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.get(self.url, timeout=10))
            self._stop.wait(self.pause)

    def start_slow(self, url: str) -> threading.Thread:
        def run() -> None:
            self.slow = self.get(url)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def __enter__(self) -> Load:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if not 200 <= s.status < 400]
