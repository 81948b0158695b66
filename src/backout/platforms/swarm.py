"""Docker Swarm as a platform: a stack deployed with ``docker stack deploy`` across
several nodes, driven through ``backout.adapters.swarm``.

What runs is read from Swarm's *tasks* (desired state, state, node, the image with
its digest) and from the containers of those tasks on each node's own engine (health,
restarts, the image ID). A change is waited for on the tasks, never on
``UpdateStatus`` alone: Swarm says ``rollback_completed`` seconds before the
rolled-back task has even started.

The stack definition is the compose file it was deployed from, resolved by Compose
(`docker compose config`), as on the Compose platform.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backout import proc
from backout.adapters.docker import Docker
from backout.adapters.swarm import (
    TASK_LABEL,
    SwarmEngine,
    engine_target,
    unreachable_text,
)
from backout.config import Config
from backout.environment import Environment
from backout.errors import (
    DockerUnavailableError,
    ExternalError,
    NotFoundError,
    UnhealthyError,
    UsageError,
)
from backout.platforms.base import (
    ContainerInfo,
    EventStream,
    ImageInfo,
    OnJoin,
    Platform,
    SwitchPair,
    newest_running,
)
from backout.platforms.compose import ComposePlatform

# ${NAME}, ${NAME:-default}, $NAME in a compose file ($$ is an escaped dollar)
_VARIABLE_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")
NODE_LABEL = "io.backout.swarm.node"  # added to ContainerInfo.labels: where the task runs
SCALED_FROM = "io.backout.scaled-from"  # a service label: replicas before backout stopped it
OPERATION_LABEL = "io.backout.operation"
# Task states before a container runs (Swarm's task lifecycle).
WAITING = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting")
POLL_SECONDS = 1.0


# -- pure reading of Swarm's objects (unit-tested on recorded JSON) -----------------
def short_name(stack: str, full: str) -> str:
    return full.removeprefix(f"{stack}_")


def image_digest(ref: str) -> str | None:
    """``repo:tag@sha256:...`` -> ``sha256:...`` (None for an unpinned reference)."""
    _, at, digest = ref.partition("@")
    return digest if at else None


def desired_replicas(service: Mapping[str, Any], ready_nodes: int) -> int:
    mode = (service.get("Spec") or {}).get("Mode") or {}
    if "Replicated" in mode:
        return int((mode["Replicated"] or {}).get("Replicas", 1))
    return ready_nodes  # global: one per (eligible) node; the tasks say which


def spec_image(service: Mapping[str, Any]) -> str:
    """The image reference the service's spec asks for (its tasks copy it)."""
    return str(service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])


def host_mode_ports(service: Mapping[str, Any]) -> list[int]:
    ports = ((service.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports") or []
    return [int(p.get("PublishedPort", 0)) for p in ports if p.get("PublishMode") == "host"]


def update_order(service: Mapping[str, Any]) -> str:
    return str(((service.get("Spec") or {}).get("UpdateConfig") or {}).get("Order")
               or "stop-first")


@dataclass(frozen=True)
class TaskView:
    """One task desired running, with what its container says (if it has one)."""

    id: str
    service: str  # short name (without the stack prefix)
    slot: int
    node: str  # hostname; "" while unassigned
    state: str  # Swarm's task state: pending, preparing, running, failed, ...
    since: str  # Status.Timestamp
    error: str
    image: str  # the spec's image reference (repo:tag@sha256:digest)
    container_id: str
    # Earlier tasks of the same slot that failed: Swarm replaces a crashed task by a
    # new one (whose container has no restarts), so these are the slot's restarts.
    failures: int = 0


FAILED_STATES = ("failed", "rejected")


def slot_key(task: Mapping[str, Any]) -> tuple[str, str]:
    """A replicated task's slot, or a global task's node: what a new task replaces."""
    slot = task.get("Slot")
    return str(task.get("ServiceID")), f"slot {slot}" if slot else f"node {task.get('NodeID')}"


def slot_failures(tasks: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """How many tasks of each slot ended failed or rejected (within Swarm's task history)."""
    out: dict[tuple[str, str], int] = {}
    for t in tasks:
        if (t.get("Status") or {}).get("State") in FAILED_STATES:
            out[slot_key(t)] = out.get(slot_key(t), 0) + 1
    return out


def task_view(stack: str, task: Mapping[str, Any], services: Mapping[str, str],
              nodes: Mapping[str, str], failures: int = 0) -> TaskView:
    status = task.get("Status") or {}
    spec = (task.get("Spec") or {}).get("ContainerSpec") or {}
    return TaskView(
        id=str(task.get("ID", "")),
        service=short_name(stack, services.get(str(task.get("ServiceID")), "")),
        slot=int(task.get("Slot") or 0),
        node=nodes.get(str(task.get("NodeID") or ""), ""),
        state=str(status.get("State", "unknown")),
        since=str(status.get("Timestamp", "")),
        error=str(status.get("Err") or ""),
        image=str(spec.get("Image", "")),
        container_id=str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
        failures=failures,
    )


@dataclass(frozen=True)
class Convergence:
    """Where one service stands against what it should run."""

    done: bool
    problem: str  # why not yet (empty when done)
    stalled: bool = False  # a task waits (Pending) past the deadline: it never will start


def assess(service: Mapping[str, Any], replicas: int, tasks: Sequence[TaskView],
           containers: Mapping[str, ContainerInfo], *, digest: str | None,
           image_id: str | None, now: float, stall_seconds: float,
           pending_since: Mapping[str, float]) -> Convergence:
    """Is a service converged: ``replicas`` tasks desired running, each running, its
    container healthy (when it has a healthcheck) and on the target image (by digest of
    the spec, and by image ID of the container when known)?"""
    name = str((service.get("Spec") or {}).get("Name", "?"))
    waiting = [t for t in tasks if t.state in WAITING]
    for t in waiting:
        if t.state == "pending" and now - pending_since.get(t.id, now) >= stall_seconds:
            return Convergence(False, f"task {name}.{t.slot} has been pending for "
                                      f"{now - pending_since[t.id]:.0f}s"
                                      + (f": {t.error}" if t.error else ""), stalled=True)
    if len(tasks) != replicas:
        return Convergence(False, f"{len(tasks)} of {replicas} tasks desired running")
    off = [t for t in tasks if digest is not None and image_digest(t.image) != digest]
    if off:
        return Convergence(False, f"{len(off)} task(s) not on {digest[:19] if digest else ''}")
    # A task made from an earlier spec is replaced by Swarm even when its image has the
    # same digest (a pinned retained reference is a different image string): it is not
    # converged until it carries the spec's reference itself.
    wanted = spec_image(service)
    stale = [t for t in tasks if t.image != wanted]
    if stale:
        return Convergence(False, f"{len(stale)} task(s) of an earlier spec, which Swarm "
                                  f"replaces (task {name}.{stale[0].slot} runs {stale[0].image})")
    for t in tasks:
        if t.state != "running":
            return Convergence(False, f"task {name}.{t.slot} is {t.state}"
                                      + (f" ({t.error})" if t.error else ""))
        c = containers.get(t.container_id)
        if c is None:
            return Convergence(False, f"task {name}.{t.slot}: no container on {t.node} yet")
        if image_id is not None and c.image_id != image_id:
            return Convergence(False, f"task {name}.{t.slot} runs image {c.image_id[7:19]}")
        if not c.ready:
            return Convergence(False, f"task {name}.{t.slot} on {t.node} is "
                                      f"{c.state}/{c.health or 'no healthcheck'}")
    return Convergence(True, "")


def still_running(tasks: Sequence[Mapping[str, Any]]) -> list[str]:
    """IDs of tasks whose container may still run (whatever their desired state)."""
    return [str(t.get("ID")) for t in tasks
            if (t.get("Status") or {}).get("State") in ("running", *WAITING)]


def stall_explanation(service: Mapping[str, Any]) -> str:
    ports = host_mode_ports(service)
    if ports and update_order(service) == "start-first":
        return (f"a start-first update of a service publishing port(s) "
                f"{', '.join(map(str, ports))} in host mode: the new task has no node where the "
                "port is free while the old task holds it (publish through a proxy service, or "
                "use order: stop-first)")
    return "no node can run the new task (placement constraints, resources or ports)"


# -- the platform --------------------------------------------------------------------
class SwarmPlatform:
    """The stack of one backout.toml, deployed on a Docker Swarm."""

    kind = "swarm"
    # `docker service update` starts and stops tasks in the service's own
    # update_config.order and waits for their health: backout's beside-steps would
    # fight the orchestrator (it would reschedule a second task away at once).
    switches_itself = True
    builds_images = False  # `docker stack deploy` runs what the registry has

    def __init__(self, env: Environment, config: Config,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.env = env
        self.config = config
        self.project_dir = config.project_dir
        self.stack = config.project.name or config.project_dir.name
        self.manager = SwarmEngine(env, "manager", engine_target(config.platform.manager))
        # The definition is a compose file on both platforms.
        self.compose = ComposePlatform(env, config)
        self.sleep = sleep
        self.clock = clock

    # -- engines -------------------------------------------------------------------
    def node_engine(self, node: str) -> SwarmEngine:
        host = self.config.platform.nodes.get(node)
        # Default: the Docker context named after the node
        # (docker context create NODE --docker host=...).
        return SwarmEngine(self.env, node, engine_target(host, None if host else node))

    def _docker(self, node: str) -> Docker:
        return Docker(self.env, self.node_engine(node).target)

    @contextmanager
    def _reaching(self, node: str) -> Iterator[None]:
        """A node's engine that does not answer is named (exit 6), whatever the call."""
        try:
            yield
        except DockerUnavailableError:
            raise
        except ExternalError as exc:
            if unreachable_text(exc.message):
                raise self.node_engine(node).unreachable(exc.message) from exc
            raise

    def _node_names(self) -> dict[str, str]:
        return {str(n["ID"]): str((n.get("Description") or {}).get("Hostname", n["ID"]))
                for n in self.manager.nodes()}

    def _services(self, *services: str) -> list[dict[str, Any]]:
        found = self.manager.stack_services(self.stack)
        if services:
            wanted = {f"{self.stack}_{s}" for s in services}
            found = [s for s in found if s["Spec"]["Name"] in wanted]
        return found

    def service(self, name: str) -> dict[str, Any]:
        found = self._services(name)
        if not found:
            raise NotFoundError(f"no service {self.stack}_{name} on the Swarm",
                                fix=f"deploy the stack (docker stack deploy ... {self.stack})")
        return found[0]

    def _desired_tasks(self, services: Sequence[dict[str, Any]],
                       nodes: Mapping[str, str]) -> list[TaskView]:
        names = {str(s["ID"]): str(s["Spec"]["Name"]) for s in services}
        raw = self.manager.tasks(list(names))
        failures = slot_failures(raw)
        return [task_view(self.stack, t, names, nodes, failures.get(slot_key(t), 0)) for t in raw
                if t.get("DesiredState") == "running"]

    def _task_containers(self, tasks: Sequence[TaskView]) -> dict[str, ContainerInfo]:
        by_node: dict[str, list[str]] = {}
        for t in tasks:
            if t.container_id and t.node:
                by_node.setdefault(t.node, []).append(t.container_id)
        out: dict[str, ContainerInfo] = {}
        for node, ids in sorted(by_node.items()):
            with self._reaching(node):
                for c in self._docker(node).inspect_containers(ids):
                    out[c.id] = c
        return out

    def _view(self, *services: str) -> tuple[list[dict[str, Any]], list[TaskView],
                                             dict[str, ContainerInfo]]:
        svcs = self._services(*services)
        tasks = self._desired_tasks(svcs, self._node_names()) if svcs else []
        return svcs, tasks, self._task_containers(tasks)

    # -- what the stack is and what runs -----------------------------------------------
    def ping(self) -> str:
        version = self.manager.version()
        state, manager = self.manager.swarm_state()
        if state != "active" or not manager:
            raise UsageError(f"the Docker Engine {self.manager.where()} is not a Swarm manager "
                             f"(swarm state {state or 'inactive'})",
                             fix="set [platform] manager to a manager's engine (or DOCKER_HOST)")
        return version

    def definition(self) -> dict[str, Any]:
        data = self.compose.definition()
        data["name"] = self.stack
        return data

    def uninterpolated_definition(self) -> dict[str, Any]:
        return self.compose.uninterpolated_definition()

    def variables(self, names: Sequence[str]) -> dict[str, str]:
        # `docker stack deploy` interpolates the compose file from its own environment
        # only; backout gives it the values Compose would read (.env, environment).
        return self.compose.variables(names)

    def project_name(self, definition: Mapping[str, Any] | None = None) -> str:
        return self.stack

    def volume_mounts(self, definition: Mapping[str, Any] | None = None) -> dict[str, set[str]]:
        return self.compose.volume_mounts(definition)

    def definition_problem(self, directory: Path) -> str | None:
        return self.compose.definition_problem(directory)

    def containers(self, *services: str) -> list[ContainerInfo]:
        _, tasks, containers = self._view(*services)
        out = []
        for t in tasks:
            c = containers.get(t.container_id)
            labels = {**(c.labels if c else {}), NODE_LABEL: t.node, TASK_LABEL: t.id}
            if c is not None:
                out.append(dataclasses.replace(c, service=t.service, image=t.image,
                                               restart_count=c.restart_count + t.failures,
                                               labels=labels))
            else:  # a task without a container yet: what it waits for is its state
                out.append(ContainerInfo(id="", name=f"{self.stack}_{t.service}.{t.slot}",
                                         service=t.service, state=t.state, health=None,
                                         image=t.image, image_id="",
                                         restart_count=t.failures,
                                         started_at=t.since, labels=labels))
        return out

    def running_images(self) -> dict[str, str]:
        return {name: c.image_id for name, c in newest_running(self.containers()).items()}

    def stats(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        wanted = set(container_ids)
        out: dict[str, dict[str, float]] = {}
        by_node: dict[str, list[str]] = {}
        for c in self.containers():
            if c.id in wanted:
                by_node.setdefault(c.labels[NODE_LABEL], []).append(c.id)
        for node, ids in by_node.items():
            with self._reaching(node):
                out.update(self._docker(node).stats(ids))
        return out

    def logs(self, service: str, since: str, *, timestamps: bool = False) -> str:
        result = self.manager.run("service", "logs", "--no-task-ids", "--raw",
                                  *(["--timestamps"] if timestamps else []), "--since", since,
                                  f"{self.stack}_{service}", check=False, timeout=60,
                                  what=f"docker service logs {service}")
        return result.stdout + result.stderr

    def events(self) -> EventStream | None:
        # Tasks run on every node's engine, each with its own event stream (and a
        # manager's task events): not read yet, so the monitor keeps to its interval.
        return None

    # -- images and volumes ----------------------------------------------------------
    def _engines(self) -> list[tuple[str, Docker]]:
        """The manager's engine first, then each node's."""
        return [("manager", Docker(self.env, self.manager.target)),
                *((node, self._docker(node)) for node in sorted(set(self._node_names().values())))]

    def image(self, ref: str) -> ImageInfo | None:
        for _, docker in self._engines():
            try:
                info = docker.inspect_image(ref)
            except ExternalError:
                continue  # an unreachable node has no say on whether an image exists
            if info is not None:
                return info
        return None

    def tag(self, image_id: str, ref: str) -> None:
        # Tagged where the image is, and pushed next to it in the cluster's registry, so
        # the registry keeps the manifest (a tag protects it from garbage collection).
        for _, docker in self._engines():
            info = docker.inspect_image(image_id)
            if info is None:
                continue
            docker.tag(image_id, ref)
            if registry_host(ref):  # a name in the registry (the stack's own): moved there
                docker.push(ref)
                return
            registry = registry_of(info)
            if registry:
                pushed = f"{registry}/{ref}"
                docker.tag(image_id, pushed)
                docker.push(pushed)
            return
        raise NotFoundError(f"image {image_id[:19]} is on no node of the Swarm")

    def untag(self, ref: str) -> None:
        for _, docker in self._engines():
            if docker.inspect_image(ref) is not None:
                docker.remove_tag(ref)

    def volume_exists(self, name: str) -> bool:
        return any(docker.volume_exists(name) for _, docker in self._engines()[1:])

    # -- changing what runs ------------------------------------------------------------
    def pinned_ref(self, image_ref: str) -> str:
        """``repo@sha256:...`` that every node pulls from the cluster's registry."""
        if image_digest(image_ref):
            return image_ref
        info = self.image(image_ref)
        if info is None:
            raise NotFoundError(f"no image {image_ref} on any node of the Swarm")
        # The operator's own repository first; backout's retention tags name the same digest.
        pushed = sorted((d for d in info.repo_digests if registry_host(d)),
                        key=lambda d: "/backout-retained/" in d)
        if not pushed:
            raise NotFoundError(
                f"image {image_ref} ({info.id[7:19]}) is in no registry the nodes pull from",
                fix="push it to the cluster's registry; a Swarm node cannot run an image "
                    "that exists only on another node")
        return pushed[0]

    def replace_service(self, service: str, image_ref: str, *, operation_id: int) -> None:
        spec = self.service(service)
        target = self.pinned_ref(image_ref)
        before = spec_image(spec)
        # Our own label on the spec: an interrupted run resumed does the same update again,
        # which Swarm sees as no change when it already took place.
        self.manager.update_service(spec["Spec"]["Name"], "--image", target,
                                    "--label-add", f"{OPERATION_LABEL}=op-{operation_id}")
        try:
            self.wait_converged([service], images={service: target})
        except StalledUpdateError as exc:
            self.manager.update_service(spec["Spec"]["Name"], "--image", before)
            try:
                self.wait_converged([service], images={service: before})
            except UnhealthyError as again:
                raise UnhealthyError(f"{exc.message}; put back on {_short(before)}, which does "
                                     f"not converge either: {again.message}",
                                     fix=exc.fix) from exc
            raise UnhealthyError(f"{exc.message}; undone: {service} is back on "
                                 f"{_short(before)}", fix=exc.fix) from exc

    def wait_converged(self, services: Sequence[str], *,
                       images: Mapping[str, str] | None = None,
                       timeout: float | None = None) -> None:
        """Until every service in ``services`` is converged (see ``assess``)."""
        images = images or {}
        deadline = self.clock() + (timeout or self.config.platform.converge_seconds)
        pending_since: dict[str, float] = {}
        image_ids: dict[str, str | None] = {}
        for name, ref in images.items():
            info = self.image(ref)
            image_ids[name] = info.id if info else None
        while True:
            svcs, tasks, containers = self._view(*services)
            now = self.clock()
            for t in tasks:
                if t.state == "pending":
                    pending_since.setdefault(t.id, now)
            ready_nodes = len({t.node for t in tasks if t.node}) or 1
            problems = []
            found = {short_name(self.stack, s["Spec"]["Name"]): s for s in svcs}
            for name in services:
                svc = found.get(name)
                if svc is None:
                    problems.append(f"{name}: no such service in stack {self.stack}")
                    continue
                wanted = images.get(name) or spec_image(svc)
                verdict = assess(svc, desired_replicas(svc, ready_nodes),
                                 [t for t in tasks if t.service == name], containers,
                                 digest=image_digest(wanted), image_id=image_ids.get(name),
                                 now=now, stall_seconds=self.config.platform.stall_seconds,
                                 pending_since=pending_since)
                if verdict.stalled:
                    raise StalledUpdateError(f"the update of {name} stalled: {verdict.problem}",
                                             fix=stall_explanation(svc))
                if not verdict.done:
                    problems.append(f"{name}: {verdict.problem}")
            if not problems:
                return
            if now >= deadline:
                raise UnhealthyError("not converged in time: " + "; ".join(problems),
                                     fix="see `docker service ps` on the manager")
            self.sleep(POLL_SECONDS)

    def converge(self, *, pull: bool) -> None:
        # `docker stack deploy` does not read .env: the values Compose would give the
        # variables the compose files reference go in the child's environment (never
        # argv), read by Compose's own rules.
        values = self.variables(self._referenced_variables())
        # Secrets by name are redacted from every output (backout.toml's password_env
        # values are redacted at load already); the rest (a registry address, an image
        # tag, a user name) stays readable in messages and in the recorded release.
        secret = {k: v for k, v in values.items() if v and proc.is_secret_name(k)}
        plain = {k: v for k, v in values.items() if k not in secret}
        for value in secret.values():
            self.env.redact.add(value)
        # Always resolved to a digest in the registry, whatever ``pull`` says: a node
        # has no image of its own to fall back on, and an unpinned tag would let each
        # node run whatever it has cached under that name.
        del pull
        self.manager.deploy_stack(self.stack, self.config.project.compose_files,
                                  resolve_image="always", env=secret, plain_env=plain,
                                  cwd=str(self.project_dir))
        names = [short_name(self.stack, s["Spec"]["Name"]) for s in self._services()]
        self.wait_converged(names)

    def _referenced_variables(self) -> list[str]:
        names: set[str] = set()
        for name in self.config.project.compose_files:
            try:
                text = (self.project_dir / name).read_text(encoding="utf-8")
            except OSError:
                continue  # `docker stack deploy` names the missing file itself
            names.update(a or b for a, b in _VARIABLE_USE.findall(text.replace("$$", "")))
        return sorted(names)

    def build(self, services: Sequence[str]) -> None:
        raise UsageError("a Swarm does not build images: "
                         f"{', '.join(services)} must be built and pushed to the registry",
                         fix="build and push the images, then deploy")

    def stop(self, services: Sequence[str], *, timeout: float = 180) -> list[str]:
        if not services:
            return []  # not "every service" (see Platform.stop)
        stopped = []
        for svc in self._services(*services):
            replicas = desired_replicas(svc, 0)
            mode = svc["Spec"].get("Mode") or {}
            if "Replicated" not in mode or replicas == 0:
                continue
            name = short_name(self.stack, svc["Spec"]["Name"])
            # The count to restore lives on the service itself: a resumed run finds it.
            self.manager.update_service(svc["Spec"]["Name"], "--label-add",
                                        f"{SCALED_FROM}={replicas}", "--replicas", "0")
            stopped.append(name)
        if stopped:
            self._wait_stopped(stopped, timeout)
        return sorted(stopped)

    def _wait_stopped(self, services: Sequence[str], timeout: float) -> None:
        # Every task, whatever its desired state: scaled to 0, a task is at once desired
        # "shutdown" while its container still runs (and writes) until it has stopped.
        # Only the task's own state says that the container is gone.
        deadline = self.clock() + timeout
        while True:
            svcs = self._services(*services)
            left = still_running(self.manager.tasks([str(s["ID"]) for s in svcs])) \
                if svcs else []
            if not left:
                return
            if self.clock() >= deadline:
                raise UnhealthyError(f"{len(left)} task(s) of {', '.join(services)} still run "
                                     f"after {timeout:.0f}s")
            self.sleep(POLL_SECONDS)

    def start(self, services: Sequence[str]) -> None:
        started = []
        for svc in self._services(*services):
            before = (svc["Spec"].get("Labels") or {}).get(SCALED_FROM)
            if before is None:
                continue
            self.manager.update_service(svc["Spec"]["Name"], "--replicas", before,
                                        "--label-rm", SCALED_FROM)
            started.append(short_name(self.stack, svc["Spec"]["Name"]))
        if started:
            self.wait_converged(started)

    def bring_up(self, service: str) -> None:
        self.start([service])
        self.wait_converged([service])

    # -- reaching into a service -------------------------------------------------------
    def _running(self, service: str) -> ContainerInfo:
        running = [c for c in self.containers(service) if c.state == "running"]
        if not running:
            raise UnhealthyError(f"service {service!r} is not running: no running task",
                                 fix=f"see `docker service ps {self.stack}_{service}`")
        return running[0]

    def exec_argv(self, service: str, inner: Sequence[str],
                  env_names: Sequence[str] = ()) -> list[str]:
        c = self._running(service)
        return self.node_engine(c.labels[NODE_LABEL]).argv(
            "exec", "-i", *_env_flags(env_names), c.id, *inner)

    def _node_of_container(self, container_id: str) -> str:
        for c in self.containers():
            if c.id.startswith(container_id) or container_id == c.name:
                return c.labels[NODE_LABEL]
        for _, node in sorted(self._node_names().items()):
            if self._docker(node).inspect_containers([container_id]):
                return node
        raise NotFoundError(f"no container {container_id[:12]} on any node of the Swarm")

    def container_exec_argv(self, container_id: str, inner: Sequence[str],
                            env_names: Sequence[str] = ()) -> list[str]:
        return self.node_engine(self._node_of_container(container_id)).argv(
            "exec", "-i", *_env_flags(env_names), container_id, *inner)

    def beside_argv(self, service: str, inner: Sequence[str], env_names: Sequence[str] = (),
                    *, mount: tuple[Path, str], label: str) -> list[str] | None:
        return None  # a task runs on a node of its own: a directory here is not bound there

    def one_off_argv(self, service: str, *, entrypoint: str, args: Sequence[str],
                     label: str) -> list[str]:
        # On the task's node, with the task's volumes: a Swarm volume lives on one node.
        c = self._running(service)
        return self.node_engine(c.labels[NODE_LABEL]).argv(
            "run", "--rm", "-i", "--label", label, "--volumes-from", c.id,
            "--entrypoint", entrypoint, c.image, *args)

    # -- switching: Swarm's own (switches_itself) -------------------------------------
    def start_beside(self, service: str, image_ref: str | None, *,
                     operation_id: int, on_join: OnJoin | None = None) -> SwitchPair:
        raise UsageError(f"{service}: a Swarm switches start-first itself "
                         "(update_config.order); backout does not start tasks beside it",
                         fix="set deploy.update_config.order: start-first in the compose file")

    def container_address(self, container_id: str, port: int) -> str | None:
        node = self._node_of_container(container_id)
        addresses = self._docker(node).addresses(container_id)
        return f"{addresses[0]}:{port}" if addresses else None

    def retire(self, container_ids: Sequence[str], *, grace_seconds: float,
               after_stop: Callable[[], object] | None = None) -> list[str]:
        raise UsageError("a Swarm's tasks are retired by the Swarm itself, not by backout",
                         fix="scale or update the service (docker service update)")

    def processes(self, container_id: str) -> list[str]:
        return self._docker(self._node_of_container(container_id)).processes(container_id)

    def fence_problem(self) -> str | None:
        return "a Swarm retires its tasks itself (backout switches nothing beside them)"

    def fence(self, proxy_ids: Sequence[str], container_ids: Sequence[str], *,
              label: str, addresses: Sequence[str] | None = None) -> str | None:
        return self.fence_problem()

    def unfence(self, proxy_ids: Sequence[str], *, label: str) -> int:
        return 0

    def published_address(self, service: str, port: int) -> str | None:
        spec = self.service(service)
        published = [p for p in ((spec.get("Endpoint") or {}).get("Ports") or
                                 (spec["Spec"].get("EndpointSpec") or {}).get("Ports") or [])
                     if int(p.get("TargetPort", 0)) == port]
        if not published:
            return None
        c = self._running(service)
        node = c.labels[NODE_LABEL]
        addr = next((str((n.get("Status") or {}).get("Addr", "")) for n in self.manager.nodes()
                     if (n.get("Description") or {}).get("Hostname") == node), "")
        return f"{addr}:{published[0]['PublishedPort']}" if addr else None


@dataclass(frozen=True)
class FoundStack:
    name: str
    nodes: tuple[str, ...]  # hostnames of the Swarm's nodes


def find_stack(env: Environment, services: Sequence[str], manager: str | None) -> FoundStack | None:
    """The stack on the Swarm this engine manages that runs most of ``services`` (the
    compose file's), or None: not a Swarm manager, or no such stack (``backout init``)."""
    engine = SwarmEngine(env, "manager", engine_target(manager))
    try:
        state, control = engine.swarm_state()
        if state != "active" or not control:
            return None
        best: tuple[int, str] | None = None
        for stack in engine.stacks():
            names = {short_name(stack, s["Spec"]["Name"]) for s in engine.stack_services(stack)}
            overlap = len(names & set(services))
            if overlap * 2 > len(names) and (best is None or overlap > best[0]):
                best = (overlap, stack)
        if best is None:
            return None
        nodes = tuple(sorted(str((n.get("Description") or {}).get("Hostname", ""))
                             for n in engine.nodes()))
    except (ExternalError, ValueError):
        return None  # no engine, or not one we may ask: a Compose project then
    return FoundStack(best[1], nodes)


class StalledUpdateError(UnhealthyError):
    """A task of an update stays Pending: Swarm will not place it."""


def registry_host(ref: str) -> str | None:
    first = ref.split("/", 1)[0]
    return first if "/" in ref and ("." in first or ":" in first or first == "localhost") \
        else None


def registry_of(info: ImageInfo) -> str | None:
    for ref in (*info.repo_digests, *info.repo_tags):
        host = registry_host(ref)
        if host:
            return host
    return None


def _short(ref: str) -> str:
    digest = image_digest(ref)
    return f"{ref.split('@')[0]}@{digest[:19]}" if digest else ref


def _env_flags(names: Sequence[str]) -> list[str]:
    return [flag for name in names for flag in ("-e", name)]


# mypy proves here that the class implements the protocol (for_config resolves it by name).
_IMPLEMENTS: type[Platform] = SwarmPlatform
