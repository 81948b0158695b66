"""The database engines backout can back up and restore, by type
(``databases.<name>.type`` in backout.toml).

One module per engine (``backout.engines.mysql`` ...). The table names each
lazily, so importing it (as the config loader does, to validate a type) imports
nothing heavy. Each module holds the engine's client today; the Engine protocol
(recognise, dump, check, restore, probe, ...) and its ``ENGINE`` object join it
there (issue 12, stage B).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backout.engines.base import Engine

ENGINES = {
    "mysql": "backout.engines.mysql:ENGINE",
    "mongodb": "backout.engines.mongodb:ENGINE",
    "redis": "backout.engines.redis:ENGINE",
    "postgresql": "backout.engines.postgresql:ENGINE",
}


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def get(kind: str) -> Engine:
    """The engine of ``databases.*.type`` ``kind`` (validated by the config loader)."""
    try:
        target = ENGINES[kind]
    except KeyError:
        raise ValueError(f"unknown database type {kind!r} (known: {', '.join(ENGINES)})") from None
    module, _, attr = target.partition(":")
    engine: Engine = getattr(importlib.import_module(module), attr)
    return engine


def all_engines() -> list[Engine]:
    """Every engine, in table order (the order init matches images in)."""
    return [get(kind) for kind in ENGINES]


def load_drivers_meanwhile(kinds: Iterable[str]) -> None:
    """Import the drivers of the engines ``kinds`` in a daemon thread, while the caller
    waits on something long (Compose bringing a stack up): the verify that follows
    then finds them loaded (pymongo's import, 0.3 s, was its longest check)."""
    wanted = sorted(set(kinds))

    def load() -> None:
        for kind in wanted:
            try:
                get(kind).load_driver()
            except Exception:  # ahead of time only: the check itself will say why
                continue

    threading.Thread(target=load, daemon=True, name="backout-load-drivers").start()
