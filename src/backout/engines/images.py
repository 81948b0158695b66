"""Which engine an image is, whatever its registry prefix and tag.

``backout init`` asks each engine (``Engine.recognise``) about a service's image;
an engine knows its images as repositories (``bitnami/mysql``), repository
prefixes (``redislabs/``) and the server programs it runs (``mariadbd``), which
are the evidence when the image name says nothing.

``PENDING`` holds the images of engines that are planned but may not be in the
table of this build (``engines.names()``): init still recognises those services and
says the engine is missing, instead of seeing no database at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# type -> (repositories, repository prefixes, server programs)
PENDING: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "postgresql": (("postgres", "postgis/postgis", "timescale/timescaledb",
                    "timescale/timescaledb-ha", "bitnami/postgresql"), (), ("postgres",)),
}

PENDING_PROGRAMS = tuple(p for _repos, _prefixes, programs in PENDING.values() for p in programs)

# Images whose name holds a database's name but which are not the database (web UIs,
# exporters, backup tools): never taken for the database itself.
NOT_A_DATABASE = ("express", "commander", "exporter", "insight", "admin", "ui", "web",
                  "backup", "proxy", "operator", "cli", "client", "sentinel")


@dataclass(frozen=True)
class ImageRef:
    registry: str | None  # "ghcr.io", "localhost:5000"; None: Docker Hub
    repository: str  # "bitnami/mysql"; Docker Hub's "library/" dropped
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The last path component: ``mysql`` of ``registry.example/team/mysql:8``."""
        return self.repository.rsplit("/", 1)[-1]


def parse_image(ref: str) -> ImageRef:
    """Split an image reference as Docker does (lowercased; docker.io and library/ dropped)."""
    text = ref.strip().lower()
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
    tag = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1:]
    registry = None
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, text = first, rest
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        registry = None
    if registry is None and text.startswith("library/"):
        text = text[len("library/"):]
    return ImageRef(registry, text, tag, digest)


def matches(ref: ImageRef, repositories: Iterable[str], prefixes: Iterable[str] = ()) -> bool:
    """The image is one of ``repositories`` (under any registry, or as the last
    component of a private repository path: ``team/mysql``), or under a prefix."""
    repos = tuple(repositories)
    if ref.repository in repos:
        return True
    if any(ref.repository.startswith(p) for p in prefixes) and \
            not any(word in ref.name for word in NOT_A_DATABASE):
        return True
    # A private registry's mirror keeps the name: registry.example/mirror/bitnami/mysql
    if any(ref.repository.endswith("/" + r) for r in repos if "/" in r):
        return True
    return ref.name in {r for r in repos if "/" not in r}


def named_like(ref: ImageRef, repositories: Iterable[str]) -> str | None:
    """A weaker match for the image of a local build (``backout-test/mongo-nx27017``):
    its last component starts with a database's name followed by ``-`` or ``_``; None
    for tools named after the database (``mongo-express``, ``redis_exporter``)."""
    words = ref.name.replace("_", "-").split("-")
    if len(words) < 2 or any(w in NOT_A_DATABASE for w in words[1:]):
        return None
    for repo in repositories:
        if "/" not in repo and words[0] == repo:
            return repo
    return None


def programs_in(found: Sequence[str], programs: Iterable[str]) -> str | None:
    """The first of an engine's server programs among those found in a container."""
    wanted = set(programs)
    return next((p for p in found if p in wanted), None)


def command_program(command: object) -> str | None:
    """The program a compose ``command:``/``entrypoint:`` starts (its basename)."""
    if isinstance(command, list) and command:
        first = str(command[0])
    elif isinstance(command, str) and command.strip():
        first = command.split()[0]
    else:
        return None
    return first.rsplit("/", 1)[-1]


_REFERENCE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}"
                        r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def variable_reference(value: object) -> str | None:
    """The variable a compose value is exactly (``${NAME}``, ``$NAME``,
    ``${NAME:-default}``...), or None (a literal, or text around a reference)."""
    if not isinstance(value, str):
        return None
    m = _REFERENCE.fullmatch(value.strip())
    if m is None:
        return None
    return m.group("braced") or m.group("bare")


def pending_type(image: str, found: Sequence[str] = ()) -> tuple[str, str] | None:
    """(type, how) of an image of an engine not in this build's table."""
    ref = parse_image(image)
    for kind, (repos, prefixes, programs) in PENDING.items():
        if matches(ref, repos, prefixes):
            return kind, f"image {ref.repository}"
        program = programs_in(found, programs)
        if program:
            return kind, f"guessed: the container has {program}"
    return None

