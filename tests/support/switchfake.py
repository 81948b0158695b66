"""A FakePlatform that holds a list of containers, so that a service can have two at
once: what the start-first switch (backout.switch) needs. In-process, no Docker."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backout.errors import UnhealthyError
from backout.platforms.base import ContainerInfo, OnJoin, SwitchPair
from tests.support.fakes import FakePlatform


@dataclass
class Box:
    id: str
    service: str
    image_id: str
    state: str = "running"
    health: str | None = "healthy"
    started_at: float = 1000.0
    scripted: bool = False  # a container start_beside made: its health follows new_health


class SwitchFakePlatform(FakePlatform):
    """``new_health``: service -> the healths a new container of it reports, one per
    look (the last repeats): ``["starting", "healthy"]``, ``["unhealthy"]``; None is
    running without a healthcheck, "exited" a container that stopped (health None)."""

    def __init__(self, project_dir: Path = Path("/fake/project"), *,
                 running: Mapping[str, str] | None = None,
                 images: Mapping[str, str] | None = None,
                 definition: dict[str, Any] | None = None,
                 new_health: Mapping[str, list[str | None]] | None = None) -> None:
        super().__init__(project_dir, running=running, images=images, definition=definition)
        self.boxes: list[Box] = [Box(f"c-{s}-1", s, i) for s, i in (running or {}).items()]
        self.new_health = {s: list(h) for s, h in (new_health or {}).items()}
        self.looks: dict[str, int] = {}
        self.process_lists: list[list[str]] = []  # what processes() answers, in turn
        # fences up: label -> {(proxy container, fenced container)}; ``cannot_fence``:
        # why fence() refuses (None: it fences)
        self.fences: dict[str, set[tuple[str, str]]] = {}
        self.cannot_fence: str | None = None

    def _look(self, box: Box) -> tuple[str, str | None]:
        """(state, health) of the box at this look."""
        script = self.new_health.get(box.service)
        if not box.scripted or not script:
            return box.state, box.health
        n = self.looks.get(box.id, 0)
        self.looks[box.id] = n + 1
        health = script[min(n, len(script) - 1)]
        return ("exited", None) if health == "exited" else (box.state, health)

    def containers(self, *services: str) -> list[ContainerInfo]:
        self._call("containers", *services)
        out = []
        for b in self.boxes:
            if services and b.service not in services:
                continue
            state, health = self._look(b)
            out.append(ContainerInfo(id=b.id, name=f"{self.project_dir.name}-{b.id[2:]}",
                                     service=b.service, state=state, health=health, image="",
                                     image_id=b.image_id, restart_count=0, started_at=""))
        return out

    def running_images(self) -> dict[str, str]:
        self._call("running_images")
        return {b.service: b.image_id for b in self.boxes if b.state == "running"}

    def of(self, service: str) -> list[Box]:
        return [b for b in self.boxes if b.service == service]

    def replace_service(self, service: str, image_ref: str, *, operation_id: int) -> None:
        self._call("replace_service", service, image_ref)
        image_id = self._has_image(image_ref)
        if image_id is None:
            raise UnhealthyError(f"fake platform: no image {image_ref}")
        self.boxes = [b for b in self.boxes if b.service != service]
        self.boxes.append(Box(f"c-{service}-1", service, image_id))

    def start_beside(self, service: str, image_ref: str | None, *,
                     operation_id: int, on_join: OnJoin | None = None) -> SwitchPair:
        self._call("start_beside", service, image_ref)
        ref = image_ref or str(self.stack["services"][service].get("image"))
        target = self._has_image(ref)
        if target is None:
            raise UnhealthyError(f"fake platform: no image {ref}")
        current = self.of(service)
        mine = [b for b in current if b.image_id == target and b.state != "exited"]
        old = tuple(b.id for b in current if b.image_id != target)
        if not mine:
            number = max((int(b.id.rsplit("-", 1)[1]) for b in current), default=0) + 1
            mine = [Box(f"c-{service}-{number}", service, target, started_at=2000.0,
                        scripted=True)]
            self.boxes.append(mine[0])
        if on_join is not None:
            on_join(mine[0].id, [self.address(mine[0].id)])
        return SwitchPair(new=mine[0].id, old=old, started_at=mine[0].started_at)

    @staticmethod
    def address(container_id: str) -> str:
        return f"10.9.0.{len(container_id)}"

    def container_address(self, container_id: str, port: int) -> str | None:
        self._call("container_address", container_id, port)
        return f"{self.address(container_id)}:{port}"

    def processes(self, container_id: str) -> list[str]:
        self._call("processes", container_id)
        return self.process_lists.pop(0) if self.process_lists else ["1 nginx: master process"]

    def fence_problem(self) -> str | None:
        return self.cannot_fence

    def fence(self, proxy_ids: Sequence[str], container_ids: Sequence[str], *,
              label: str, addresses: Sequence[str] | None = None) -> str | None:
        self._call("fence", tuple(proxy_ids), tuple(container_ids), label)
        if self.cannot_fence is not None:
            return self.cannot_fence
        self.fences.setdefault(label, set()).update(
            (p, c) for p in proxy_ids for c in container_ids)
        return None

    def unfence(self, proxy_ids: Sequence[str], *, label: str) -> int:
        self._call("unfence", tuple(proxy_ids), label)
        if self.cannot_fence is not None:  # as the real one: never a silent 0
            raise UnhealthyError(f"cannot take fences down: {self.cannot_fence}")
        up = self.fences.get(label, set())
        down = {(p, c) for p, c in up if p in proxy_ids}
        self.fences[label] = up - down
        return len(down)

    def retire(self, container_ids: Sequence[str], *, grace_seconds: float,
               after_stop: Callable[[], object] | None = None) -> list[str]:
        self._call("retire", tuple(container_ids), grace_seconds)
        gone = [b.id for b in self.boxes if b.id in container_ids]
        for b in self.boxes:
            if b.id in container_ids:
                b.state = "exited"
        if after_stop is not None:
            after_stop()
        self.boxes = [b for b in self.boxes if b.id not in container_ids]
        return gone
