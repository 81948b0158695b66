"""Reading a Compose ``.env`` file the way Compose reads it (the common subset).

Only names are ever written into backout's own files; values are read when a
credential is needed and registered with the redactor at once.
"""

from __future__ import annotations

from pathlib import Path


def parse(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load(path: Path) -> dict[str, str]:
    """Parse the file at ``path``; raises ``OSError`` when it cannot be read."""
    return parse(path.read_text(encoding="utf-8"))
