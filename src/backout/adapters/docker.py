"""Docker Engine and Docker Compose v2, through their CLIs.

Containers' compose labels are the truth about what runs (as in docker-compose
v1): we ask the engine, we never keep our own idea of the running state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout import proc
from backout.environment import Environment
from backout.errors import CommandFailedError, DockerUnavailableError, ExternalError

ENGINE_FIX = "start the Docker Engine (systemctl start docker, or dockerd) and retry"


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    service: str
    state: str  # running, exited, restarting, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    image: str  # the image reference compose asked for
    image_id: str  # sha256:... actually running
    restart_count: int
    started_at: str
    labels: dict[str, str] = field(default_factory=dict)
    failing_streak: int = 0  # consecutive failed healthchecks (Docker counts them)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: str
    labels: dict[str, str]


class Docker:
    """The Docker Engine, via the ``docker`` CLI."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def _run(self, args: Sequence[str], *, timeout: float = 60, check: bool = True,
             what: str | None = None) -> proc.Result:
        return proc.run(self.env, ["docker", *args], timeout=timeout, check=check, what=what)

    def ping(self) -> str:
        """The engine's version; raises ``DockerUnavailableError`` when it does not answer."""
        try:
            result = self._run(["version", "--format", "{{.Server.Version}}"], timeout=20,
                               check=False, what="docker version")
        except ExternalError as exc:
            if "timed out" in exc.message:
                raise DockerUnavailableError(f"Docker Engine does not answer ({exc.message})",
                                             fix=ENGINE_FIX) from exc
            raise DockerUnavailableError(exc.message, fix="install Docker (docker.io)") from exc
        version = result.stdout.strip()
        if not result.ok or not version:
            raise DockerUnavailableError(
                f"Docker Engine is not reachable: {proc.last_line(result.stderr)}", fix=ENGINE_FIX
            )
        return version

    def inspect_containers(self, ids: Sequence[str]) -> list[ContainerInfo]:
        if not ids:
            return []
        result = self._run(["container", "inspect", *ids], what="docker container inspect")
        out: list[ContainerInfo] = []
        for raw in json.loads(result.stdout):
            state = raw.get("State") or {}
            labels = (raw.get("Config") or {}).get("Labels") or {}
            health = (state.get("Health") or {}).get("Status")
            out.append(
                ContainerInfo(
                    id=raw["Id"],
                    name=raw["Name"].lstrip("/"),
                    service=labels.get("com.docker.compose.service", ""),
                    state=state.get("Status", "unknown"),
                    health=health,
                    image=(raw.get("Config") or {}).get("Image", ""),
                    image_id=raw.get("Image", ""),
                    restart_count=int(raw.get("RestartCount", 0)),
                    started_at=state.get("StartedAt", ""),
                    labels=dict(labels),
                    failing_streak=int((state.get("Health") or {}).get("FailingStreak", 0)),
                )
            )
        return out

    def inspect_image(self, ref: str) -> ImageInfo | None:
        result = self._run(["image", "inspect", ref], check=False, what="docker image inspect")
        if not result.ok:
            return None
        raw = json.loads(result.stdout)[0]
        return ImageInfo(
            id=raw["Id"],
            repo_tags=tuple(raw.get("RepoTags") or ()),
            repo_digests=tuple(raw.get("RepoDigests") or ()),
            created=raw.get("Created", ""),
            labels=dict((raw.get("Config") or {}).get("Labels") or {}),
        )

    def stats(self, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """Memory % (of the limit, or of the host without one) and CPU % per container."""
        if not ids:
            return {}
        result = self._run(["stats", "--no-stream", "--no-trunc", "--format", "{{json .}}", *ids],
                           timeout=60, check=False, what="docker stats")
        out: dict[str, dict[str, float]] = {}
        for line in result.stdout.splitlines():
            try:
                raw = json.loads(line)
                out[raw["ID"]] = {"memory_percent": _percent(raw.get("MemPerc")),
                                  "cpu_percent": _percent(raw.get("CPUPerc"))}
            except (ValueError, KeyError):
                continue
        return out

    def tag(self, image_id: str, ref: str) -> None:
        self._run(["image", "tag", image_id, ref], what="docker image tag")

    def remove_tag(self, ref: str) -> None:
        # ``rmi`` of a tag only untags while other tags or containers use the image.
        self._run(["image", "rm", ref], check=False, what="docker image rm")

    def volume_exists(self, name: str) -> bool:
        result = self._run(["volume", "inspect", name], check=False, what="docker volume inspect")
        if not result.ok and "no such volume" not in result.stderr.lower():
            raise ExternalError(f"docker volume inspect failed: {proc.last_line(result.stderr)}")
        return result.ok

    def images(self, reference: str) -> list[str]:
        result = self._run(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                            "--filter", f"reference={reference}"], what="docker image ls")
        return [line for line in result.stdout.splitlines() if line and "<none>" not in line]


def _percent(text: str | None) -> float:
    try:
        return float(str(text or "0").rstrip("%") or 0)
    except ValueError:
        return 0.0


class Compose:
    """One Compose project: its files, project directory and project name."""

    def __init__(self, env: Environment, project_dir: Path, files: Sequence[str],
                 project_name: str | None = None, env_file: str | None = None) -> None:
        self.env = env
        self.project_dir = project_dir
        self.files = list(files)
        self.project_name = project_name
        self.env_file = env_file

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "--project-directory", str(self.project_dir)]
        for f in self.files:
            argv += ["-f", str(self.project_dir / f)]
        if self.env_file:
            argv += ["--env-file", str(self.project_dir / self.env_file)]
        if self.project_name:
            argv += ["-p", self.project_name]
        return argv + list(args)

    def run(self, *args: str, timeout: float = 300, check: bool = True,
            what: str | None = None) -> proc.Result:
        try:
            return proc.run(self.env, self.argv(*args), timeout=timeout, check=check,
                            cwd=str(self.project_dir), what=what or f"docker compose {args[0]}")
        except CommandFailedError as exc:
            if "Cannot connect to the Docker daemon" in exc.message:
                raise DockerUnavailableError(
                    "Docker Engine is not reachable", fix=ENGINE_FIX) from exc
            if "is not a docker command" in exc.message or "unknown command" in exc.message:
                raise ExternalError("Docker Compose v2 is not installed",
                                    fix="install the docker compose plugin") from exc
            raise

    def config(self) -> dict[str, Any]:
        """The resolved configuration (``docker compose config --format json``).

        Needs no engine. Variable interpolation uses the project's .env, so the
        result may contain secrets: callers must not store it without redaction.
        """
        result = self.run("config", "--format", "json", timeout=60)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def containers(self, *services: str) -> list[ContainerInfo]:
        """Every container of the project (all states), inspected."""
        result = self.run("ps", "-a", "-q", *services, timeout=60)
        ids = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        return Docker(self.env).inspect_containers(ids)

    def running_images(self) -> dict[str, str]:
        """service -> image ID of its running container: what runs now."""
        return {c.service: c.image_id for c in self.containers() if c.state == "running"}
