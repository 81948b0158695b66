"""The platforms backout can drive, by kind (``[platform] kind`` in backout.toml).

The table names each implementation's module lazily, so importing it (as the
config loader does, to validate a kind) imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backout.config import Config
    from backout.environment import Environment
    from backout.platforms.base import Platform

DEFAULT = "compose"
PLATFORMS = {
    "compose": "backout.platforms.compose:ComposePlatform",
    "swarm": "backout.platforms.swarm:SwarmPlatform",
}


def names() -> tuple[str, ...]:
    return tuple(PLATFORMS)


def for_config(env: Environment, config: Config) -> Platform:
    """The platform ``config`` runs on (``[platform] kind``, default compose)."""
    module, _, attr = PLATFORMS[config.platform.kind].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    platform: Platform = cls(env, config)
    return platform
