"""A ComposePlatform whose engine answers scripted looks: the unit tests of the waits
that ask the engine until what `up` started is ready (one replaced service, the whole
stack). In-process, no Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from backout.config import Config
from backout.environment import Environment
from backout.platforms.base import ContainerInfo
from backout.platforms.compose import ComposePlatform


def platform_for_looks(tmp_path: Path) -> ComposePlatform:
    """A platform that found no engine (a remote DOCKER_HOST) until ``looks`` gives it one."""
    env = Environment(env={"DOCKER_HOST": "ssh://deploy@host"})
    return ComposePlatform(env, Config(path=tmp_path / "backout.toml", project_dir=tmp_path))


def looks(platform: ComposePlatform, monkeypatch: pytest.MonkeyPatch,
          seen: list[list[ContainerInfo]]) -> list[tuple[str, ...]]:
    """The engine answers ``seen`` one look after the other (the last one again); the
    services each look asked about, returned."""
    asked: list[tuple[str, ...]] = []

    def containers(*services: str) -> list[ContainerInfo]:
        asked.append(services)
        return seen.pop(0) if len(seen) > 1 else seen[0]

    monkeypatch.setattr(platform, "containers", containers)
    platform.engine = object()  # type: ignore[assignment]
    return asked
