"""``backout demo``: a guarded deploy shown to a newcomer, start to finish.

A small Compose project (a web service counting visits in Redis) is written to a
scratch directory and kept in git, as a deployment repository is. Release v1 runs;
``backout deploy v2`` checkpoints, deploys and watches a healthy release; ``backout
deploy v3`` deploys one that answers most requests with HTTP 500: the watch sees the
error rate pass the runbook's RED threshold, rolls the stack back to v2 by itself and
verifies it. The incident timeline, releases and history are shown, then everything
is removed (``keep=True`` leaves it running).

Each backout step runs as the real command in a subprocess, printed as an operator
would type it, so the narration shows exactly what a user would see. Nothing here
needs a registry: the images build ``FROM debian:bookworm-slim`` (pulled where a
registry is reachable, or made locally: ``bash scripts/setup.sh`` in a clone of backout).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from backout.adapters import http
from backout.demo.traffic import Traffic
from backout.errors import ExitCode, ExternalError, VerificationFailedError

LABEL = "io.backout.demo"
IMAGE_REPO = "backout-demo"
BASE_IMAGE = "debian:bookworm-slim"
# version -> share of requests v3 fails
VERSIONS = {"v1": 0.0, "v2": 0.0, "v3": 0.8}

COMPOSE = """\
# backout demo: release {version}. Written by `backout demo`.
name: {project}
services:
  web:
    image: {repo}/web:{version}
    ports:
      - "127.0.0.1:${{WEB_PORT}}:8080"
    environment:
      REDIS_HOST: redis
    depends_on:
      redis:
        condition: service_healthy
    restart: unless-stopped
    labels:
      {label}: "{project}"
  redis:
    image: {repo}/redis:7
    volumes:
      - redis-data:/data
    restart: unless-stopped
    labels:
      {label}: "{project}"
volumes:
  redis-data:
    labels:
      {label}: "{project}"
"""

# The runbook's matrix with a shorter "for" on the error-rate rule, so the demo shows
# a detection in seconds rather than the production minute (see README).
POLICY = """
[verify]
settle_seconds = 3

[monitor]
interval_seconds = 2
window_seconds = 8

[[monitor.rules]]
name = "red-error-rate"
signal = "error_rate"
comparison = ">"
threshold = 0.5
for_seconds = 8
level = "RED"
severity = "SEV-1"
action = "rollback-emergency"
clear_threshold = 0.1
clear_for_seconds = 10
description = "demo: error rate > 50% for 8 s (the runbook says 1 min)"
"""


class DemoFailed(VerificationFailedError):
    code = "demo_failed"


@dataclass
class Demo:
    out: TextIO
    keep: bool = False
    workdir: Path | None = None
    watch_seconds: int = 90
    color: bool = False
    project: str = field(default_factory=lambda: f"backout-demo-{secrets.token_hex(3)}")
    port: int = 0
    dir: Path = field(default_factory=Path)
    started: float = field(default_factory=time.monotonic)

    # -- narration -------------------------------------------------------------
    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        head = f"\n== [{elapsed:5.1f}s] {text}"
        self.out.write((f"\033[1m{head}\033[0m" if self.color else head) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(f"   {text}\n")
        self.out.flush()

    # -- running things --------------------------------------------------------
    def sh(self, argv: Sequence[str], *, timeout: float = 600, check: bool = True,
           show: bool = False, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        if show:
            self.out.write(f"$ {' '.join(argv)}\n")
            self.out.flush()
        result = subprocess.run(list(argv), cwd=self.dir if self.dir.is_dir() else None,
                                capture_output=True, text=True, timeout=timeout, check=False,
                                input=input_text, env=_child_env())
        if check and result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise ExternalError(f"`{' '.join(argv[:4])}` failed: "
                                f"{lines[-1] if lines else 'exit ' + str(result.returncode)}",
                                fix="rerun `backout demo --debug` to see more")
        return result

    def backout(self, *args: str, expect: int = 0, timeout: float = 900) -> None:
        """Run a backout command as the user would, its output shown as it comes."""
        self.out.write(f"$ backout {' '.join(args)}\n")
        self.out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "backout", *args], cwd=self.dir,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_child_env(), stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        for line in proc.stdout:
            self.out.write(f"   {line}")
            self.out.flush()
        code = proc.wait(timeout=timeout)
        if code != expect:
            raise DemoFailed(f"`backout {' '.join(args)}` exited {code}, the demo expected "
                             f"{expect}", fix="see its output above")

    def git(self, *args: str) -> str:
        return self.sh(["git", "-c", "user.name=backout demo", "-c",
                        "user.email=demo@backout.invalid", "-c", "commit.gpgsign=false",
                        *args]).stdout.strip()

    # -- the story -------------------------------------------------------------
    def run(self) -> int:
        _cleanup_stale()
        self.say("1/8 images: the demo's web service (v1, v2 healthy; v3 broken) and Redis")
        built = build_images(self)
        self.note("built them (once per machine)" if built else "already built: reused")
        try:
            self._story()
        finally:
            if self.keep:
                self.say(f"--keep: the demo stays up in {self.dir} (http://127.0.0.1:{self.port}/)"
                         f"; remove it with `docker compose -p {self.project} down -v`")
            else:
                self.say("8/8 clean up: containers, network, volume, scratch directory")
                self.teardown()
        self.say(f"done in {time.monotonic() - self.started:.0f}s")
        return int(ExitCode.OK)

    def _story(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="backout-demo-", dir=self.workdir))
        self.dir = base / "app"
        self.dir.mkdir()
        self.port = _free_port()
        self.say(f"2/8 a Compose project in git, release v1 running ({self.dir})")
        (self.dir / ".env").write_text(f"WEB_PORT={self.port}\n")
        (self.dir / ".gitignore").write_text(".env\n.backout/\n")
        self.git("init", "-q", "-b", "main")
        self._commit("v1", "release v1")
        self.sh(["docker", "compose", "up", "-d", "--wait"], show=True, timeout=300)
        self.note(f"v1 answers: {self._get('/')}")

        self.say("3/8 backout init: a commented backout.toml derived from the compose project")
        self.backout("init")
        with (self.dir / "backout.toml").open("a") as fh:
            fh.write(POLICY)
        self.note("added: a demo policy (error rate > 50% for 8 s is RED; the runbook says 1 min)")
        self.backout("config", "check")
        self.git("add", "backout.toml")
        self.git("commit", "-q", "-m", "backout config")
        self.note("committed backout.toml next to the compose file (it holds no secrets)")

        with Traffic(f"http://127.0.0.1:{self.port}/") as traffic:
            self.say("4/8 deploy v2 (healthy): checkpoint, switch, up, verify, watch 15 s")
            self.note("traffic: a load generator sends ~20 requests/s, as users would")
            self._commit("v2", "release v2", branch=True)
            self.backout("deploy", "v2", "--watch", "15")
            self.note(f"v2 answers: {self._get('/')}")

            self.say("5/8 deploy v3 (broken: 80% HTTP 500): the watch sees it, backout rolls "
                     "back by itself")
            self._commit("v3", "release v3", branch=True)
            before = traffic.failed
            self.backout("deploy", "v3", "--watch", str(self.watch_seconds),
                         expect=int(ExitCode.ROLLED_BACK))
            self.note(f"exit code 8: rolled back (CI can tell). Failed requests during the bad "
                      f"release: {traffic.failed - before} of {traffic.sent} sent so far")
            answer = self._get("/")
            self.note(f"now answers: {answer}")
            if "v2" not in answer:
                raise DemoFailed(f"after the rollback the service answers {answer!r}, not v2")

        self.say("6/8 verify: containers, health, logs, database, images")
        self.backout("verify", "--settle", "3")
        self.say("7/8 what happened: the incident timeline, releases, history")
        self.backout("incidents")
        self.backout("releases")
        self.backout("history")

    def _commit(self, version: str, message: str, branch: bool = False) -> None:
        if branch:
            self.git("checkout", "-q", "-b", f"release-{version}")
        (self.dir / "docker-compose.yml").write_text(COMPOSE.format(
            version=version, project=self.project, repo=IMAGE_REPO, label=LABEL))
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("tag", version)
        if branch:  # the running release stays checked out: deploy switches to the tag
            self.git("checkout", "-q", "-")

    def _get(self, path: str) -> str:
        try:
            with http.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return str(r.read().decode().strip())
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"

    def teardown(self) -> None:
        if self.dir.is_dir() and (self.dir / "docker-compose.yml").is_file():
            self.sh(["docker", "compose", "down", "-v", "--remove-orphans", "-t", "5"],
                    check=False, timeout=120)
        _remove_labelled(self.project)
        _untag_retained(self.project)
        if self.dir.parent.name.startswith("backout-demo-"):
            shutil.rmtree(self.dir.parent, ignore_errors=True)


def _child_env() -> dict[str, str]:
    # A user's COMPOSE_* settings must not point the demo's compose at another project.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("COMPOSE_") and k != "BACKOUT_FAULT_INJECT"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stack_files() -> dict[str, bytes]:
    root = resources.files("backout.demo") / "stack"
    files: dict[str, bytes] = {}
    for sub in ("web", "redis"):
        for entry in (root / sub).iterdir():
            if entry.is_file() and not entry.name.endswith(".pyc"):
                files[f"{sub}/{entry.name}"] = entry.read_bytes()
    return files


def source_hash() -> str:
    digest = hashlib.sha256()
    for name, data in sorted(_stack_files().items()):
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def _image_hash(ref: str) -> str | None:
    result = subprocess.run(["docker", "image", "inspect", "--format",
                             f'{{{{index .Config.Labels "{LABEL}.source"}}}}', ref],
                            capture_output=True, text=True, timeout=60, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def build_images(demo: Demo) -> bool:
    """Build the demo's images unless they exist with the current source's hash."""
    digest = source_hash()
    wanted = [f"{IMAGE_REPO}/web:{v}" for v in VERSIONS] + [f"{IMAGE_REPO}/redis:7"]
    if all(_image_hash(ref) == digest for ref in wanted):
        return False
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True,
                      timeout=60, check=False).returncode != 0:
        pulled = subprocess.run(["docker", "pull", "-q", BASE_IMAGE], capture_output=True,
                                timeout=300, check=False).returncode == 0
        if not pulled:
            raise ExternalError(f"the demo's images build FROM {BASE_IMAGE}, which is not on "
                                "this machine and could not be pulled",
                                fix="run `bash scripts/setup.sh` in a clone of backout (it "
                                    "builds the base image "
                                    "locally when no registry is reachable)")
    with tempfile.TemporaryDirectory(prefix="backout-demo-build-") as tmp:
        for name, data in _stack_files().items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        services: dict[str, Any] = {
            "redis": {"image": f"{IMAGE_REPO}/redis:7",
                      "build": {"context": f"{tmp}/redis",
                                "labels": {f"{LABEL}.source": digest}}}}
        for version, rate in VERSIONS.items():
            services[f"web-{version}"] = {
                "image": f"{IMAGE_REPO}/web:{version}",
                "build": {"context": f"{tmp}/web", "args": {"VERSION": version,
                                                            "ERROR_RATE": str(rate)},
                          "labels": {f"{LABEL}.source": digest}}}
        spec = json.dumps({"name": "backout-demo-images", "services": services})
        demo.sh(["docker", "compose", "-f", "-", "--project-directory", tmp, "build"],
                input_text=spec, timeout=1800, show=False)
    return True


def _labelled(kind: str, project: str | None) -> list[str]:
    flt = f"label={LABEL}" + (f"={project}" if project else "")
    argv = {"container": ["docker", "ps", "-aq", "--filter", flt],
            "volume": ["docker", "volume", "ls", "-q", "--filter", flt]}[kind]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return result.stdout.split()


def _remove_labelled(project: str) -> None:
    containers = _labelled("container", project)
    if containers:
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True, timeout=120,
                       check=False)
    volumes = _labelled("volume", project)
    if volumes:
        subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True,
                       timeout=120, check=False)
    subprocess.run(["docker", "network", "rm", f"{project}_default"], capture_output=True,
                   timeout=60, check=False)


def _untag_retained(project: str) -> None:
    """backout's own tags for the demo's releases: the images themselves stay cached."""
    result = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, timeout=60, check=False)
    tags = [t for t in result.stdout.split() if t.startswith("backout-retained/")
            and f"/{project}." in t]
    if tags:
        subprocess.run(["docker", "image", "rm", *tags], capture_output=True, timeout=120,
                       check=False)


def _cleanup_stale() -> None:
    """Containers of earlier demo runs that crashed (their directory is gone)."""
    result = subprocess.run(["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format",
                             '{{.Label "com.docker.compose.project.working_dir"}} '
                             f'{{{{.Label "{LABEL}"}}}}'],
                            capture_output=True, text=True, timeout=60, check=False)
    for line in set(result.stdout.splitlines()):
        parts = line.split()
        if len(parts) == 2 and not Path(parts[0]).is_dir():
            _remove_labelled(parts[1])
            _untag_retained(parts[1])


def run_demo(out: TextIO, *, keep: bool = False, workdir: Path | None = None,
             watch_seconds: int = 90, color: bool = False) -> int:
    return Demo(out, keep=keep, workdir=workdir, watch_seconds=watch_seconds,
                color=color).run()
