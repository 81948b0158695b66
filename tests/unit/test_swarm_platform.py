"""The Swarm platform's reading of tasks and its waits, in-process: Swarm's objects as
the Engine API returns them (trimmed), a scripted cluster, a fake clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from backout.config.model import Config, PlatformConfig, ProjectConfig
from backout.environment import Environment
from backout.errors import NotFoundError, UnhealthyError
from backout.platforms import swarm
from backout.platforms.base import ContainerInfo, ImageInfo
from backout.platforms.swarm import (
    Convergence,
    SwarmPlatform,
    TaskView,
    assess,
    desired_replicas,
    image_digest,
    registry_host,
    slot_failures,
    stall_explanation,
    task_view,
)

GOOD = "sha256:" + "a" * 64
BAD = "sha256:" + "b" * 64
REG = "10.0.0.2:5000"


def service_spec(name: str = "shop_web", replicas: int = 2, *, host_port: int | None = None,
                 order: str = "start-first", image: str = f"{REG}/web:1@{BAD}") -> dict[str, Any]:
    ports = [{"TargetPort": 8080, "PublishedPort": host_port, "PublishMode": "host"}] \
        if host_port else []
    return {"ID": "svc1", "Spec": {"Name": name, "Mode": {"Replicated": {"Replicas": replicas}},
                                   "UpdateConfig": {"Order": order},
                                   "EndpointSpec": {"Ports": ports},
                                   "TaskTemplate": {"ContainerSpec": {"Image": image}},
                                   "Labels": {}}}


def task(tid: str, state: str = "running", *, digest: str = GOOD, slot: int = 1,
         node: str = "bolab1", err: str = "", image: str | None = None) -> TaskView:
    return TaskView(id=tid, service="web", slot=slot, node=node, state=state, since="",
                    error=err, image=image or f"{REG}/web:1@{digest}", container_id=f"c-{tid}")


def container(tid: str, *, health: str | None = "healthy", image_id: str = "sha256:img1",
              state: str = "running") -> ContainerInfo:
    return ContainerInfo(id=f"c-{tid}", name=tid, service="", state=state, health=health,
                         image="", image_id=image_id, restart_count=0, started_at="")


def judge(tasks: Sequence[TaskView], containers: Sequence[ContainerInfo], *, now: float = 0,
          pending_since: dict[str, float] | None = None, replicas: int = 2,
          spec: dict[str, Any] | None = None) -> Convergence:
    return assess(spec or service_spec(replicas=replicas, image=f"{REG}/web:1@{GOOD}"), replicas, tasks,
                  {c.id: c for c in containers}, digest=GOOD, image_id="sha256:img1", now=now,
                  stall_seconds=30, pending_since=pending_since or {})


def test_a_task_of_an_earlier_spec_with_the_same_digest_is_not_converged() -> None:
    # the rollback pinned a retained reference of the same image: Swarm replaces the tasks
    both = [task("t1"), task("t2", slot=2)]
    retained = service_spec(image=f"{REG}/backout-retained/web:r1@{GOOD}")
    stale = judge(both, [container("t1"), container("t2")], spec=retained)
    assert not stale.done and "2 task(s) of an earlier spec" in stale.problem
    moved = [dataclasses.replace(t, image=f"{REG}/backout-retained/web:r1@{GOOD}") for t in both]
    assert judge(moved, [container("t1"), container("t2")], spec=retained).done


def test_converged_needs_every_replica_running_healthy_on_the_target() -> None:
    both = [task("t1"), task("t2", slot=2)]
    assert judge(both, [container("t1"), container("t2")]).done
    assert "1 of 2 tasks" in judge(both[:1], [container("t1")]).problem
    off = judge([task("t1"), task("t2", digest=BAD, slot=2)], [container("t1"), container("t2")])
    assert not off.done and "not on sha256:aaaa" in off.problem
    starting = judge(both, [container("t1"), container("t2", health="starting")])
    assert not starting.done and "running/starting" in starting.problem
    no_health = judge(both, [container("t1", health=None), container("t2", health=None)])
    assert no_health.done  # a service without a healthcheck counts when running
    other = judge(both, [container("t1"), container("t2", image_id="sha256:other")])
    assert not other.done and "runs image" in other.problem
    unplaced = judge([task("t1"), task("t2", state="preparing", slot=2)], [container("t1")])
    assert not unplaced.done and "is preparing" in unplaced.problem


def test_a_task_pending_past_the_deadline_is_a_stall_with_its_reason() -> None:
    tasks = [task("t1"), task("t2", slot=2), task("t3", state="pending", slot=2,
                                                  err="no suitable node (host-mode port)")]
    early = judge(tasks, [container("t1"), container("t2")], now=29, pending_since={"t3": 0})
    assert not early.done and not early.stalled
    late = judge(tasks, [container("t1"), container("t2")], now=30, pending_since={"t3": 0})
    assert late.stalled and "pending for 30s: no suitable node (host-mode port)" in late.problem


def test_a_stall_is_explained_by_host_mode_ports_and_start_first() -> None:
    assert "host mode" in stall_explanation(service_spec(host_port=19881))
    assert "stop-first" in stall_explanation(service_spec(host_port=19881))
    assert "host mode" not in stall_explanation(service_spec(host_port=19881, order="stop-first"))
    assert "host mode" not in stall_explanation(service_spec())


def test_reading_swarms_objects() -> None:
    raw = {"ID": "t9", "ServiceID": "svc1", "NodeID": "n2", "Slot": 2, "DesiredState": "running",
           "Status": {"State": "running", "Timestamp": "2026-12-03T01:00:00Z",
                      "ContainerStatus": {"ContainerID": "cid9"}},
           "Spec": {"ContainerSpec": {"Image": f"{REG}/web:1@{GOOD}"}}}
    view = task_view("shop", raw, {"svc1": "shop_web"}, {"n2": "bolab2"})
    assert (view.service, view.node, view.slot, view.container_id, view.state) == \
        ("web", "bolab2", 2, "cid9", "running")
    assert image_digest(view.image) == GOOD and image_digest(f"{REG}/web:1") is None
    assert desired_replicas(service_spec(replicas=3), 2) == 3
    assert desired_replicas({"Spec": {"Mode": {"Global": {}}}}, 2) == 2
    history = [raw, {**raw, "ID": "t8", "DesiredState": "shutdown", "Status": {"State": "failed"}},
               {**raw, "ID": "t7", "DesiredState": "shutdown", "Status": {"State": "rejected"}},
               {**raw, "ID": "t6", "DesiredState": "shutdown", "Status": {"State": "shutdown"}},
               {**raw, "ID": "t5", "Slot": 1, "Status": {"State": "failed"}}]
    # a crashed task is replaced by a new one: the slot's failures are its restarts
    assert slot_failures(history) == {("svc1", "slot 2"): 2, ("svc1", "slot 1"): 1}
    assert slot_failures([{**raw, "Slot": None, "Status": {"State": "failed"}}]) == \
        {("svc1", "node n2"): 1}
    assert registry_host(f"{REG}/web@{GOOD}") == REG
    assert registry_host(f"library/web@{GOOD}") is None and registry_host("web:1") is None


# -- the platform's waits, against a scripted cluster -----------------------------
class Manager:
    """Stands in for the manager's SwarmEngine: records updates, and an ``--image``
    changes the spec as Swarm's would."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.updates: list[tuple[str, ...]] = []
        self.target = ["-H", "unix:///m.sock"]
        self.spec = spec

    def update_service(self, service: str, *flags: str, timeout: float = 120) -> None:
        self.updates.append((service, *flags))
        if "--image" in flags:
            image = flags[flags.index("--image") + 1]
            self.spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] = image


class Scripted(SwarmPlatform):
    """A Swarm whose task views come from a script (one per poll; the last repeats)."""

    def __init__(self, tmp: Path, views: list[list[TaskView]], spec: dict[str, Any],
                 stall: int = 30) -> None:
        config = Config(path=tmp / "backout.toml", project_dir=tmp,
                        project=ProjectConfig(name="shop"),
                        platform=PlatformConfig(kind="swarm", stall_seconds=stall,
                                                converge_seconds=600))
        self.now = 0.0
        super().__init__(Environment(project_dir=tmp), config, sleep=self._tick,
                         clock=lambda: self.now)
        self.manager = Manager(spec)  # type: ignore[assignment]
        self.views = views
        self.spec = spec
        self.polls = 0

    def _tick(self, seconds: float) -> None:
        self.now += seconds

    def _view(self, *services: str) -> tuple[list[dict[str, Any]], list[TaskView],
                                             dict[str, ContainerInfo]]:
        view = self.views[min(self.polls, len(self.views) - 1)]
        self.polls += 1
        containers = {t.container_id: container(t.id, image_id="sha256:img1" if image_digest(
            t.image) == GOOD else "sha256:imgbad") for t in view if t.state == "running"}
        return [self.spec], view, containers

    def service(self, name: str) -> dict[str, Any]:
        return self.spec

    def image(self, ref: str) -> ImageInfo | None:
        if GOOD in ref or ref == "backout-retained/shop.web:target-1":
            return ImageInfo(id="sha256:img1", repo_tags=(), created="", labels={},
                             repo_digests=(f"{REG}/backout-retained/shop.web@{GOOD}",
                                           f"{REG}/web@{GOOD}"))
        if BAD in ref:
            return ImageInfo(id="sha256:imgbad", repo_tags=(), created="", labels={},
                             repo_digests=(f"{REG}/web@{BAD}",))
        return None


def test_replace_service_updates_to_the_pinned_digest_and_waits_for_the_tasks(
        tmp_path: Path) -> None:
    pinned = f"{REG}/web@{GOOD}"
    old = [task("o1", digest=BAD), task("o2", digest=BAD, slot=2)]
    half = [task("n1", image=pinned), task("o2", digest=BAD, slot=2)]
    # the second slot already ran the target's digest under another reference: Swarm
    # replaces it too, and the wait lasts until it has
    same_digest = [task("n1", image=pinned), task("o2", slot=2)]
    new = [task("n1", image=pinned), task("n2", slot=2, image=pinned)]
    platform = Scripted(tmp_path, [old, old, half, same_digest, new], service_spec())
    platform.replace_service("web", "backout-retained/shop.web:target-1", operation_id=7)
    # the operator's repository is preferred to backout's retention tag (same digest)
    assert platform.manager.updates == [  # type: ignore[attr-defined]
        ("shop_web", "--image", f"{REG}/web@{GOOD}", "--label-add", "io.backout.operation=op-7")]
    assert platform.polls == 5  # returned at the first poll where every task was there


def test_a_stalled_update_is_undone_and_explained(tmp_path: Path) -> None:
    old = [task("o1", digest=BAD), task("o2", digest=BAD, slot=2)]
    stuck = [*old, task("n1", state="pending", err="no suitable node (host-mode port)")]
    spec = service_spec(host_port=19881)
    # pending for ever; once put back, the old tasks are what runs
    platform = Scripted(tmp_path, [stuck] * 40 + [old], spec, stall=30)
    with pytest.raises(UnhealthyError) as caught:
        platform.replace_service("web", f"{REG}/web@{GOOD}", operation_id=3)
    updates = platform.manager.updates  # type: ignore[attr-defined]
    assert [u[2] for u in updates] == [f"{REG}/web@{GOOD}", f"{REG}/web:1@{BAD}"]
    assert "stalled" in caught.value.message and "undone" in caught.value.message
    assert "no suitable node" in caught.value.message
    assert caught.value.fix and "host mode" in caught.value.fix
    assert 30 <= platform.now < 40  # detected at the deadline, not at the converge timeout


def test_an_image_in_no_registry_cannot_run_on_a_swarm(tmp_path: Path) -> None:
    platform = Scripted(tmp_path, [[]], service_spec())
    with pytest.raises(NotFoundError, match="no image"):
        platform.replace_service("web", "local-only:1", operation_id=1)
    assert platform.manager.updates == []  # type: ignore[attr-defined]


def test_not_converging_in_time_names_what_is_missing(tmp_path: Path) -> None:
    platform = Scripted(tmp_path, [[task("n1")]], service_spec())
    with pytest.raises(UnhealthyError, match="1 of 2 tasks desired running"):
        platform.wait_converged(["web"], timeout=20)
    assert platform.now >= 20


def test_the_swarm_platform_is_in_the_table() -> None:
    from backout import platforms

    assert platforms.PLATFORMS["swarm"] == "backout.platforms.swarm:SwarmPlatform"
    assert swarm.SwarmPlatform.kind == "swarm"


def test_a_node_engine_that_does_not_answer_is_named(tmp_path: Path) -> None:
    from backout.adapters.swarm import unreachable_text
    from backout.errors import DockerUnavailableError, ExitCode, ExternalError

    assert unreachable_text("Cannot connect to the Docker daemon at unix:///x.sock. Is the "
                            "docker daemon running?")
    assert unreachable_text("docker exec on bolab2: timed out after 60s")
    assert not unreachable_text("OCI runtime exec failed: exec: \"pg_dump\": no such file or "
                                "directory")
    platform = Scripted(tmp_path, [[]], service_spec())
    with pytest.raises(DockerUnavailableError) as caught, platform._reaching("bolab2"):
        raise ExternalError("docker container inspect failed (exit 1): Cannot connect to the "
                            "Docker daemon at unix:///x.sock. Is the docker daemon running?")
    assert "node bolab2" in caught.value.message and caught.value.exit_code == ExitCode.EXTERNAL
    assert caught.value.fix and "backout resume" in caught.value.fix
    with pytest.raises(ExternalError) as other, platform._reaching("bolab2"):
        raise ExternalError("docker exec failed: no such container")
    assert not isinstance(other.value, DockerUnavailableError)


class Cluster(Scripted):
    """Scripted, with the stack's services listed (stop/start read them)."""

    def _services(self, *services: str) -> list[dict[str, Any]]:
        return [self.spec]


def test_writers_are_scaled_to_zero_and_back_to_their_count(tmp_path: Path) -> None:
    spec = service_spec(replicas=3, image=f"{REG}/web:1@{GOOD}")
    platform = Cluster(tmp_path, [[]], spec)
    # Scaled to 0, the task is desired "shutdown" at once but runs (and writes) until its
    # container has stopped: stop() returns only when the task's own state says so.
    states = iter(["running", "running", "shutdown"])
    polled: list[str] = []

    def tasks(services: Sequence[str]) -> list[dict[str, Any]]:
        polled.append(state := next(states))
        return [{"ID": "t1", "DesiredState": "shutdown", "Status": {"State": state}}]
    platform.manager.tasks = tasks  # type: ignore[attr-defined]
    assert platform.stop(["web"]) == ["web"]
    assert polled == ["running", "running", "shutdown"]
    updates = platform.manager.updates  # type: ignore[attr-defined]
    # the count to restore is kept on the service itself (a resumed plan finds it there)
    assert updates == [("shop_web", "--label-add", "io.backout.scaled-from=3", "--replicas", "0")]
    # a service already at 0 (or not stopped by us) is left alone
    spec["Spec"]["Mode"]["Replicated"]["Replicas"] = 0
    assert platform.stop(["web"]) == []
    spec["Spec"]["Labels"] = {"io.backout.scaled-from": "3"}
    platform.views = [[task("a"), task("b", slot=2), task("c", slot=3)]]
    # (the scripted cluster does not apply updates: the spec as Swarm has it after)
    platform.manager.update_service = lambda service, *flags, timeout=120: (  # type: ignore[attr-defined]
        updates.append((service, *flags)), spec["Spec"]["Mode"]["Replicated"].update(Replicas=3))
    platform.start(["web"])
    assert updates[-1] == ("shop_web", "--replicas", "3", "--label-rm", "io.backout.scaled-from")
    spec["Spec"]["Labels"] = {}
    platform.start(["web"])
    assert len(updates) == 2  # nothing of ours to undo: not started


def test_only_tasks_desired_running_are_what_runs(tmp_path: Path) -> None:
    class Tasks(Manager):
        def tasks(self, services: Sequence[str]) -> list[dict[str, Any]]:
            base = {"ServiceID": "svc1", "NodeID": "n1", "Slot": 1,
                    "Spec": {"ContainerSpec": {"Image": f"{REG}/web:1@{GOOD}"}}}
            return [{**base, "ID": "new", "DesiredState": "running",
                     "Status": {"State": "running"}},
                    {**base, "ID": "old", "DesiredState": "shutdown",
                     "Status": {"State": "shutdown"}},
                    {**base, "ID": "crashed", "DesiredState": "shutdown",
                     "Status": {"State": "failed"}}]

    platform = SwarmPlatform(Environment(project_dir=tmp_path), Config(
        path=tmp_path / "backout.toml", project_dir=tmp_path, project=ProjectConfig(name="shop"),
        platform=PlatformConfig(kind="swarm")))
    platform.manager = Tasks(service_spec())  # type: ignore[assignment]
    views = platform._desired_tasks([service_spec()], {"n1": "bolab1"})
    assert [(v.id, v.node, v.failures) for v in views] == [("new", "bolab1", 1)]


def test_stack_deploy_gets_the_variables_the_compose_files_reference(tmp_path: Path) -> None:
    """`docker stack deploy` reads no .env: every variable the files reference (not an
    escaped $$) is asked of Compose and passed in the child's environment."""
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  app:\n    image: reg/app:${TAG:-1}\n    environment:\n"
        "      PW: $DB_PASSWORD\n      REG: ${REGISTRY}\n      U: ${DB_USER}\n"
        "      LITERAL: $$NOT_A_VAR\n")
    platform = Scripted(tmp_path, [[]], {})
    asked: list[list[str]] = []

    def variables(names: list[str]) -> dict[str, str]:
        asked.append(list(names))
        return {"DB_PASSWORD": "s3cret", "REGISTRY": "10.0.0.2:5000", "DB_USER": "backout"}

    platform.variables = variables  # type: ignore[method-assign]
    deployed: list[dict[str, str]] = []
    platform.manager.deploy_stack = (  # type: ignore[attr-defined]
        lambda stack, files, *, resolve_image, env, cwd, plain_env: deployed.append(
            {**env, **{f"plain:{k}": v for k, v in plain_env.items()}}))
    platform._services = lambda *s: []  # type: ignore[method-assign]
    platform.wait_converged = lambda services, **kw: None  # type: ignore[method-assign]
    platform.converge(pull=False)
    assert asked == [["DB_PASSWORD", "DB_USER", "REGISTRY", "TAG"]]
    # a secret by its name is redacted; a registry address and a user name stay readable
    assert deployed == [{"DB_PASSWORD": "s3cret", "plain:REGISTRY": "10.0.0.2:5000",
                         "plain:DB_USER": "backout"}]
    assert platform.env.redact("at 10.0.0.2:5000 as backout") == "at 10.0.0.2:5000 as backout"
    assert platform.env.redact("pw s3cret") == "pw " + platform.env.redact("s3cret")
    assert "s3cret" not in platform.env.redact("pw s3cret")
