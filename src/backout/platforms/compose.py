"""Docker Compose v2 as a platform: the one module that drives ``docker compose``
(through ``backout.adapters.compose``) for the rest of backout."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from backout.adapters import netfence
from backout.adapters.compose import Compose
from backout.adapters.docker import Docker, container_info, image_info
from backout.adapters.engine_api import EngineAPI
from backout.adapters.engine_api import EventStream as EngineEventStream
from backout.config import Config
from backout.environment import Environment
from backout.errors import (
    BackoutError,
    CommandFailedError,
    DockerUnavailableError,
    ExternalError,
    UnhealthyError,
)
from backout.operations import interrupt
from backout.platforms.base import (
    ContainerInfo,
    EngineEvent,
    EventStream,
    ImageInfo,
    OnJoin,
    Platform,
    ReadyWatch,
    SwitchPair,
    newest_running,
)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"  # "True" on a `docker compose run` container
ONE_OFF_GRACE_SECONDS = 10  # `docker compose stop`'s default
# What wakes the monitor: a health status change, an exit, an OOM kill, a restart.
# (The engine matches "health_status" against "health_status: unhealthy" too.)
WAKING_EVENTS = ("health_status", "die", "oom", "restart")
REPLACE_TIMEOUT = 600.0  # seconds for a replaced service's up and wait together
STACK_TIMEOUT = 900.0  # seconds for a whole stack's up and wait together
BRING_UP_TIMEOUT = 300.0  # seconds for one service brought up (a database after a restore)
READY_POLL = 0.05  # seconds between looks at what up started (Compose's --wait: 0.5)
READY, COMPLETED = "ready", "completed"  # what the stack's wait wants of a service


def wait_conditions(definition: Mapping[str, Any]) -> dict[str, str]:
    """What ``docker compose up --wait`` waits for, service by service: COMPLETED (its
    containers exited 0) for a job another service depends on with
    ``service_completed_successfully`` (an init or migration job), else READY
    (running, and healthy where it has a healthcheck). A service scaled to 0 is left
    out, as is one a ``provider`` runs (no container); so are those of inactive
    profiles (``docker compose config`` has none)."""
    services: Mapping[str, Any] = definition.get("services") or {}
    jobs = {dep for spec in services.values()
            for dep, how in ((spec or {}).get("depends_on") or {}).items()
            if (how or {}).get("condition") == "service_completed_successfully"}
    out = {}
    for name, spec in services.items():
        spec = spec or {}
        if spec.get("provider"):
            continue
        scale = spec.get("scale")
        if scale is None:
            scale = ((spec.get("deploy") or {}).get("replicas"))
        if scale is not None and int(scale) == 0:
            continue
        out[name] = COMPLETED if name in jobs else READY
    return out


def is_one_off(labels: Mapping[str, str]) -> bool:
    return labels.get(ONEOFF_LABEL) == "True"


def volume_users(definition: Mapping[str, Any]) -> dict[str, set[str]]:
    """Each named volume of a compose config, with the services that mount it."""
    users: dict[str, set[str]] = {name: set() for name in definition.get("volumes") or {}}
    for service, spec in (definition.get("services") or {}).items():
        for mount in spec.get("volumes") or []:
            if isinstance(mount, dict) and mount.get("type") == "volume" \
                    and mount.get("source") in users:
                users[mount["source"]].add(service)
    return users


def _not_stopped(left: Sequence[ContainerInfo], what: str = "") -> ExternalError:
    """The error for containers still running after their stop was asked."""
    return ExternalError(f"could not stop {', '.join(c.name for c in left)}{what}",
                         fix=f"docker stop {' '.join(c.name for c in left)}, then run backout "
                             "again")


class ComposePlatform:
    """The stack of one backout.toml, run by Docker Compose on one Docker Engine."""

    kind = "compose"
    switches_itself = False  # backout starts the new container beside the old (issue 14)
    builds_images = True

    def __init__(self, env: Environment, config: Config) -> None:
        self.env = env
        self.config = config
        self.project_dir = config.project_dir
        self.compose = Compose(env, config.project_dir, config.project.compose_files,
                               config.project.name, config.project.env_file)
        self.docker = Docker(env)
        # What the monitor reads every few seconds goes to the Engine API over its unix
        # socket (no CLI process per question, issue 16); None for a tcp:// or ssh://
        # host or another Docker context: then the CLI, as for everything else.
        self.engine = EngineAPI.for_environment(env)
        self._project: str | None = config.project.name
        self._tty: dict[str, bool] = {}  # container ID -> started with a TTY (never changes)

    # -- what the stack is and what runs ---------------------------------------------
    def ping(self) -> str:
        return self.docker.ping() if self.engine is None else self.engine.version()

    def definition(self) -> dict[str, Any]:
        return self.compose.config()

    def uninterpolated_definition(self) -> dict[str, Any]:
        return self.compose.uninterpolated_config()

    def variables(self, names: Sequence[str]) -> dict[str, str]:
        return self.compose.variables(names)

    def project_name(self, definition: Mapping[str, Any] | None = None) -> str:
        data = definition if definition is not None else self.definition()
        return str(data.get("name") or self.project_dir.name)

    def volume_mounts(self, definition: Mapping[str, Any] | None = None) -> dict[str, set[str]]:
        return volume_users(definition if definition is not None else self.definition())

    def definition_problem(self, directory: Path) -> str | None:
        files = self.config.project.compose_files
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            return f"{', '.join(missing)} missing"
        env_file = self.config.project.env_file
        # .env is usually untracked (it holds secrets): use the project's own.
        scratch = Compose(self.env, directory, files, self.config.project.name,
                          str(self.project_dir / env_file)
                          if env_file and (self.project_dir / env_file).is_file() else None)
        result = scratch.run("config", "-q", timeout=60, check=False,
                             what="docker compose config (at the ref)")
        if result.ok:
            return None
        lines = (result.stderr or result.stdout).strip().splitlines()
        return self.env.redact(lines[-1] if lines else "invalid")

    def _project_name(self) -> str:
        # The name Compose labels the containers with; asked of Compose once (the
        # definition's `name:` or its default rule) when backout.toml does not say.
        if self._project is None:
            self._project = self.project_name()
        return self._project

    def _listed(self, services: Sequence[str]) -> list[dict[str, Any]]:
        """The stack's containers (of ``services``) as the engine lists them, by name
        (as `docker compose ps` orders them); one-off `compose run` containers too."""
        assert self.engine is not None
        labels = [f"{PROJECT_LABEL}={self._project_name()}"]
        if len(services) == 1:
            labels.append(f"{SERVICE_LABEL}={services[0]}")
        listed = [c for c in self.engine.list_containers(labels)
                  if not services or (c.get("Labels") or {}).get(SERVICE_LABEL) in services]
        return sorted(listed, key=lambda c: str((c.get("Names") or [""])[0]))

    def containers(self, *services: str) -> list[ContainerInfo]:
        # `docker compose ps -a` and the engine's list both include one-off jobs; the
        # service is its own containers (see Platform.containers).
        return self._inspected(services, one_off=False)

    def one_off_jobs(self, *services: str) -> list[ContainerInfo]:
        """The `docker compose run` containers of ``services`` (any state)."""
        return self._inspected(services, one_off=True)

    def _inspected(self, services: Sequence[str], *, one_off: bool) -> list[ContainerInfo]:
        if self.engine is None:
            return [c for c in self.compose.containers(*services)
                    if is_one_off(c.labels) == one_off]
        # The list has no restart count, healthcheck failing streak or start time: each
        # container is inspected too (concurrently, on the same pooled connections).
        inspected = self.engine.inspect_containers(
            [c["Id"] for c in self._listed(services)
             if is_one_off(c.get("Labels") or {}) == one_off])
        for raw in inspected:
            self._tty[raw["Id"]] = bool((raw.get("Config") or {}).get("Tty"))
        return [container_info(raw) for raw in inspected]

    def running_images(self) -> dict[str, str]:
        return {name: c.image_id for name, c in newest_running(self.containers()).items()}

    def stats(self, container_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        if self.engine is None:
            return self.docker.stats(container_ids)
        return self.engine.stats(container_ids)

    def logs(self, service: str, since: str, *, timestamps: bool = False) -> str:
        if self.engine is None:
            result = self.compose.run("logs", "--no-color", "--no-log-prefix",
                                      *(["--timestamps"] if timestamps else []), "--since",
                                      since, service, check=False, timeout=60)
            return result.stdout + result.stderr
        texts = []
        for listed in self._listed([service]):
            if is_one_off(listed.get("Labels") or {}):
                continue  # a `compose run` (a migration, a shell): not the service's logs
            cid = listed["Id"]
            if cid not in self._tty:
                raw = self.engine.inspect_container(cid)
                if raw is None:
                    continue
                self._tty[cid] = bool((raw.get("Config") or {}).get("Tty"))
            try:
                text = self.engine.logs(cid, since=since, timestamps=timestamps,
                                        tty=self._tty[cid])
            except DockerUnavailableError:
                raise
            except ExternalError as exc:  # one container's logs unreadable: best effort
                self.env.warn(f"logs of {service}: {exc.one_line()}")
                continue
            if text:
                texts.append(text)
        if timestamps and len(texts) > 1:
            # Several containers of the service (a start-first switch): one timeline,
            # as Compose interleaves them (each line starts with its RFC 3339 stamp).
            lines = sorted((line for text in texts for line in text.splitlines(keepends=True)),
                           key=lambda line: line.partition(" ")[0])
            return "".join(lines)
        return "".join(texts)

    def events(self) -> EventStream | None:
        if self.engine is None:
            return None
        return _StackEvents(self.engine.events({
            "type": ["container"], "label": [f"{PROJECT_LABEL}={self._project_name()}"],
            "event": list(WAKING_EVENTS)}))

    # -- images and volumes -----------------------------------------------------------
    def image(self, ref: str) -> ImageInfo | None:
        if self.engine is None:
            return self.docker.inspect_image(ref)
        raw = self.engine.inspect_image(ref)  # 2 ms against the CLI's 40
        return None if raw is None else image_info(raw)

    def tag(self, image_id: str, ref: str) -> None:
        if self.engine is None:
            self.docker.tag(image_id, ref)
        else:
            self.engine.tag_image(image_id, ref)

    def untag(self, ref: str) -> None:
        self.docker.remove_tag(ref)

    def volume_exists(self, name: str) -> bool:
        return self.docker.volume_exists(name)

    # -- changing what runs -----------------------------------------------------------
    def _pinned(self, service: str, image_ref: str, operation_id: int) -> Compose:
        # The compose files are not edited: an override file (kept under the state
        # directory, named after the operation) swaps the one image for this one call.
        override = _write_override(self.config.state_dir, f"op-{operation_id}",
                                   {service: image_ref})
        rel = (str(override.relative_to(self.project_dir))
               if override.is_relative_to(self.project_dir) else str(override))
        return Compose(self.env, self.project_dir, [*self.compose.files, rel],
                       self.compose.project_name, self.compose.env_file)

    def replace_service(self, service: str, image_ref: str, *, operation_id: int) -> None:
        pinned = self._pinned(service, image_ref, operation_id)
        deadline = time.monotonic() + REPLACE_TIMEOUT
        up = ("up", "-d", "--no-deps", "--no-build", "--pull", "never")
        if self.engine is None:  # a remote engine: each look would be a CLI run
            try:
                pinned.run(*up, "--wait", service, timeout=REPLACE_TIMEOUT,
                           what=f"docker compose up {service}")
            except CommandFailedError as exc:
                # the same failure as the local wait's, with the same exit code
                if "is unhealthy" in exc.message or " exited (" in exc.message:
                    raise UnhealthyError(f"{service}: {exc.message}") from exc
                raise
            return
        pinned.run(*up, service, timeout=REPLACE_TIMEOUT, what=f"docker compose up {service}")
        self._wait_ready(service, deadline)

    def _wait_ready(self, service: str, deadline: float) -> None:
        """What ``up --wait`` waits for: every container of the service running, and
        healthy where it has a healthcheck; one exited, dead or unhealthy fails. Asked
        of the engine every READY_POLL instead of at Compose's 500 ms ticks, so a
        rollback goes on when its container is healthy, not up to half a second later.
        A container without a healthcheck must have kept running a while (ReadyWatch).
        ``up -d`` returns with the containers created and started: none means the
        service is scaled to 0 (nothing to wait for, as Compose)."""
        intr = interrupt.current()
        watch = ReadyWatch()
        while True:
            intr.check(f"waiting for {service} to be healthy")
            found = self.containers(service)
            if not found:
                return
            failed = [c for c in found if watch.given_up(c)]
            if failed:
                raise UnhealthyError(f"{service}: container {failed[0].name} is "
                                     f"{watch.describe(failed[0])} after docker compose up")
            now = time.monotonic()
            if all([watch.ready(c, now) for c in found]):  # a list: every one is seen
                return
            if now > deadline:
                states = ", ".join(f"{c.name} {watch.describe(c)}" for c in found)
                raise UnhealthyError(f"{service} did not get healthy in {REPLACE_TIMEOUT:.0f}s "
                                     f"({states})")
            intr.sleep(READY_POLL)

    def converge(self, *, pull: bool) -> None:
        deadline = time.monotonic() + STACK_TIMEOUT
        up = ("up", "-d", "--no-build", *([] if pull else ["--pull", "never"]),
              "--remove-orphans")
        # On a local engine backout waits itself (as for one replaced service): the
        # engine asked every READY_POLL instead of at `--wait`'s 500 ms ticks. A
        # remote engine keeps `--wait` (each look would be a CLI run).
        wait = self.engine is not None
        result = self.compose.run(*up, *([] if wait else ["--wait"]), timeout=STACK_TIMEOUT,
                                  check=False, what="docker compose up")
        if not result.ok:
            lines = result.stderr.strip().splitlines()
            raise UnhealthyError(self.env.redact(lines[-1] if lines else "no output"))
        if wait:
            self._wait_stack(wait_conditions(self.definition()), deadline, STACK_TIMEOUT)

    def _wait_stack(self, conditions: Mapping[str, str], deadline: float,
                    limit: float) -> None:
        """What ``up --wait`` waits for after ``up -d`` (see wait_conditions), the
        same way as _wait_ready: a container exited, dead, unhealthy or crash-looping
        fails (a job: exited with another status than 0); one without a healthcheck
        must keep running a while (ReadyWatch). As Compose, a service is not looked at
        again once it was satisfied. Services of other profiles, scaled to 0 or
        orphaned are not waited for."""
        intr = interrupt.current()
        watch = ReadyWatch()
        pending = dict(conditions)
        while pending:
            intr.check("waiting for the stack to be healthy")
            found: dict[str, list[ContainerInfo]] = {s: [] for s in pending}
            for c in self.containers(*pending):
                found.setdefault(c.service, []).append(c)
            now = time.monotonic()
            for service, condition in sorted(pending.items()):
                mine = found[service]
                if not mine:  # `up -d` returned with every container created and started
                    raise UnhealthyError(f"{service} has no container after docker compose up")
                if condition == COMPLETED:
                    bad = [c for c in mine if c.state == "dead" or watch.crash_looping(c)
                           or (c.state == "exited" and c.exit_code)]
                    if bad:
                        c = bad[0]
                        raise UnhealthyError(
                            f"service {service} didn't complete successfully: {c.name} "
                            + (f"exit {c.exit_code}" if c.state == "exited"
                               else watch.describe(c)))
                    if all(c.state == "exited" for c in mine):
                        del pending[service]
                    continue
                failed = [c for c in mine if watch.given_up(c)]
                if failed:
                    c = failed[0]
                    raise UnhealthyError(
                        f"container {c.name} exited ({c.exit_code})" if c.state == "exited"
                        else f"container {c.name} is {watch.describe(c)}")
                if all([watch.ready(c, now) for c in mine]):  # a list: every one is seen
                    del pending[service]
            if pending and now > deadline:
                states = ", ".join(f"{c.name} {watch.describe(c)}"
                                   for s in sorted(pending) for c in found[s])
                raise UnhealthyError(f"{', '.join(sorted(pending))} did not get healthy within "
                                     f"{limit:.0f}s of docker compose up ({states})")
            if pending:
                intr.sleep(READY_POLL)

    def build(self, services: Sequence[str]) -> None:
        self.compose.run("build", *services, timeout=3600)

    def stop(self, services: Sequence[str], *, timeout: float = 180) -> list[str]:
        if not services:
            return []  # not "every service": no caller means the whole stack
        live = [c for c in self.containers(*services) if c.state in ("running", "restarting")]
        running = sorted({c.service for c in live})
        if running and self.engine is not None and self._engine_stops_as_compose(running):
            self._stop_by_engine(live, timeout)
        elif running:
            self.compose.run("stop", *running, timeout=timeout)
        self._stop_jobs(services)
        return running

    def _engine_stops_as_compose(self, services: Sequence[str]) -> bool:
        """Whether a stop through the engine is all `docker compose stop` would do for
        ``services``: none has a ``pre_stop`` hook (Compose runs it first: a writer
        may flush acknowledged writes there) or its own ``stop_grace_period`` (a wait
        the engine's answer might outlast). The definition is the one already read."""
        try:
            defined = self.definition().get("services") or {}
        except BackoutError:
            return False
        return all(isinstance(defined.get(s), dict) and not defined[s].get("pre_stop")
                   and "stop_grace_period" not in defined[s] for s in services)

    def _stop_by_engine(self, live: Sequence[ContainerInfo], timeout: float) -> None:
        # What `docker compose stop` asks of the engine for these (each container's
        # own stop signal, the engine's 10 s grace), without Compose's start and
        # project load: 0.2-0.3 s of every `rollback db`, whose writers are stopped
        # while nothing serves. All at once: no writer may write once the step is
        # done, and the order among them does not change that.
        engine = self.engine
        assert engine is not None
        engine.concurrently(lambda c: engine.stop_container(c.id, grace_seconds=None,
                                                            timeout=timeout), list(live))
        left = [c for c in self.containers(*sorted({c.service for c in live}))
                if c.state in ("running", "restarting")]
        if left:
            raise _not_stopped(left)

    def _stop_jobs(self, services: Sequence[str]) -> None:
        # `docker compose stop` leaves `docker compose run` containers running: a job
        # of a writer (an import, a backfill) would go on writing into a database
        # being restored. Stopped like the service (SIGTERM, Compose's 10 s grace),
        # and said, since nothing starts a job again. A paused one too: unpaused
        # later, it would write into the restored data.
        jobs = self._live_jobs(services)
        if not jobs:
            return
        ended: set[str] = set()  # gone before the stop came (a --rm job that finished)
        if self.engine is not None:
            engine = self.engine

            def stop(cid: str) -> None:
                try:
                    if not engine.stop_container(cid, grace_seconds=ONE_OFF_GRACE_SECONDS):
                        ended.add(cid)
                except ExternalError as exc:
                    self.env.log_external(f"  {exc.message}")  # the check below decides

            engine.concurrently(stop, [c.id for c in jobs])
        else:
            self.docker.stop([c.id for c in jobs], grace_seconds=ONE_OFF_GRACE_SECONDS)
        left = self._live_jobs(services)
        for job in jobs:
            if job.id in ended:
                self.env.warn(f"{job.name}, a `docker compose run` job of {job.service}, "
                              "had ended")
            elif all(c.id != job.id for c in left):
                self.env.warn(f"stopped {job.name}, a `docker compose run` job of "
                              f"{job.service}: it is not started again")
        if left:
            raise _not_stopped(left, " (`docker compose run` of a service being stopped)")

    def _live_jobs(self, services: Sequence[str]) -> list[ContainerInfo]:
        return [c for c in self.one_off_jobs(*services)
                if c.state in ("running", "restarting", "paused")]

    def start(self, services: Sequence[str]) -> None:
        self.compose.run("up", "-d", "--no-deps", "--no-recreate", *services, timeout=300)

    def bring_up(self, service: str) -> None:
        # As converge: on a local engine `up -d`, then the engine asked every
        # READY_POLL instead of at `--wait`'s 500 ms ticks.
        deadline = time.monotonic() + BRING_UP_TIMEOUT
        wait = self.engine is not None
        self.compose.run("up", "-d", "--no-deps", *([] if wait else ["--wait"]), service,
                         timeout=BRING_UP_TIMEOUT)
        if wait:
            self._wait_stack({service: READY}, deadline, BRING_UP_TIMEOUT)

    # -- switching one service start-first (issue 14) ---------------------------------
    def start_beside(self, service: str, image_ref: str | None, *,
                     operation_id: int, on_join: OnJoin | None = None) -> SwitchPair:
        # Compose itself makes the new container: `up --scale N+1 --no-recreate` adds
        # one more (project-service-<next number>) with Compose's labels, networks and
        # aliases, from the same override file a stop-first rollback uses, and leaves
        # the running one alone. No label of ours: it would change the config hash and
        # a later `docker compose up` would recreate the container. The new one is
        # told apart by its image, so a repeated call finds it.
        compose = self._pinned(service, image_ref, operation_id) if image_ref else self.compose
        target = self._target_image(service, image_ref)
        current = self.containers(service)
        mine = [c for c in current if c.image_id == target and c.state != "exited"]
        old = tuple(c.id for c in current if c.image_id != target)
        told: set[str] = set()
        if not mine:
            with self._joins(service, {c.id for c in current}, on_join, told):
                compose.run("up", "-d", "--no-deps", "--no-recreate", "--no-build", "--pull",
                            "never", "--scale", f"{service}={len(current) + 1}", service,
                            timeout=300, what=f"docker compose up --scale ({service} beside)")
            mine = [c for c in self.containers(service)
                    if c.image_id == target and c.id not in old]
        if not mine:
            raise UnhealthyError(f"Compose started no new container of {service}")
        new = mine[0]
        if on_join is not None and new.id not in told:
            # no event seen (or no engine to watch; or found from an earlier run): late
            on_join(new.id, self._container_addresses(new.id))
        return SwitchPair(new=new.id, old=old, started_at=_epoch(new.started_at))

    @contextlib.contextmanager
    def _joins(self, service: str, known: set[str], on_join: OnJoin | None,
               told: set[str]) -> Iterator[None]:
        """While the body starts containers: ``on_join`` for each new container of
        ``service`` the moment the engine connects it to a network (the engine's
        event; the address from the network's inspect), as a rule before its process
        has started: Docker's DNS names it from then on. The containers told go into
        ``told``; one the engine does not describe is told late, by the caller."""
        if on_join is None or self.engine is None:
            yield
            return
        engine = self.engine
        try:
            stream = engine.events({"type": ["network"], "event": ["connect"]})
        except BackoutError as exc:  # the caller is told late instead
            self.env.log_external(f"  no event stream: {exc.message}")
            yield
            return
        errors: list[BaseException] = []
        others: set[str] = set(known)

        def watch() -> None:
            for event in stream:
                actor = event.get("Actor") or {}
                cid = str((actor.get("Attributes") or {}).get("container") or "")
                if not cid or cid in others:
                    continue
                try:
                    if cid not in {c["Id"] for c in self._listed([service])
                                   if not is_one_off(c.get("Labels") or {})}:
                        others.add(cid)  # another service's, or a one-off job
                        continue
                    addresses = engine.network_addresses(str(actor.get("ID") or ""), cid)
                except BackoutError as exc:
                    # the engine did not answer: the caller is told late instead
                    self.env.log_external(f"  no word of the joining container: {exc.message}")
                    return
                if not addresses:
                    continue  # not in the network's list yet: told on another, or late
                try:
                    told.add(cid)
                    on_join(cid, addresses)  # one call per network it joins
                except BaseException as exc:  # raised again in the caller's thread
                    errors.append(exc)
                    return

        thread = threading.Thread(target=watch, name="backout-joins", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stream.close()
            # no timeout: an on_join still running (a fence going up, its commands
            # bounded by their own timeouts) must be done before the caller goes on
            thread.join()
        if errors:
            raise errors[0]

    def _container_addresses(self, container_id: str) -> list[str]:
        if self.engine is None:
            return self.docker.addresses(container_id)
        raw = self.engine.inspect_container(container_id)
        return _addresses(raw) if raw is not None else []

    def _target_image(self, service: str, image_ref: str | None) -> str:
        if image_ref is None:
            data = self.definition()
            spec = (data.get("services") or {}).get(service) or {}
            image_ref = str(spec.get("image") or f"{self.project_name(data)}-{service}")
        info = self.docker.inspect_image(image_ref)
        if info is None:
            raise UnhealthyError(f"no image {image_ref} on this host for {service}")
        return info.id

    def container_address(self, container_id: str, port: int) -> str | None:
        addresses = self.docker.addresses(container_id)
        return f"{addresses[0]}:{port}" if addresses else None

    def retire(self, container_ids: Sequence[str], *, grace_seconds: float,
               after_stop: Callable[[], object] | None = None) -> list[str]:
        if self.engine is not None:
            # The Engine API answers the stop once the container has left its networks
            # (its address is gone from Docker's DNS): `after_stop` (the proxies'
            # reload) runs a CLI start-up sooner than after `docker stop`.
            engine = self.engine

            def stop(cid: str) -> bool:
                try:
                    return engine.stop_container(cid, grace_seconds=grace_seconds)
                except ExternalError as exc:
                    # as `docker stop` failing below: the forced removal still ends it
                    self.env.log_external(f"  {exc.message}")
                    return True

            ids = list(container_ids)
            stopped = engine.concurrently(stop, ids)
            existing = [cid for cid, found in zip(ids, stopped, strict=True) if found]
            if after_stop is not None:
                after_stop()
            for cid in existing:
                engine.remove_container(cid)
            return existing
        existing = self.docker.existing(container_ids)
        if existing:
            self.docker.stop(existing, grace_seconds=grace_seconds)
        if after_stop is not None:
            after_stop()
        if existing:
            self.docker.remove(existing)
        return existing

    def processes(self, container_id: str) -> list[str]:
        if self.engine is not None:
            return self.engine.processes(container_id)
        return self.docker.processes(container_id)

    def fence_problem(self) -> str | None:
        if self.engine is None:
            return "the Docker Engine is not on this host (its containers' network " \
                   "namespaces are out of reach)"
        return netfence.unavailable()

    def fence(self, proxy_ids: Sequence[str], container_ids: Sequence[str], *,
              label: str, addresses: Sequence[str] | None = None) -> str | None:
        why = self.fence_problem()
        if why is not None:
            return why
        assert self.engine is not None
        if addresses is None:
            addresses = [a for raw in self.engine.inspect_containers(list(container_ids))
                         for a in _addresses(raw)]
        addresses = sorted(set(addresses))
        if not addresses:
            return "the container to fence has no address (left)"
        if any(":" in a for a in addresses):
            # nginx may reach it over IPv6 too; only IPv4 is fenced (ip6tables is not
            # on every host): no fence rather than half of one
            return "the container to fence has an IPv6 address (only IPv4 is fenced)"
        namespaces, refused = self._namespaces(proxy_ids)
        if refused:  # every proxy looked at before the first rule: nothing changed
            return refused[0]
        if not namespaces:
            return "no proxy container in front is running"
        for pid in namespaces:
            netfence.put_up(self.env, pid, addresses, label)
        return None

    def unfence(self, proxy_ids: Sequence[str], *, label: str) -> int:
        why = self.fence_problem()
        if why is not None:
            raise ExternalError(f"cannot take fences down: {why}")
        # a namespace fence() refused never got a rule
        namespaces, _refused = self._namespaces(proxy_ids)
        return sum(netfence.take_down(self.env, pid, label) for pid in namespaces)

    def _namespaces(self, container_ids: Sequence[str]) -> tuple[list[int], list[str]]:
        """The host's process IDs of these running containers' main processes, each in
        a network namespace of its own; and why others are not (the engine's process
        IDs are not this host's: an engine in a VM, backout in a container; or a proxy
        shares the host's network namespace, network_mode: host): a rule there would
        land elsewhere than in front of the stack."""
        assert self.engine is not None
        out, refused = [], []
        for raw in self.engine.inspect_containers(list(container_ids)):
            pid = int((raw.get("State") or {}).get("Pid") or 0)
            if pid <= 0:
                continue  # not running: no namespace, no rule
            why = netfence.foreign(pid, str(raw.get("Id") or ""))
            if why is None:
                out.append(pid)
            else:
                refused.append(f"{str(raw.get('Name') or '').lstrip('/')}: {why}")
        return out, refused

    # -- reaching into a service ------------------------------------------------------
    def exec_argv(self, service: str, inner: Sequence[str],
                  env_names: Sequence[str] = ()) -> list[str]:
        target = self._exec_target(service)
        if target is None:
            return self.compose.argv("exec", "-T", *_env_flags(env_names), service, *inner)
        # The same exec into the container `compose exec` picks, without Compose loading
        # the project first: 0.1 s of each of the seventeen redis-cli calls of a Redis
        # backup (issue 16).
        return ["docker", "exec", "-i", *_env_flags(env_names), target, *inner]

    def _exec_target(self, service: str) -> str | None:
        """The ID of the service's container number 1 when it is running (what `docker
        compose exec` runs in); None (Compose decides and words any error) otherwise,
        or without the Engine API."""
        listed = self._number_one(service)
        return None if listed is None else str(listed["Id"])

    def _number_one(self, service: str) -> dict[str, Any] | None:
        """The engine's listing of the service's container number 1 when it is running;
        None otherwise, or without the Engine API."""
        if self.engine is None:
            return None
        for listed in self._listed([service]):
            labels = listed.get("Labels") or {}
            if is_one_off(labels) or labels.get(NUMBER_LABEL) != "1":
                continue
            return listed if listed.get("State") == "running" else None
        return None

    def beside_argv(self, service: str, inner: Sequence[str], env_names: Sequence[str] = (),
                    *, mount: tuple[Path, str], label: str) -> list[str] | None:
        # Only with the engine on this machine's kernel (its local socket, Linux, the
        # kernel it reports ours): the FIFO bound in must be the one backout reads, not
        # a namesake in a VM's file system (Docker Desktop's, behind a local socket),
        # whose client would wait on it for ever. As backout's own user: the directory
        # is its alone (a rootless engine maps that user elsewhere: the caller's other
        # way). A comma or a quote in the directory is left to that way too (--mount's
        # value is a CSV field, not written quoted here).
        local = sys.platform == "linux" and not set(f"{mount[0]}{mount[1]}") & set(',"')
        listed = self._number_one(service) if local else None
        if listed is None or not listed.get("ImageID"):
            return None
        assert self.engine is not None
        if self.engine.kernel() != os.uname().release:
            return None
        # One left by a run killed before its client opened what it writes into waits
        # on that open for ever (no reader comes): gone before another starts, with the
        # anonymous volumes the image declares (a database image's data directory).
        for left in self.engine.list_containers([label]):
            with contextlib.suppress(ExternalError):  # one that will not go harms no other
                self.engine.remove_container(str(left["Id"]), volumes=True)
        return ["docker", "run", "--rm", "--network", f"container:{listed['Id']}",
                "--user", f"{os.getuid()}:{os.getgid()}",
                "--mount", f"type=bind,src={mount[0]},dst={mount[1]}",
                "--label", label, *_env_flags(env_names), "--entrypoint", inner[0],
                str(listed["ImageID"]), *inner[1:]]

    def container_exec_argv(self, container_id: str, inner: Sequence[str],
                            env_names: Sequence[str] = ()) -> list[str]:
        return ["docker", "exec", "-i", *_env_flags(env_names), container_id, *inner]

    def one_off_argv(self, service: str, *, entrypoint: str, args: Sequence[str],
                     label: str) -> list[str]:
        # The service's own container's mounts (--volumes-from), anonymous volumes
        # included: `compose run` would give a one-off fresh anonymous volumes, and a
        # restore into those would miss the data of a service that declares none of
        # its own (a public compose file's `redis` with the image's VOLUME /data).
        existing = self.containers(service)
        if existing:
            newest = max(existing, key=lambda c: c.started_at)
            return ["docker", "run", "--rm", "-i", "--label", label, "--volumes-from", newest.id,
                    "--entrypoint", entrypoint, newest.image_id, *args]
        return self.compose.argv("run", "--rm", "--no-deps", "-T", "--label", label,
                                 "--entrypoint", entrypoint, service, *args)

    def published_address(self, service: str, port: int) -> str | None:
        if self.engine is None:
            result = self.compose.run("port", service, str(port), check=False,
                                      what="docker compose port")
            return result.stdout.strip() if result.ok else None
        # The engine's list carries the bindings `docker compose port` reads (its first
        # running container's first TCP binding of the port), without a Compose process
        # (0.1-0.3 s on a verify's critical path).
        for listed in self._listed([service]):
            if is_one_off(listed.get("Labels") or {}) or listed.get("State") != "running":
                continue
            for binding in listed.get("Ports") or []:
                if binding.get("PrivatePort") == port and binding.get("Type", "tcp") == "tcp" \
                        and binding.get("PublicPort"):
                    ip = str(binding.get("IP") or "0.0.0.0")
                    host = f"[{ip}]" if ":" in ip else ip
                    return f"{host}:{binding['PublicPort']}"
            return None
        return None


class _StackEvents:
    """The engine's event stream of the stack's containers, as EngineEvents."""

    def __init__(self, stream: EngineEventStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[EngineEvent]:
        for raw in self._stream:
            action = str(raw.get("Action") or raw.get("status") or "")
            if raw.get("Type", "container") != "container" \
                    or action.split(":")[0] not in WAKING_EVENTS:
                continue
            actor = raw.get("Actor") or {}
            attributes = actor.get("Attributes") or {}
            stamp = raw.get("timeNano")
            yield EngineEvent(service=str(attributes.get(SERVICE_LABEL, "")), action=action,
                              container_id=str(actor.get("ID") or raw.get("id") or ""),
                              time=int(stamp) / 1e9 if stamp else float(raw.get("time") or 0))

    def close(self) -> None:
        self._stream.close()


def _epoch(docker_time: str) -> float:
    """Docker's RFC 3339 time (nanoseconds) as epoch seconds; now when unreadable."""
    try:
        return datetime.fromisoformat(docker_time[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return time.time()


def _addresses(inspected: Mapping[str, Any]) -> list[str]:
    """A container's IPv4 and IPv6 addresses on all its networks, from its inspect."""
    networks = (inspected.get("NetworkSettings") or {}).get("Networks") or {}
    return [str(a) for n in networks.values() for a in (n.get("IPAddress"),
                                                        n.get("GlobalIPv6Address")) if a]


def _env_flags(names: Sequence[str]) -> list[str]:
    # ``-e NAME`` without a value: the docker CLI copies it from our environment.
    return [flag for name in names for flag in ("-e", name)]


def _write_override(state_dir: Path, name: str, images: dict[str, str]) -> Path:
    """A compose override file that only swaps images; compose files stay untouched."""
    directory = state_dir / "overrides"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.yml"
    # JSON is YAML: no YAML library needed.
    doc = {"services": {svc: {"image": ref} for svc, ref in images.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path


# mypy proves here that the class implements the protocol (for_config resolves it by name).
_IMPLEMENTS: type[Platform] = ComposePlatform
