"""The database engines backout can back up and restore, by type
(``databases.<name>.type`` in backout.toml).

One module per engine (``backout.engines.mysql`` ...). The table names each
lazily, so importing it (as the config loader does, to validate a type) imports
nothing heavy. Each module holds the engine's client today; the Engine protocol
(recognise, dump, check, restore, probe, ...) and its ``ENGINE`` object join it
there (issue 12, stage B).
"""

from __future__ import annotations

ENGINES = {
    "mysql": "backout.engines.mysql:ENGINE",
    "mongodb": "backout.engines.mongodb:ENGINE",
    "redis": "backout.engines.redis:ENGINE",
}


def names() -> tuple[str, ...]:
    return tuple(ENGINES)
