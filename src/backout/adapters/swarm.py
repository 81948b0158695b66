"""Docker Swarm, through the ``docker`` CLI: services, tasks, nodes and stacks of one
engine (the manager's, or a node's), as argument lists with timeouts.

Only the Swarm platform (``backout.platforms.swarm``) uses this module. Every engine
is named by the global options that reach it (``-H HOST`` or ``--context NAME``), so
argv never depends on the caller's DOCKER_HOST by accident.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from backout import proc
from backout.environment import Environment
from backout.errors import DockerUnavailableError, ExternalError

UNREACHABLE = ("Cannot connect to the Docker daemon", "error during connect",
               "connection refused", "no such file or directory", "i/o timeout",
               "context deadline exceeded")

# Swarm's own labels on the containers of its tasks.
TASK_LABEL = "com.docker.swarm.task.id"
SERVICE_LABEL = "com.docker.swarm.service.name"
STACK_LABEL = "com.docker.stack.namespace"


def unreachable_text(text: str) -> bool:
    """Does a docker CLI error say that the engine itself did not answer?"""
    low = text.lower()
    return "timed out" in low or (any(mark.lower() in low for mark in UNREACHABLE)
                                  and ("daemon" in low or "connect" in low))


def engine_target(host: str | None, context: str | None = None) -> list[str]:
    """The docker global options reaching one engine."""
    if host:
        return ["-H", host]
    if context:
        return ["--context", context]
    return []


class SwarmEngine:
    """One Docker Engine of a Swarm (``name``: the node's hostname, or "manager")."""

    def __init__(self, env: Environment, name: str, target: Sequence[str]) -> None:
        self.env = env
        self.name = name
        self.target = list(target)

    def argv(self, *args: str) -> list[str]:
        return ["docker", *self.target, *args]

    def where(self) -> str:
        return " ".join(self.target[1:]) if self.target else "the default engine"

    def unreachable(self, detail: str) -> DockerUnavailableError:
        return DockerUnavailableError(
            f"the Docker Engine of node {self.name} ({self.where()}) does not answer: {detail}",
            fix=f"start dockerd on {self.name} (or fix [platform.nodes] in backout.toml), then "
                "retry; an interrupted operation finishes with `backout resume`")

    def run(self, *args: str, timeout: float = 60, check: bool = True, what: str | None = None,
            secret_env: Mapping[str, str] | None = None, cwd: str | None = None,
            plain_env: Mapping[str, str] | None = None) -> proc.Result:
        label = what or f"docker {' '.join(args[:2])} on {self.name}"
        try:
            result = proc.run(self.env, self.argv(*args), timeout=timeout, check=False,
                              what=label, secret_env=secret_env, cwd=cwd, plain_env=plain_env)
        except ExternalError as exc:
            if "timed out" in exc.message:
                raise self.unreachable(exc.message) from exc
            raise
        if not result.ok:
            err = result.stderr.strip()
            if unreachable_text(err):
                raise self.unreachable(proc.last_line(self.env.redact(err)))
            if check:
                raise ExternalError(f"{label} failed (exit {result.returncode}): "
                                    f"{proc.last_line(self.env.redact(err))}")
        return result

    def json_lines(self, *args: str, what: str | None = None) -> list[dict[str, Any]]:
        result = self.run(*args, what=what)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def inspect(self, kind: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """``docker KIND inspect`` of many objects at once (none: nothing asked)."""
        if not ids:
            return []
        result = self.run(*([kind, "inspect"] if kind != "task" else ["inspect", "--type", "task"]),
                          *ids, what=f"docker {kind} inspect on {self.name}")
        data: list[dict[str, Any]] = json.loads(result.stdout)
        return data

    # -- the cluster (manager only) ----------------------------------------------------
    def version(self) -> str:
        result = self.run("version", "--format", "{{.Server.Version}}", timeout=20,
                          check=False, what=f"docker version on {self.name}")
        version = result.stdout.strip()
        if not result.ok or not version:
            raise self.unreachable(proc.last_line(result.stderr) or "no version")
        return version

    def swarm_state(self) -> tuple[str, bool]:
        """(LocalNodeState, is a manager) of this engine."""
        result = self.run("info", "--format",
                          "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
                          what=f"docker info on {self.name}")
        state, _, control = result.stdout.strip().partition(" ")
        return state, control == "true"

    def nodes(self) -> list[dict[str, Any]]:
        ids = self.run("node", "ls", "-q").stdout.split()
        return self.inspect("node", ids)

    def stack_services(self, stack: str) -> list[dict[str, Any]]:
        ids = self.run("service", "ls", "-q", "--filter",
                       f"label={STACK_LABEL}={stack}").stdout.split()
        return self.inspect("service", ids)

    def stacks(self) -> list[str]:
        result = self.run("stack", "ls", "--format", "{{.Name}}")
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    def tasks(self, services: Sequence[str]) -> list[dict[str, Any]]:
        """Every task (any desired state) of ``services`` (names or IDs)."""
        if not services:
            return []
        for attempt in range(3):
            ids = self.run("service", "ps", "-q", "--no-trunc", *services,
                           what=f"docker service ps on {self.name}").stdout.split()
            try:
                return self.inspect("task", sorted(set(ids)))
            except ExternalError as exc:
                # Swarm trims a service's task history at any time: a task listed a
                # moment ago may be gone. List again.
                if "not found" not in exc.message or attempt == 2:
                    raise
        return []

    def update_service(self, service: str, *flags: str, timeout: float = 120) -> None:
        # --detach: we wait for the tasks ourselves (the CLI's own wait reads UpdateStatus).
        self.run("service", "update", "--detach", *flags, service, timeout=timeout,
                 what=f"docker service update {service}")

    def deploy_stack(self, stack: str, files: Sequence[str], *, resolve_image: str,
                     env: Mapping[str, str], cwd: str, timeout: float = 600,
                     plain_env: Mapping[str, str] | None = None) -> None:
        """``env``: secrets (redacted from every output); ``plain_env``: the other
        variables the files reference (a registry address, a tag), shown as they are."""
        args = ["stack", "deploy", "--prune", "--resolve-image", resolve_image]
        for f in files:
            args += ["-c", f]
        self.run(*args, stack, timeout=timeout, secret_env=env, cwd=cwd, plain_env=plain_env,
                 what=f"docker stack deploy {stack}")
