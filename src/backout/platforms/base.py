"""The platform seam: what backout asks of "the thing that runs the stack".

Docker Compose is the first implementation (``backout.platforms.compose``); a
second one (Docker Swarm) implements the same protocol. rollback, backup, deploy,
verify, releases, monitor and the database engines call this interface, never a
platform's own adapter. The value types are plain data, so this module imports
nothing of backout (adapters fill them in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    service: str
    state: str  # running, exited, restarting, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    image: str  # the image reference the stack definition asked for
    image_id: str  # sha256:... actually running
    restart_count: int
    started_at: str
    labels: dict[str, str] = field(default_factory=dict)
    failing_streak: int = 0  # consecutive failed healthchecks (Docker counts them)
    exit_code: int = 0  # of its last run, once exited

    @property
    def ready(self) -> bool:
        """Running, and healthy where it has a healthcheck (what `up --wait` waits for)."""
        return self.state == "running" and self.health in (None, "healthy")

    @property
    def failed(self) -> bool:
        """Exited, dead or unhealthy: what a wait for it to get ready gives up on."""
        return self.state in ("exited", "dead") or self.health == "unhealthy"


# Seconds a container without a healthcheck must keep running before a wait for it
# takes it as ready: Compose's `up --wait` first looks 500 ms after the start, so an
# image that dies at once fails there; a wait that looks sooner must not pass it.
RUNNING_AT_LEAST = 0.5


# Restarts (under a restart policy) a wait sees before it gives up on a container:
# a crash loop is never "exited" and would hold the wait to its deadline (minutes at
# 3 a.m.). Docker doubles its delay between restarts from 0.1 s, so 10 come within
# about 100 s; an app that restarts until its database answers stops well before.
CRASH_LOOP_RESTARTS = 10


class ReadyWatch:
    """Whether a container a wait keeps looking at has become ready: running and
    healthy where it has a healthcheck; without one, running for RUNNING_AT_LEAST
    since it was first seen running with the same start time and restart count (a
    restart starts the while again). Fed one look at a time, with the time of it.
    ``given_up`` says when to stop waiting for it."""

    def __init__(self) -> None:
        self._running_since: dict[str, tuple[float, str, int]] = {}  # id -> (seen, start, restarts)
        self._first_restarts: dict[str, int] = {}  # id -> its restart count when first seen

    def ready(self, container: ContainerInfo, now: float) -> bool:
        if container.state == "running":
            run = (container.started_at, container.restart_count)
            seen = self._running_since.get(container.id)
            if seen is None or seen[1:] != run:
                self._running_since[container.id] = (now, *run)
        if not container.ready:
            return False
        return (container.health is not None
                or now - self._running_since[container.id][0] >= RUNNING_AT_LEAST)

    def restarts(self, container: ContainerInfo) -> int:
        """How often the container restarted since this wait first saw it."""
        first = self._first_restarts.setdefault(container.id, container.restart_count)
        return container.restart_count - first

    def crash_looping(self, container: ContainerInfo) -> bool:
        return self.restarts(container) >= CRASH_LOOP_RESTARTS

    def given_up(self, container: ContainerInfo) -> bool:
        """Exited, dead or unhealthy, or restarted CRASH_LOOP_RESTARTS times."""
        return container.failed or self.crash_looping(container)

    def describe(self, container: ContainerInfo) -> str:
        """``state/health``, and the restarts this wait saw, for a message."""
        n = self.restarts(container)
        return f"{container.state}/{container.health}" + (f" after {n} restarts" if n else "")


def started_epoch(container: ContainerInfo) -> float:
    """When the container last started, in epoch seconds (0 when unreadable). Docker's
    RFC 3339 time trims trailing zeros of its nanoseconds: compared as text, "…:00Z"
    would sort after "…:00.3Z"."""
    text = container.started_at
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def newest_running(containers: Sequence[ContainerInfo]) -> dict[str, ContainerInfo]:
    """Each service's most recently started running container: of a start-first
    switch's two, the one it is moving to. What runs now, for every reader alike (the
    monitor, the release it records, the target a rollback picks)."""
    out: dict[str, ContainerInfo] = {}
    for c in containers:
        if c.state == "running" and (c.service not in out
                                     or started_epoch(c) > started_epoch(out[c.service])):
            out[c.service] = c
    return out


@dataclass(frozen=True)
class ImageInfo:
    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: str
    labels: dict[str, str]


# start_beside's word of the new container: (its ID, its addresses) -- see there
OnJoin = Callable[[str, Sequence[str]], object]


@dataclass(frozen=True)
class SwitchPair:
    """A start-first switch of one service: the container started beside the running
    one(s), and those (``old``, empty when the service already ran the target)."""

    new: str
    old: tuple[str, ...]
    started_at: float  # epoch seconds when the new container joined the network


@dataclass(frozen=True)
class EngineEvent:
    """A change the engine reports about one container of the stack."""

    service: str
    action: str  # die, oom, restart, "health_status: unhealthy", ...
    container_id: str
    time: float  # epoch seconds, as the engine stamped it


class EventStream(Protocol):
    """Events as they happen, read by one thread; ``close()`` from another thread
    ends an iteration waiting for the next one."""

    def __iter__(self) -> Iterator[EngineEvent]: ...

    def close(self) -> None: ...


class Platform(Protocol):
    """One stack on one platform. Every method asks the platform: nothing is cached
    about what runs (the platform's own labels are the truth)."""

    kind: str  # "compose": the key in backout.platforms.PLATFORMS
    project_dir: Path
    # True: the platform itself replaces a service's containers in the order its
    # definition asks (Swarm's update_config.order, with its health gating), so a
    # switch is one replace_service/converge and backout plans no start_beside steps.
    switches_itself: bool
    # False: the platform runs images from a registry and builds none (Swarm's stack
    # deploy ignores build sections); a deploy's build step then builds nothing.
    builds_images: bool

    # -- what the stack is and what runs ---------------------------------------------
    def ping(self) -> str:
        """The engine's version; ``DockerUnavailableError`` when it does not answer."""
        ...

    def definition(self) -> dict[str, Any]:
        """The resolved stack definition (services, volumes, ...). It may hold
        interpolated secrets: never store it without redaction."""
        ...

    def uninterpolated_definition(self) -> dict[str, Any]:
        """The definition as written, ``${VAR}`` references kept (no .env value in it):
        where a credential comes from, by name."""
        ...

    def variables(self, names: Sequence[str]) -> dict[str, str]:
        """The values the platform itself gives these variables when it starts the
        stack (Compose: the .env file and the environment, by Compose's own rules), for
        those set. Secrets: callers redact them and never store them."""
        ...

    def project_name(self, definition: Mapping[str, Any] | None = None) -> str:
        """The stack's name (the definition's, else the platform's default rule)."""
        ...

    def volume_mounts(self, definition: Mapping[str, Any] | None = None) -> dict[str, set[str]]:
        """Each named volume of the definition, with the services that mount it."""
        ...

    def definition_problem(self, directory: Path) -> str | None:
        """Whether the stack definition as found in ``directory`` (another checkout)
        is valid; the problem in one line, or None."""
        ...

    def containers(self, *services: str) -> list[ContainerInfo]:
        """Every container of the stack's services (or of ``services``), in any state:
        the service's own (replicas, a switch's second one), never a one-off job that
        runs with the service's definition (`docker compose run`): a job that exited
        is not the service down, nor a running one a replica or the running release."""
        ...

    def running_images(self) -> dict[str, str]:
        """service -> image ID of its running container: what runs now."""
        ...

    def stats(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``memory_percent`` and ``cpu_percent`` per container ID."""
        ...

    def logs(self, service: str, since: str, *, timestamps: bool = False) -> str:
        """The service's log lines since ``since`` (best effort: empty when unreadable)."""
        ...

    def events(self) -> EventStream | None:
        """From now on, the containers' health changes, exits, OOM kills and restarts
        as the engine reports them (the monitor evaluates at once instead of at its next
        interval); None when the platform cannot report them (the monitor then keeps to
        its interval). ``DockerUnavailableError`` when the engine does not answer."""
        ...

    # -- images and volumes -----------------------------------------------------------
    def image(self, ref: str) -> ImageInfo | None:
        """The image ``ref`` names (an ID or a reference), if it is on this host."""
        ...

    def tag(self, image_id: str, ref: str) -> None: ...

    def untag(self, ref: str) -> None:
        """Remove one tag (the image stays while another tag or a container uses it)."""
        ...

    def volume_exists(self, name: str) -> bool: ...

    # -- changing what runs -----------------------------------------------------------
    def replace_service(self, service: str, image_ref: str, *, operation_id: int) -> None:
        """Run ``service`` from ``image_ref`` (no build, no pull), touching no other
        service, and wait until it is healthy. The stack definition is not edited."""
        ...

    def converge(self, *, pull: bool) -> None:
        """Bring the whole stack to its (checked-out) definition without building,
        removing orphans, and wait until it is healthy; ``pull=False`` never pulls.
        ``UnhealthyError`` (the platform's last word) when it does not come up."""
        ...

    def build(self, services: Sequence[str]) -> None: ...

    def stop(self, services: Sequence[str], *, timeout: float = 180) -> list[str]:
        """Stop those of ``services`` that run, and their running one-off jobs (a job
        writes like the service: it must stop too, and is not started again); return
        the services stopped (sorted). No services: nothing is stopped."""
        ...

    def start(self, services: Sequence[str]) -> None:
        """Start stopped services again as they were (no recreation, no dependencies)."""
        ...

    def bring_up(self, service: str) -> None:
        """Start one service (created or recreated as its definition says, no
        dependencies) and wait until it is healthy."""
        ...

    # -- switching one service start-first (issue 14) ---------------------------------
    def start_beside(self, service: str, image_ref: str | None, *,
                     operation_id: int, on_join: OnJoin | None = None) -> SwitchPair:
        """Start one more container of ``service`` from ``image_ref`` (None: the image
        the definition names) beside the running one, as the platform would have made
        it (name, labels, networks, aliases), touching no other container and not
        waiting for it. Repeated (a resumed switch), it finds the container it
        started instead of starting another. ``on_join(container, addresses)``: the
        new container's addresses as soon as the platform gives them out, as a rule
        before its process has started where the platform can tell (Compose: the engine's network
        events), else once it is started; from another thread."""
        ...

    def container_address(self, container_id: str, port: int) -> str | None:
        """``host:port`` where this one container's ``port`` answers from this host."""
        ...

    def retire(self, container_ids: Sequence[str], *, grace_seconds: float,
               after_stop: Callable[[], object] | None = None) -> list[str]:
        """Stop these containers, each given ``grace_seconds`` to finish the requests
        it is serving, call ``after_stop`` (as soon as they are stopped: a proxy is
        told before anything else happens), then remove them; returns those that
        existed."""
        ...

    def processes(self, container_id: str) -> list[str]:
        """The command lines of the processes running in one container (as the host
        sees them: no tool is needed inside it)."""
        ...

    def fence_problem(self) -> str | None:
        """Why this platform cannot fence (below) from this process, or None."""
        ...

    def fence(self, proxy_ids: Sequence[str], container_ids: Sequence[str], *,
              label: str, addresses: Sequence[str] | None = None) -> str | None:
        """From the proxy containers ``proxy_ids``, every new TCP connection to the
        addresses of ``container_ids`` (``addresses`` when the caller has them: a
        starting container's, from ``on_join``) fails at once (rules tagged ``label``),
        so a proxy passes the request to another address of its upstream: instead of
        waiting out its connect timeout once those addresses are gone, or instead of
        reaching a container not ready yet. None once fenced; why not when there was
        nothing to fence (nothing changed); raises when a rule could not be put up
        (some may be: ``unfence`` takes them down)."""
        ...

    def unfence(self, proxy_ids: Sequence[str], *, label: str) -> int:
        """Take down every rule tagged ``label`` in those proxy containers; how many.
        Raises when it cannot look (never a silent 0 for rules it could not see)."""
        ...

    # -- reaching into a service ------------------------------------------------------
    def exec_argv(self, service: str, inner: Sequence[str],
                  env_names: Sequence[str] = ()) -> list[str]:
        """argv running ``inner`` in the service's container, stdin attached, no TTY;
        ``env_names`` are copied from the caller's environment (values never in argv)."""
        ...

    def container_exec_argv(self, container_id: str, inner: Sequence[str],
                            env_names: Sequence[str] = ()) -> list[str]:
        """The same in one container by ID (a throwaway restore target)."""
        ...

    def one_off_argv(self, service: str, *, entrypoint: str, args: Sequence[str],
                     label: str) -> list[str]:
        """argv of a labelled one-off container of ``service`` (the volumes of its
        container, anonymous ones included; no dependencies; removed when it ends)
        running ``entrypoint args``."""
        ...

    def beside_argv(self, service: str, inner: Sequence[str], env_names: Sequence[str] = (),
                    *, mount: tuple[Path, str], label: str) -> list[str] | None:
        """argv running ``inner`` in a container of its own beside the service's running
        container: from its image, in its network namespace (the service's localhost),
        as backout's own user, the host directory ``mount[0]`` bound at ``mount[1]``,
        labelled ``label``, removed when it ends (and any left with that label by an
        earlier run, before). None where the platform cannot give this process such
        a container (no engine on this machine's kernel, the service not running)."""
        ...

    def published_address(self, service: str, port: int) -> str | None:
        """``host:port`` where the service's ``port`` is published, or None."""
        ...
