"""The two-node Swarm lab (tests/swarm/lab.sh: two dockerds and a registry inside
network namespaces of their own) and a test stack deployed on it.

The lab is started once per test session (``swarm_lab`` in tests/conftest.py) and
torn down at the end; it never touches the host engine except a read-only
``docker save`` of the images it is given. It needs root, iproute2, util-linux
(nsenter, unshare), curl, dockerd and Debian's docker-registry
(scripts/ensure-docker.sh installs what is missing).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.stack import wait_for

SWARM_DIR = Path(__file__).resolve().parents[1] / "swarm"
LAB_SCRIPT = SWARM_DIR / "lab.sh"
STACK_FILE = SWARM_DIR / "stack.yml"
IMAGES = ("backout-test/frontend:healthy", "backout-test/frontend:errors",
          "backout-test/frontend:unhealthy", "backout-test/mariadb:10.11",
          "backout-test/redis:7.0", "backout-test/nginx:1.22")
PROXY_PORT = 18080
# BACKOUT_KEEP_SWARM_LAB=1 leaves the lab up after the session (faster iterations).
KEEP = os.environ.get("BACKOUT_KEEP_SWARM_LAB") == "1"


def lab_problem() -> str | None:
    """Why the lab cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return "the Swarm lab needs root (network namespaces and dockerds of its own)"
    missing = [tool for tool in ("ip", "nsenter", "unshare", "curl", "dockerd", "docker")
               if shutil.which(tool) is None]
    if missing:
        return f"the Swarm lab needs {', '.join(missing)} (scripts/ensure-docker.sh installs them)"
    return None


@dataclass
class SwarmLab:
    env: dict[str, str]  # BOLAB_* and DOCKER_HOST, as the script printed them

    @property
    def manager(self) -> str:
        return self.env["BOLAB_NODE1_HOST"]

    @property
    def registry(self) -> str:
        return self.env["BOLAB_REGISTRY"]

    def host(self, node: int) -> str:
        return self.env[f"BOLAB_NODE{node}_HOST"]

    def docker(self, *args: str, node: int = 1, check: bool = True, timeout: float = 120,
               env: dict[str, str] | None = None, cwd: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
        full.update(env or {})
        result = subprocess.run(["docker", "-H", self.host(node), *args], capture_output=True,
                                text=True, timeout=timeout, check=False, env=full, cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} on node {node}: {result.stderr}")
        return result


def lab_up(images: tuple[str, ...] = IMAGES, timeout: float = 900) -> SwarmLab:
    result = subprocess.run(["bash", str(LAB_SCRIPT), "up", *images], capture_output=True,
                            text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError("swarm lab did not start: "
                           + (result.stderr.strip().splitlines() or ["?"])[-1])
    env = {}
    for line in result.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
    return SwarmLab(env)


def lab_down(timeout: float = 300) -> None:
    if not KEEP:
        subprocess.run(["bash", str(LAB_SCRIPT), "down"], capture_output=True, text=True,
                       timeout=timeout, check=False)


@dataclass
class SwarmStack:
    """tests/swarm/stack.yml deployed as one stack, in a git project with backout.toml."""

    lab: SwarmLab
    project_dir: Path
    name: str
    env_values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, lab: SwarmLab, base: Path, toml_extra: str = "") -> SwarmStack:
        name = f"bo{os.getpid() % 100000}{secrets.token_hex(2)}"
        project = base / name
        project.mkdir(parents=True)
        shutil.copy(STACK_FILE, project / "docker-compose.yml")
        shutil.copy(SWARM_DIR / "proxy.conf", project / "proxy.conf")
        values = {"REG": lab.registry, "MYSQL_ROOT_PASSWORD": "root-" + secrets.token_hex(8),
                  "MYSQL_PASSWORD": "app-" + secrets.token_hex(8),
                  "REDIS_PASSWORD": "redis-" + secrets.token_hex(8)}
        (project / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        (project / ".gitignore").write_text(".env\n.backout/\n")
        (project / "backout.toml").write_text(f'''[project]
name = "{name}"

[platform]
kind = "swarm"
manager = "{lab.manager}"
stall_seconds = 15
converge_seconds = 180

[platform.nodes]
bolab1 = "{lab.host(1)}"
bolab2 = "{lab.host(2)}"

[services.frontend]
kind = "app"
# the app logs its 503s at ERROR while redis is not up yet (start-up order)
log_error_allowance = 100

[services.writer]
kind = "app"
writes_to = ["main"]
log_error_allowance = 100

[databases.main]
type = "mysql"
service = "db"
databases = ["backout_app"]
user = "root"
password_env = "MYSQL_ROOT_PASSWORD"

[verify]
settle_seconds = 2
''' + toml_extra)
        stack = cls(lab, project, name, values)
        stack.git("init", "-q", "-b", "main")
        stack.git("add", "-A")
        stack.git("commit", "-qm", "stack")
        return stack

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=self.project_dir, capture_output=True, text=True,
                              check=True).stdout

    def deploy(self, **extra: str) -> None:
        self.lab.docker("stack", "deploy", "--resolve-image", "always", "-c",
                        "docker-compose.yml", self.name, env={**self.env_values, **extra},
                        cwd=self.project_dir, timeout=300)

    def remove(self) -> None:
        self.lab.docker("stack", "rm", self.name, check=False)
        # volumes of a stack outlive it: remove this stack's, on every node, once free
        for node in (1, 2):
            def gone(node: int = node) -> bool:
                ids = self.lab.docker("ps", "-aq", "--filter",
                                      f"label=com.docker.stack.namespace={self.name}",
                                      node=node, check=False).stdout.split()
                return not ids
            try:
                wait_for(gone, timeout=60)
            except TimeoutError:  # best effort: the lab goes down at the end
                continue
            vols = self.lab.docker("volume", "ls", "-q", "--filter",
                                   f"label=com.docker.stack.namespace={self.name}", node=node,
                                   check=False).stdout.split()
            if vols:
                self.lab.docker("volume", "rm", *vols, node=node, check=False)

    def service(self, svc: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(
            self.lab.docker("service", "inspect", f"{self.name}_{svc}").stdout)
        return data[0]

    def tasks(self, svc: str) -> list[dict[str, str]]:
        """Tasks desired running: node, state and image of each."""
        out = self.lab.docker("service", "ps", "--no-trunc", "--filter", "desired-state=running",
                              "--format", "{{json .}}", f"{self.name}_{svc}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def healthy_containers(self, node: int) -> list[str]:
        return self.lab.docker("ps", "-q", "--filter", "health=healthy", "--filter",
                               f"label=com.docker.stack.namespace={self.name}",
                               node=node).stdout.split()

    def wait_converged(self, svc: str, image_contains: str, replicas: int,
                       timeout: float = 240) -> None:
        """Tasks desired running are ``replicas``, Running, on the image, their
        containers healthy (read on both nodes' engines)."""
        def converged() -> bool:
            tasks = self.tasks(svc)
            if len(tasks) != replicas or any(
                    not t["CurrentState"].startswith("Running") or image_contains not in t["Image"]
                    for t in tasks):
                return False
            healthy = {c for node in (1, 2) for c in self.healthy_containers(node)}
            ids = {t["ID"] for t in tasks}
            in_health = 0
            for node in (1, 2):
                for cid in self.lab.docker("ps", "-q", "--filter",
                                           f"label=com.docker.swarm.service.name={self.name}_{svc}",
                                           node=node).stdout.split():
                    task = self.lab.docker("inspect", "-f",
                                           '{{index .Config.Labels "com.docker.swarm.task.id"}}',
                                           cid, node=node).stdout.strip()
                    if task in ids and cid in healthy:
                        in_health += 1
            return in_health == replicas
        wait_for(converged, timeout=timeout, interval=1.0)

    def db_exec(self, sql: str) -> str:
        """SQL in the database task's container on node 2 (the password from its env)."""
        cid = self.lab.docker("ps", "-q", "--filter",
                              f"label=com.docker.swarm.service.name={self.name}_db",
                              node=2).stdout.split()[0]
        return self.lab.docker("exec", cid, "sh", "-c",
                               'MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mariadb -uroot -N backout_app '
                               '-e "$0"', sql, node=2).stdout

    def digest_of(self, tag: str) -> str:
        """sha256:... of backout-test/frontend:TAG in the lab registry."""
        out = self.lab.docker("image", "inspect", "-f", "{{json .RepoDigests}}",
                              f"{self.lab.registry}/backout-test/frontend:{tag}").stdout
        refs: list[str] = json.loads(out)
        return next(r for r in refs if "/backout-test/frontend@" in r).split("@")[1]


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out ({timeout:.0f}s) waiting for {what}")
        time.sleep(1)
