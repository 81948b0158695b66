"""Corpus stacks brought up with local stand-ins of their database images.

No registry is reachable here, so the images a public compose file names
(``mariadb:10-focal``, ``mongo:4.2.0``, ``redislabs/redismod``) are local images
re-tagged to those names: the test stack's MariaDB behind a small entrypoint that
adds the official images' ``*_FILE`` and option-only-command conventions
(tests/standins/mysql), the test stack's Redis, the MongoDB stand-in (nx-27017,
NOT MongoDB). Tags this module makes are removed again by ``untag_all`` (only
while they still point at the stand-in).

A ``CorpusStack`` is a copy of one corpus directory in a temporary directory (the
corpus is never written to), started with its own project name and an override
file of the test's (labels for cleanup, ports on 127.0.0.1 instead of fixed host
ports, a port for the MongoDB stand-in which has no mongodump); only the database
services are started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.stack import RUN_LABEL, build_images, untag_retained

STANDINS = Path(__file__).resolve().parent.parent / "standins"
MARIADB_STANDIN = "backout-standin/mariadb:corpus"
REDIS_STANDIN = "backout-test/redis:7.0"
MONGO_STANDIN = "backout-test/mongo-nx27017:0.8.1"
OVERRIDE = "backout-test.override.yaml"

_made_tags: dict[str, str] = {}  # tag -> image ID it was given


def docker(*args: str, timeout: float = 600, check: bool = True,
           env: Mapping[str, str] | None = None, input_text: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            check=False, env={**os.environ, **(env or {})}, input=input_text)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {result.stderr[-2000:]}")
    return result


def image_id(ref: str) -> str | None:
    result = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def is_standin(ref: str) -> bool:
    """An image of ours (a stand-in or a test image), e.g. left tagged by a crashed run."""
    labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref,
                    check=False, timeout=60).stdout.strip()
    found = json.loads(labels) if labels.startswith("{") else {}
    return bool(found) and any(k in found for k in ("io.backout.stand-in", "io.backout.test.role"))


def build_standins() -> None:
    build_images()
    docker("build", "-q", "-t", MARIADB_STANDIN, str(STANDINS / "mysql"), timeout=600)


def tag_as(standin: str, *names: str) -> None:
    """Make ``names`` refer to the stand-in (a name already taken by another image is
    an error: this machine's images are not ours to move)."""
    target = image_id(standin)
    assert target, f"{standin} is not built"
    for name in names:
        current = image_id(name)
        if current == target:
            continue
        assert current is None or current == _made_tags.get(name) or is_standin(name), \
            f"{name} exists and is not a stand-in: not re-tagged"
        docker("tag", standin, name, timeout=60)
        _made_tags[name] = target


def untag_all() -> None:
    for name, target in list(_made_tags.items()):
        if image_id(name) == target:
            docker("rmi", "--no-prune", name, check=False, timeout=60)
        del _made_tags[name]


class CorpusStack:
    def __init__(self, source: Path, tmp: Path, services: Sequence[str],
                 override: Mapping[str, Any] | None = None) -> None:
        self.dir = tmp / source.name
        shutil.copytree(source, self.dir, symlinks=True)
        self.compose_file = next(p.name for p in self.dir.iterdir()
                                 if p.name in ("compose.yaml", "compose.yml", "docker-compose.yml"))
        self.run_id = f"backout-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.project = f"bo-corpus-{source.name}-{secrets.token_hex(2)}".lower()
        self.services = list(services)
        self.override_text = self._override(override or {})
        self.env = {"COMPOSE_PROJECT_NAME": self.project}

    def _override(self, extra: Mapping[str, Any]) -> str:
        """YAML of the override: labels on the started services, every published port
        on 127.0.0.1 and a free port (``!override`` replaces the file's fixed ports)."""
        lines = ["services:"]
        for service in self.services:
            lines += [f"  {service}:", f"    labels: {{{RUN_LABEL}: {self.run_id}}}"]
            spec = extra.get(service, {})
            ports = spec.get("ports")
            if ports is not None:
                lines.append(f"    ports: !override {json.dumps(ports)}")
            for key, value in spec.items():
                if key != "ports":
                    lines.append(f"    {key}: {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    def compose(self, *args: str, timeout: float = 300, check: bool = True,
                env: Mapping[str, str] | None = None, input_text: str | None = None
                ) -> subprocess.CompletedProcess[str]:
        return docker("compose", "--project-directory", str(self.dir), "-p", self.project,
                      "-f", str(self.dir / self.compose_file), "-f", str(self.dir / OVERRIDE),
                      *args, timeout=timeout, check=check, env=env, input_text=input_text)

    def up(self) -> None:
        (self.dir / OVERRIDE).write_text(self.override_text)
        self.compose("up", "-d", "--wait", "--no-deps", *self.services, timeout=300)

    def use_override_in_config(self) -> None:
        """After init (which reads the project's own file): backout runs the stack as
        the test started it, with the override."""
        path = self.dir / "backout.toml"
        text = path.read_text()
        old = f'compose_files = ["{self.compose_file}"]'
        assert old in text
        path.write_text(text.replace(old, f'compose_files = ["{self.compose_file}", "{OVERRIDE}"]'))

    def exec(self, service: str, *argv: str, env: Mapping[str, str] | None = None,
             input_text: str | None = None) -> str:
        flags = [f for name in (env or {}) for f in ("-e", name)]
        return self.compose("exec", "-T", *flags, service, *argv, env=env,
                            input_text=input_text, timeout=120).stdout

    def published(self, service: str, port: int) -> int:
        out = self.compose("port", service, str(port), timeout=60).stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def down(self) -> None:
        if (self.dir / OVERRIDE).exists():
            self.compose("down", "-v", "-t", "5", "--remove-orphans", check=False, timeout=300)
        untag_retained(lambda project: project == self.project)
