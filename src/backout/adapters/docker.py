"""The Docker Engine, through its CLI (Compose is ``backout.adapters.compose``).

Containers' compose labels are the truth about what runs (as in docker-compose
v1): we ask the engine, we never keep our own idea of the running state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from backout import proc
from backout.environment import Environment
from backout.errors import DockerUnavailableError, ExternalError
from backout.platforms.base import ContainerInfo, ImageInfo

ENGINE_FIX = "start the Docker Engine (systemctl start docker, or dockerd) and retry"


def image_info(raw: dict[str, Any]) -> ImageInfo:
    """An image's inspect document (the CLI's and the Engine API's are the same)."""
    return ImageInfo(
        id=raw["Id"],
        repo_tags=tuple(raw.get("RepoTags") or ()),
        repo_digests=tuple(raw.get("RepoDigests") or ()),
        created=raw.get("Created", ""),
        labels=dict((raw.get("Config") or {}).get("Labels") or {}),
    )


class Docker:
    """The Docker Engine, via the ``docker`` CLI."""

    def __init__(self, env: Environment, target: Sequence[str] = ()) -> None:
        self.env = env
        # Global options naming another engine (``-H HOST`` or ``--context NAME``):
        # a Swarm node's engine; empty for the environment's own.
        self.target = list(target)

    def _run(self, args: Sequence[str], *, timeout: float = 60, check: bool = True,
             what: str | None = None) -> proc.Result:
        return proc.run(self.env, ["docker", *self.target, *args], timeout=timeout, check=check,
                        what=what)

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
        return [container_info(raw) for raw in json.loads(result.stdout)]

    def addresses(self, container_id: str) -> list[str]:
        """The container's IP address on each of its networks."""
        result = self._run(["container", "inspect", "--format",
                            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                            container_id], check=False, what="docker container inspect")
        return result.stdout.split() if result.ok else []

    def existing(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that name a container (in any state)."""
        found = []
        for cid in ids:
            if self._run(["container", "inspect", "--format", "{{.Id}}", cid], check=False,
                         what="docker container inspect").ok:
                found.append(cid)
        return found

    def stop(self, ids: Sequence[str], *, grace_seconds: float) -> None:
        # SIGTERM, then SIGKILL after the grace (rm -f would kill at once).
        self._run(["container", "stop", "-t", str(max(0, math.ceil(grace_seconds))), *ids],
                  timeout=grace_seconds + 60, check=False, what="docker container stop")

    def processes(self, container_id: str) -> list[str]:
        result = self._run(["container", "top", container_id, "-o", "pid,args"], check=False,
                           what="docker container top")
        return result.stdout.splitlines()[1:] if result.ok else []

    def remove(self, ids: Sequence[str]) -> None:
        self._run(["container", "rm", "-f", *ids], timeout=60, what="docker container rm")

    def inspect_image(self, ref: str) -> ImageInfo | None:
        result = self._run(["image", "inspect", ref], check=False, what="docker image inspect")
        if not result.ok:
            return None
        return image_info(json.loads(result.stdout)[0])

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

    def push(self, ref: str) -> None:
        self._run(["image", "push", "-q", ref], timeout=600, what=f"docker push {ref}")

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


def container_info(raw: dict[str, Any]) -> ContainerInfo:
    """A container's inspect document (CLI or Engine API: the same JSON) as ContainerInfo."""
    state = raw.get("State") or {}
    config = raw.get("Config") or {}
    labels = config.get("Labels") or {}
    health = state.get("Health") or {}
    return ContainerInfo(
        id=raw["Id"],
        name=raw["Name"].lstrip("/"),
        service=labels.get("com.docker.compose.service", ""),
        state=state.get("Status", "unknown"),
        health=health.get("Status"),
        image=config.get("Image", ""),
        image_id=raw.get("Image", ""),
        restart_count=int(raw.get("RestartCount", 0)),
        started_at=state.get("StartedAt", ""),
        labels=dict(labels),
        failing_streak=int(health.get("FailingStreak", 0)),
        exit_code=int(state.get("ExitCode") or 0),
    )


def _percent(text: str | None) -> float:
    try:
        return float(str(text or "0").rstrip("%") or 0)
    except ValueError:
        return 0.0
