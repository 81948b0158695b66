"""TestStack: one disposable copy of the Docker Compose test stack (tests/stack).

A TestStack is a copy of tests/stack in a temporary directory, made a git repository
with one commit (so "deploy a new version" = edit an image tag in docker-compose.yml and
commit), with a generated .env (passwords, free ports on 127.0.0.1, a unique compose
project name). Everything it creates in Docker carries the label
``io.backout.test.run=<run_id>``, so :meth:`TestStack.down` and :func:`cleanup_stale`
can remove it by label, even after a crashed run.

Only the standard library is used on the host; the databases are reached with
``docker compose exec`` (passwords passed through the environment, never argv).

    stack = TestStack.create(tmp_path)
    stack.build_images()          # all 5 modes x 3 roles + infra; fast when cached
    stack.up()                    # docker compose up -d --wait
    try:
        stack.seed()
        stack.set_image_tag("backend", "errors")   # edits + commits docker-compose.yml
        stack.up("backend")
        ...
    finally:
        stack.down()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

STACK_SRC = Path(__file__).resolve().parent.parent / "stack"
RUN_LABEL = "io.backout.test.run"
HASH_LABEL = "io.backout.test.source-hash"
ROLES = ("backend", "frontend", "model-server")
MODES = ("healthy", "errors", "slow", "crashloop", "unhealthy")
SERVICES = ("nginx", "backend", "frontend", "model-server", "mysql", "redis", "mongodb",
            "postgres")

# ports key -> (.env variable, service)
PORTS = {
    "nginx": ("NGINX_PORT", "nginx"),
    "backend": ("BACKEND_PORT", "backend"),
    "frontend": ("FRONTEND_PORT", "frontend"),
    "model": ("MODEL_PORT", "model-server"),
    "mysql": ("MYSQL_PORT", "mysql"),
    "redis": ("REDIS_PORT", "redis"),
    "mongo": ("MONGO_PORT", "mongodb"),
    "postgres": ("POSTGRES_PORT", "postgres"),
}
SERVICE_PORT_KEY = {service: key for key, (_var, service) in PORTS.items()}
URL_SCHEMES = {"mysql": "mysql", "redis": "redis", "mongodb": "mongodb", "postgres": "postgresql"}

# Images that are not app variants: image -> (context dir, dockerfile relative to it)
INFRA_IMAGES = {
    "backout-test/nginx:1.22": ("nginx", "Dockerfile"),
    "backout-test/mariadb:10.11": ("mysql", "Dockerfile"),
    "backout-test/redis:7.0": ("redis", "Dockerfile"),
    "backout-test/mongo-nx27017:0.8.1": (".", "mongodb/Dockerfile"),
    "backout-test/postgres:15": ("postgres", "Dockerfile"),
}
# Inputs of the images: their hash is stored as a label so that a warm build_images()
# does not even have to ask BuildKit.
HASHED_PATHS = (".dockerignore", "app", "mongodb", "mysql", "redis", "nginx", "postgres", "wheels")

DATABASE = "backout_app"
MYSQL_USER = "backout"
POSTGRES_USER = "backout"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "backout tests",
    "GIT_AUTHOR_EMAIL": "tests@backout.invalid",
    "GIT_COMMITTER_NAME": "backout tests",
    "GIT_COMMITTER_EMAIL": "tests@backout.invalid",
}
# Environment variables that would make `docker compose` look at another file/profile.
_COMPOSE_ENV_DROP = ("COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PATH_SEPARATOR",
                     "COMPOSE_ENV_FILES", "COMPOSE_PROJECT_NAME")

T = TypeVar("T")


class StackError(RuntimeError):
    """A docker / docker compose command failed; the message carries its output."""


def _run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
         input: str | None = None, timeout: float = 120, check: bool = True,
         ) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                              input=input, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise StackError(
            f"exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
        )
    return proc


def _docker(*args: str, timeout: float = 60, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run(["docker", *args], timeout=timeout, check=check, input=input)


def wait_for(predicate: Callable[[], T], *, timeout: float = 60, interval: float = 0.5,
             message: str = "condition") -> T:
    """Call predicate until it returns something truthy; return that, or raise."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout}s"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def docker_arch() -> str:
    proc = _docker("version", "--format", "{{.Server.Arch}}", check=False, timeout=30)
    return proc.stdout.strip() or os.uname().machine


def ensure_wheels(wheels_dir: Path | None = None, requirements: Path | None = None) -> Path:
    """Download the wheels of stack/wheels.txt (for Python 3.11 on the Docker server's
    architecture) into wheels_dir unless every pinned one is already there."""
    wheels_dir = wheels_dir or Path(os.environ.get("BACKOUT_TEST_WHEELS", STACK_SRC / "wheels"))
    requirements = requirements or STACK_SRC / "wheels.txt"
    pins = [line.split("#")[0].strip() for line in requirements.read_text().splitlines()]
    pins = [p for p in pins if p]

    def have(pin: str) -> bool:
        name, _, version = pin.partition("==")
        stem = f"{name.replace('-', '_').lower()}-{version}-"
        return any(w.name.lower().startswith(stem) for w in wheels_dir.glob("*.whl"))

    if wheels_dir.is_dir() and all(have(p) for p in pins):
        return wheels_dir
    platform = {"amd64": "manylinux2014_x86_64", "x86_64": "manylinux2014_x86_64",
                "arm64": "manylinux2014_aarch64", "aarch64": "manylinux2014_aarch64"}
    arch = docker_arch()
    if arch not in platform:
        raise StackError(f"no wheel platform known for Docker architecture {arch!r}")
    wheels_dir.mkdir(parents=True, exist_ok=True)
    _run([*_pip(), "download", "--quiet", "--disable-pip-version-check",
          "-d", str(wheels_dir), "-r", str(requirements), "--only-binary=:all:",
          "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "--platform", platform[arch]], timeout=600)
    missing = [p for p in pins if not have(p)]
    if missing:
        raise StackError(f"pip download did not provide {missing} in {wheels_dir}")
    return wheels_dir


def _pip() -> list[str]:
    """A working pip command. A uv-made venv has no pip, so also try the interpreter the
    venv was made from, a python3 on PATH, then `uvx pip`."""
    import sys

    candidates = [sys.executable, getattr(sys, "_base_executable", ""),
                  shutil.which("python3") or "", "/usr/bin/python3"]
    for python in dict.fromkeys(c for c in candidates if c):
        probe = _run([python, "-m", "pip", "--version"], check=False, timeout=60)
        if probe.returncode == 0:
            return [python, "-m", "pip"]
    uvx = shutil.which("uvx")
    if uvx:
        return [uvx, "pip"]
    raise StackError("no pip found to download the stack's wheels (tried "
                     f"{candidates} and uvx)")


def source_hash(stack_dir: Path) -> str:
    digest = hashlib.sha256()
    for rel in HASHED_PATHS:
        root = stack_dir / rel
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts:
                continue
            digest.update(str(f.relative_to(stack_dir)).encode() + b"\0")
            digest.update(f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_variants() -> list[tuple[str, str, str]]:
    """(image, role, mode) for every app image: 3 roles x 5 modes."""
    return [(f"backout-test/{role}:{mode}", role, mode) for role in ROLES for mode in MODES]


def all_images() -> list[str]:
    return list(INFRA_IMAGES) + [image for image, _r, _m in image_variants()]


def build_images(stack_dir: Path = STACK_SRC, *, force: bool = False, timeout: float = 1200) -> bool:
    """Build every image of the stack (infra + 15 app variants) from stack_dir.

    Idempotent: when every image exists with the label of the current source hash,
    nothing is run; otherwise one `docker compose build` (BuildKit, parallel, layer
    cache) builds them all. Returns True if a build ran.
    """
    stack_dir = Path(stack_dir)
    wheels = ensure_wheels()
    if (stack_dir / "wheels").resolve() != wheels.resolve():
        shutil.copytree(wheels, stack_dir / "wheels", dirs_exist_ok=True)
    digest = source_hash(stack_dir)
    if not force:
        proc = _docker("image", "inspect", "--format",
                       f'{{{{index .Config.Labels "{HASH_LABEL}"}}}}', *all_images(),
                       check=False, timeout=60)
        labels = proc.stdout.split()
        if proc.returncode == 0 and len(labels) == len(all_images()) and set(labels) == {digest}:
            return False
    services: dict[str, Any] = {}
    for image, (context, dockerfile) in INFRA_IMAGES.items():
        services[image.split("/")[1].split(":")[0]] = {
            "image": image,
            "build": {"context": str((stack_dir / context).resolve()), "dockerfile": dockerfile,
                      "labels": {HASH_LABEL: digest}},
        }
    for image, role, mode in image_variants():
        services[f"{role}-{mode}"] = {
            "image": image,
            "build": {"context": str(stack_dir.resolve()), "dockerfile": "app/Dockerfile",
                      "args": {"ROLE": role, "MODE": mode}, "labels": {HASH_LABEL: digest}},
        }
    spec = json.dumps({"name": "backout-test-images", "services": services}, indent=1)
    env = {k: v for k, v in os.environ.items() if k not in _COMPOSE_ENV_DROP}
    # The spec is passed on stdin, so no stray compose file appears in the project.
    _run(["docker", "compose", "-f", "-", "--project-directory", str(stack_dir.resolve()),
          "build"], env=env, input=spec, timeout=timeout, cwd=stack_dir)
    return True


# --------------------------------------------------------------------------- cleanup


def _process_start_epoch(pid: int) -> float | None:
    """Start time of a live process (unix seconds), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0


def _parse_docker_time(value: str) -> float | None:
    """RFC 3339 (with nanoseconds) -> unix seconds."""
    from datetime import datetime

    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value.strip())
    if not m:
        return None
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    frac = float(m.group(2) or 0)
    return datetime.fromisoformat(m.group(1) + tz).timestamp() + frac


_RUN_RE = re.compile(r"^backout-test-(\d+)-[0-9a-z]+$")


def _labelled(kind: str, label: str) -> list[tuple[str, str, float | None]]:
    """(id, label value, created) of the containers/volumes/networks carrying label."""
    if kind == "container":
        ids = _docker("ps", "-aq", "--no-trunc", "--filter", f"label={label}").stdout.split()
        fmt = f'{{{{.Id}}}}\t{{{{index .Config.Labels "{label}"}}}}\t{{{{.Created}}}}'
    elif kind == "volume":
        ids = _docker("volume", "ls", "-q", "--filter", f"label={label}").stdout.split()
        fmt = f'{{{{.Name}}}}\t{{{{index .Labels "{label}"}}}}\t{{{{.CreatedAt}}}}'
    else:
        ids = _docker("network", "ls", "-q", "--no-trunc", "--filter",
                      f"label={label}").stdout.split()
        fmt = f'{{{{.Id}}}}\t{{{{index .Labels "{label}"}}}}\t{{{{.Created}}}}'
    if not ids:
        return []
    proc = _docker(kind, "inspect", "--format", fmt, *ids, check=False)
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append((parts[0], parts[1], _parse_docker_time(parts[2])))
    return out


def _remove(kind: str, ids: Iterable[str]) -> None:
    ids = list(ids)
    if not ids:
        return
    if kind == "container":
        _docker("rm", "-f", "-v", *ids, check=False, timeout=120)
    elif kind == "volume":
        _docker("volume", "rm", "-f", *ids, check=False, timeout=120)
    else:
        for net in ids:  # one at a time: one busy network must not keep the others
            _docker("network", "rm", net, check=False, timeout=60)


def remove_run(run_id: str, project_name: str | None = None, label: str = RUN_LABEL) -> None:
    """Remove every container, network and volume labelled label=run_id (and of the
    compose project, if given), then the project's retained-release tags."""
    filters = [f"label={label}={run_id}"]
    if project_name:
        filters.append(f"label=com.docker.compose.project={project_name}")
    for kind, ls in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]),
                     ("volume", ["volume", "ls", "-q"])):
        ids: set[str] = set()
        for flt in filters:
            ids.update(_docker(*ls, "--filter", flt, check=False).stdout.split())
        _remove(kind, ids)
    if project_name:
        untag_retained(lambda project: project == project_name)


RETAINED = "backout-retained/"  # backout.releases.RETAIN_REPO: <project>.<service>:release-N


def untag_retained(whose: Callable[[str], bool]) -> list[str]:
    """Remove the tags backout made to keep a test project's releases
    (``backout-retained/<project>.<service>:<tag>``) for the projects ``whose`` picks;
    the images stay while other tags (the test stack's own) name them. Unremoved,
    every test run would leave dozens, and thousands slow every image listing."""
    refs = _docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                   f"reference={RETAINED}*", check=False).stdout.split()
    # a project name has no "." (Compose allows letters, digits, "-" and "_"); a
    # service name may
    doomed = [ref for ref in refs if whose(ref.removeprefix(RETAINED).split(".", 1)[0])]
    for at in range(0, len(doomed), 100):
        _docker("image", "rm", "--no-prune", *doomed[at:at + 100], check=False, timeout=120)
    return doomed


def cleanup_stale(label: str = RUN_LABEL) -> list[str]:
    """Remove containers, networks and volumes of test runs whose process is gone.

    A run id is ``backout-test-<pid>-<random>``; the run is stale when no process has
    that pid, or the process with that pid started after the run's resources were
    created (the pid was reused). Other values (e.g. "manual") are left alone.
    Returns the stale run ids that were removed.
    """
    found = {kind: _labelled(kind, label) for kind in ("container", "network", "volume")}
    runs: dict[str, float] = {}
    for items in found.values():
        for _id, run, created in items:
            if _RUN_RE.match(run):
                runs[run] = min(runs.get(run, float("inf")), created or float("inf"))
    stale = []
    for run, created in runs.items():
        m = _RUN_RE.match(run)
        assert m is not None
        started = _process_start_epoch(int(m.group(1)))
        if started is None or (created != float("inf") and started > created + 5):
            stale.append(run)
    for kind in ("container", "network", "volume"):
        _remove(kind, [i for i, run, _c in found[kind] if run in stale])
    # A project still with containers is kept (one started with another run label,
    # which the sweep never takes, may still need the releases it retained).
    living = set(_docker("ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}',
                         check=False).stdout.split())
    untag_retained(lambda project: project not in living and _gone_run(project))
    return stale


def _gone_run(project: str) -> bool:
    """A test project (named by its run id) whose process is gone: its retained tags are
    nobody's (tags carry no creation time, so a reused pid keeps them, harmlessly)."""
    m = _RUN_RE.match(project.replace("bsw-", "backout-test-", 1))  # switch stacks too
    return m is not None and _process_start_epoch(int(m.group(1))) is None


# --------------------------------------------------------------------------- the stack


class TestStack:
    """One copy of the compose test stack; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, project_dir: Path, project_name: str, run_id: str,
                 ports: dict[str, int], secrets_: dict[str, str], env: dict[str, str]) -> None:
        self.project_dir = project_dir
        self.project_name = project_name
        self.run_id = run_id
        self.ports = ports
        self.secrets = secrets_
        self.env = env  # everything written to .env

    # -- creation

    @classmethod
    def create(cls, base_dir: Path, env: Mapping[str, str] | None = None) -> TestStack:
        """Copy tests/stack into base_dir/<project_name>, git init + commit, write .env.

        env overrides .env values (e.g. {"REDIS_APPENDONLY": "yes", "WRITE_INTERVAL": "0"}).
        Starts nothing.
        """
        run_id = f"backout-test-{os.getpid()}-{secrets.token_hex(3)}"
        project_name = run_id
        project_dir = Path(base_dir) / project_name
        shutil.copytree(STACK_SRC, project_dir, ignore=shutil.ignore_patterns(
            ".env", "wheels", "__pycache__", "*.pyc", ".git"))
        wheels = Path(os.environ.get("BACKOUT_TEST_WHEELS", STACK_SRC / "wheels"))
        if wheels.is_dir():
            shutil.copytree(wheels, project_dir / "wheels")
        ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        secrets_ = {
            "MYSQL_ROOT_PASSWORD": secrets.token_hex(16),
            "MYSQL_PASSWORD": secrets.token_hex(16),
            "REDIS_PASSWORD": secrets.token_hex(16),
            "POSTGRES_PASSWORD": secrets.token_hex(16),
        }
        values = {
            "COMPOSE_PROJECT_NAME": project_name,
            "BACKOUT_TEST_RUN": run_id,
            **{var: str(ports[key]) for key, (var, _svc) in PORTS.items()},
            **secrets_,
            "MYSQL_DATABASE": DATABASE,
            "MYSQL_USER": MYSQL_USER,
            "REDIS_APPENDONLY": "no",
            "MONGO_INITDB_DATABASE": DATABASE,
            "POSTGRES_DB": DATABASE,
            "POSTGRES_USER": POSTGRES_USER,
            "ERROR_RATE": "0.6",
            "WRITE_INTERVAL": "0.5",
        }
        values.update(env or {})
        # An override of the project name or run label is honoured everywhere. A run
        # label that is not backout-test-<pid>-<hex> is never swept by cleanup_stale().
        project_name = values["COMPOSE_PROJECT_NAME"]
        run_id = values["BACKOUT_TEST_RUN"]
        ports = {key: int(values[var]) for key, (var, _svc) in PORTS.items()}
        secrets_ = {key: values[key] for key in secrets_}
        for key, value in values.items():
            if "\n" in value or not re.fullmatch(r"[A-Z0-9_]+", key):
                raise ValueError(f"bad .env entry {key!r}")
        stack = cls(project_dir, project_name, run_id, ports, secrets_, values)
        stack._write_env()
        stack._git("init", "-q")
        stack._git("checkout", "-q", "-b", "main")
        stack._git("config", "user.name", GIT_ENV["GIT_AUTHOR_NAME"])
        stack._git("config", "user.email", GIT_ENV["GIT_AUTHOR_EMAIL"])
        stack._git("config", "commit.gpgsign", "false")
        stack._git("add", "-A")
        stack._git("commit", "-q", "-m", "test stack: initial version")
        return stack

    def _write_env(self) -> None:
        lines = ["# written by tests/support/stack.py (TestStack) -- not committed"]
        lines += [f"{k}={v}" for k, v in self.env.items()]
        path = self.project_dir / ".env"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def _git(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items()
               if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
        env.update(GIT_ENV)
        return _run(["git", *args], cwd=self.project_dir, env=env, timeout=60).stdout.strip()

    def __enter__(self) -> TestStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- compose

    @property
    def compose_file(self) -> Path:
        return self.project_dir / "docker-compose.yml"

    def compose_env(self) -> dict[str, str]:
        """os.environ + the .env values (so a stray shell variable cannot override them),
        COMPOSE_PROJECT_NAME and BACKOUT_TEST_RUN."""
        env = {k: v for k, v in os.environ.items() if k not in _COMPOSE_ENV_DROP}
        env.update(self.env)
        env["COMPOSE_PROJECT_NAME"] = self.project_name
        env["BACKOUT_TEST_RUN"] = self.run_id
        return env

    def compose(self, *args: str, check: bool = True, timeout: float = 300,
                env: Mapping[str, str] | None = None, input: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
        """Run `docker compose ARGS` in project_dir; raises StackError if check and it fails.
        env adds variables to compose_env() (for `exec -e NAME`)."""
        full_env = self.compose_env()
        full_env.update(env or {})
        return _run(["docker", "compose", *args], cwd=self.project_dir, env=full_env,
                    input=input, timeout=timeout, check=check)

    def build_images(self, force: bool = False) -> bool:
        """Build all images (5 modes x 3 roles + nginx, mariadb, redis, mongo stand-in).
        Fast and a no-op when the images are current. Returns True if a build ran."""
        return build_images(self.project_dir, force=force)

    def up(self, *services: str, wait: bool = True, timeout: float = 240,
           attempts: int = 2) -> None:
        """docker compose up -d [--wait] [services].

        With wait, a failed `up --wait` is tried again (attempts in all): on a busy
        2-core machine a healthcheck can time out once and mark a container unhealthy for
        a moment. The final error carries every attempt's output, `compose ps` and the
        last log lines."""
        args = ["up", "-d", "--remove-orphans"]
        if wait:
            args += ["--wait", "--wait-timeout", str(int(timeout))]
        errors: list[str] = []
        for _attempt in range(max(1, attempts) if wait else 1):
            try:
                self.compose(*args, *services, timeout=timeout + 60)
                return
            except StackError as exc:
                errors.append(str(exc))
        ps = self.compose("ps", "-a", check=False, timeout=60).stdout
        logs = self.compose("logs", "--no-color", "--tail", "30", *services, check=False,
                            timeout=60).stdout
        raise StackError("\n=== next attempt\n".join(errors)
                         + f"\n--- compose ps\n{ps}\n--- logs (tail)\n{logs}")

    def down(self) -> None:
        """docker compose down -v --remove-orphans, then remove anything still carrying
        this run's label. Never raises for an already removed stack."""
        with contextlib.suppress(StackError):  # a timeout; the label sweep still runs
            self.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False,
                         timeout=180)
        remove_run(self.run_id, self.project_name)

    # -- versions

    def image_tag(self, service: str) -> str:
        """The tag of service's image in docker-compose.yml."""
        text = self.compose_file.read_text()
        start, end = self._service_block(text.splitlines(keepends=True), service)
        block = "".join(text.splitlines(keepends=True)[start:end])
        m = re.search(r"^\s+image:\s*\S+:(\S+)\s*$", block, re.M)
        if not m:
            raise ValueError(f"no image line for {service}")
        return m.group(1)

    def set_image_tag(self, service: str, mode: str, commit: bool = True) -> str:
        """Point service (backend | frontend | model-server) at backout-test/<service>:<mode>
        in docker-compose.yml (image tag and build arg MODE), commit it if commit, and
        return the sha of HEAD afterwards."""
        if service not in ROLES:
            raise ValueError(f"{service!r} is not an app service {ROLES}")
        if mode not in MODES:
            raise ValueError(f"{mode!r} is not a mode {MODES}")
        lines = self.compose_file.read_text().splitlines(keepends=True)
        start, end = self._service_block(lines, service)
        image_re = re.compile(rf"^(\s+image:\s*backout-test/{re.escape(service)}:)\S+(\s*)$")
        mode_re = re.compile(r"^(\s+MODE:\s*)\S+(\s*)$")
        hits = 0
        for i in range(start, end):
            for rx in (image_re, mode_re):
                if rx.match(lines[i]):
                    lines[i] = rx.sub(rf"\g<1>{mode}\g<2>", lines[i])
                    hits += 1
        if hits != 2:
            raise ValueError(f"expected an image line and a MODE arg in {service}, found {hits}")
        self.compose_file.write_text("".join(lines))
        if commit:
            self._git("add", "docker-compose.yml")
            if self._git("status", "--porcelain", "docker-compose.yml"):
                self._git("commit", "-q", "-m", f"deploy {service} {mode}")
        return self.head()

    def head(self) -> str:
        return self._git("rev-parse", "HEAD")

    @staticmethod
    def _service_block(lines: list[str], service: str) -> tuple[int, int]:
        in_services = False
        start = None
        for i, line in enumerate(lines):
            if re.match(r"^\S", line):
                if start is not None:
                    return start, i
                in_services = line.startswith("services:")
                continue
            if in_services and re.match(r"^  \S", line):
                if start is not None:
                    return start, i
                if re.match(rf"^  {re.escape(service)}:\s*$", line):
                    start = i
        if start is None:
            raise ValueError(f"service {service!r} not found in docker-compose.yml")
        return start, len(lines)

    # -- addresses, containers

    def url(self, service: str) -> str:
        """http://127.0.0.1:<port> of nginx, backend, frontend, model-server (or "model");
        mysql://, redis://, mongodb:// 127.0.0.1:<port> for the databases."""
        key = SERVICE_PORT_KEY.get(service, service)
        if key not in self.ports:
            raise KeyError(f"no published port for {service!r}")
        scheme = URL_SCHEMES.get(PORTS[key][1], "http")
        return f"{scheme}://127.0.0.1:{self.ports[key]}"

    def http(self, service: str, path: str, *, method: str = "GET", body: Any = None,
             timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one HTTP request to a published service port.
        A JSON-serialisable body is sent as JSON. Non-2xx statuses are returned, not raised."""
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url(service) + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers.items()), err.read()

    def fault(self, service: str, **changes: Any) -> dict[str, Any]:
        """POST /_fault to an app service, e.g. fault("backend", health=False)."""
        status, _h, body = self.http(service, "/_fault", method="POST", body=changes)
        if status != 200:
            raise StackError(f"/_fault on {service}: {status} {body[:300]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def container_id(self, service: str) -> str:
        ids = self.compose("ps", "-a", "-q", service, timeout=60).stdout.split()
        if not ids:
            raise StackError(f"no container for service {service}")
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        out = _docker("inspect", self.container_id(service)).stdout
        result: dict[str, Any] = json.loads(out)[0]
        return result

    def health(self, service: str) -> str:
        """Docker health status: starting | healthy | unhealthy | none."""
        state = self.inspect(service)["State"]
        return str((state.get("Health") or {}).get("Status", "none"))

    def restart_count(self, service: str) -> int:
        return int(self.inspect(service)["RestartCount"])

    def logs(self, service: str, tail: int = 200) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", "--tail", str(tail),
                            service, timeout=60).stdout

    def ps(self) -> list[dict[str, Any]]:
        """`docker compose ps -a --format json`, one dict per container."""
        out = self.compose("ps", "-a", "--format", "json", timeout=60).stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            rows: list[dict[str, Any]] = json.loads(out)
            return rows
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # -- databases

    def mysql_query(self, sql: str, *, database: str | None = DATABASE,
                    root: bool = True, timeout: float = 60) -> list[tuple[str | None, ...]]:
        """Run SQL with the mariadb client inside the mysql container (password via
        MYSQL_PWD in the environment, SQL on stdin) as root, or as the app user if not
        root. Returns the rows of every result set, concatenated, as tuples of strings
        (None for NULL)."""
        user = "root" if root else self.env["MYSQL_USER"]
        password = self.secrets["MYSQL_ROOT_PASSWORD" if root else "MYSQL_PASSWORD"]
        argv = ["exec", "-T", "-e", "MYSQL_PWD", "mysql", "mariadb", f"--user={user}",
                "--batch", "--skip-column-names", "--default-character-set=utf8mb4"]
        if database:
            argv.append(f"--database={database}")
        proc = self.compose(*argv, env={"MYSQL_PWD": password}, input=sql, timeout=timeout)
        return [tuple(_unescape_batch(v) for v in line.split("\t"))
                for line in proc.stdout.splitlines()]

    def mysql_scalar(self, sql: str, **kw: Any) -> str | None:
        rows = self.mysql_query(sql, **kw)
        return rows[0][0] if rows else None

    def pg_query(self, sql: str, *, database: str = DATABASE,
                 timeout: float = 60) -> list[tuple[str, ...]]:
        """Run SQL with psql inside the postgres container (PGPASSWORD in the
        environment, SQL on stdin, stopping at the first error). Rows of every result,
        fields split on a unit separator."""
        argv = ["exec", "-T", "-e", "PGPASSWORD", "postgres", "psql", "-X", "-q", "-A", "-t",
                "-F", "\x1f", "-v", "ON_ERROR_STOP=1", "-U", self.env["POSTGRES_USER"],
                "-d", database]
        proc = self.compose(*argv, env={"PGPASSWORD": self.secrets["POSTGRES_PASSWORD"]},
                            input=sql, timeout=timeout)
        return [tuple(line.split("\x1f")) for line in proc.stdout.splitlines() if line]

    def redis_cmd(self, *args: str, timeout: float = 60) -> str:
        """redis-cli ARGS inside the redis container (REDISCLI_AUTH from the environment);
        the raw reply text, stripped."""
        proc = self.compose("exec", "-T", "-e", "REDISCLI_AUTH", "redis", "redis-cli", *args,
                            env={"REDISCLI_AUTH": self.secrets["REDIS_PASSWORD"]},
                            timeout=timeout)
        return proc.stdout.strip()

    def redis_pipe(self, commands: str, timeout: float = 60) -> str:
        """Feed newline-separated commands to redis-cli on stdin."""
        proc = self.compose("exec", "-T", "-e", "REDISCLI_AUTH", "redis", "redis-cli",
                            env={"REDISCLI_AUTH": self.secrets["REDIS_PASSWORD"]},
                            input=commands, timeout=timeout)
        return proc.stdout.strip()

    def mongo_eval(self, code: str, timeout: float = 60) -> Any:
        """Run python code in the mongodb container with `client` (pymongo) and `db` (the
        app database) and `json_util` (bson) bound; return the value the code assigns to
        `result`, decoded from MongoDB extended JSON (ObjectIds as {"$oid": ...})."""
        runner = (
            "import os, sys, pymongo\n"
            "from bson import json_util\n"
            "client = pymongo.MongoClient('127.0.0.1', 27017, directConnection=True,"
            " serverSelectionTimeoutMS=5000)\n"
            "db = client[os.environ.get('MONGO_INITDB_DATABASE') or 'backout_app']\n"
            "ns = {'client': client, 'db': db, 'pymongo': pymongo, 'json_util': json_util,"
            " 'result': None}\n"
            "exec(sys.stdin.read(), ns)\n"
            "out = json_util.dumps(ns['result'])\n"
            "client.close()\n"
            "sys.stdout.write(out)\n"
        )
        proc = self.compose("exec", "-T", "mongodb", "/opt/nx/bin/python", "-c", runner,
                            input=code, timeout=timeout)
        return json.loads(proc.stdout)

    def mongo_count(self, collection: str, filter: Mapping[str, Any] | None = None) -> int:
        if filter:
            code = (f"result = db[{collection!r}].count_documents("
                    f"json_util.loads({json.dumps(filter)!r}))")
        else:
            code = f"result = db[{collection!r}].estimated_document_count()"
        return int(self.mongo_eval(code))

    def mongo_docs(self, collection: str, filter: Mapping[str, Any] | None = None,
                   limit: int = 0) -> list[dict[str, Any]]:
        code = (f"result = list(db[{collection!r}].find("
                f"json_util.loads({json.dumps(filter or {})!r})).limit({int(limit)}))")
        docs: list[dict[str, Any]] = self.mongo_eval(code)
        return docs

    # -- data

    SEED_CUSTOMERS = 20

    def seed(self) -> None:
        """Deterministic seed data in all four databases (idempotent): the schema
        (app/schema.sql) and 20 customers in MySQL, seed:* keys in Redis, 20 customer
        documents with fixed _ids in MongoDB (collection `customers`), 20 customers in
        PostgreSQL (seed/postgres.sql)."""
        self.mysql_query((self.project_dir / "app" / "schema.sql").read_text()
                         + "\n" + (self.project_dir / "seed" / "mysql.sql").read_text())
        self.redis_pipe((self.project_dir / "seed" / "redis.txt").read_text())
        self.mongo_eval((self.project_dir / "seed" / "mongo.py").read_text())
        self.pg_query((self.project_dir / "seed" / "postgres.sql").read_text())

    def invariants(self) -> dict[str, int]:
        """The numbers behind check_invariants(), read in one consistent snapshot."""
        rows = self.mysql_query(
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n"
            "SELECT"
            " (SELECT COUNT(*) FROM orders o LEFT JOIN"
            "   (SELECT order_id, SUM(amount_cents) AS s FROM order_lines GROUP BY order_id) l"
            "   ON l.order_id = o.id WHERE l.s IS NULL OR l.s <> o.total_cents),"
            " (SELECT COUNT(*) FROM order_lines ol LEFT JOIN orders o ON o.id = ol.order_id"
            "   WHERE o.id IS NULL),"
            " (SELECT COALESCE(SUM(balance_cents), 0) FROM accounts),"
            " (SELECT COALESCE(MAX(v), -1) FROM meta WHERE k = 'accounts_total'),"
            " (SELECT COUNT(*) FROM accounts WHERE balance_cents < 0),"
            " (SELECT COUNT(*) FROM orders),"
            " (SELECT COUNT(*) FROM accounts);\n"
            "COMMIT;\n"
        )
        keys = ("orders_total_mismatch", "orphan_order_lines", "accounts_sum", "accounts_expected",
                "negative_accounts", "orders", "accounts")
        return {k: int(v or 0) for k, v in zip(keys, rows[-1], strict=True)}

    def check_invariants(self) -> dict[str, int]:
        """Raise AssertionError unless: every order's total equals the sum of its lines,
        no line lacks its order, the account balances sum to meta.accounts_total and none
        is negative. Returns the numbers."""
        n = self.invariants()
        problems = []
        if n["orders_total_mismatch"]:
            problems.append(f"{n['orders_total_mismatch']} order(s) whose total != sum of lines")
        if n["orphan_order_lines"]:
            problems.append(f"{n['orphan_order_lines']} order line(s) without an order")
        if n["accounts"] == 0 or n["accounts_sum"] != n["accounts_expected"]:
            problems.append(f"account balances sum to {n['accounts_sum']}, expected "
                            f"{n['accounts_expected']} ({n['accounts']} accounts)")
        if n["negative_accounts"]:
            problems.append(f"{n['negative_accounts']} negative account balance(s)")
        if problems:
            raise AssertionError("stack invariants violated: " + "; ".join(problems))
        return n


def _unescape_batch(value: str) -> str | None:
    """Undo the mariadb --batch escaping of one field."""
    if value == "NULL":
        return None
    if "\\" not in value:
        return value
    mapping = {"n": "\n", "t": "\t", "\\": "\\", "0": "\0"}
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(mapping.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)
