"""Helpers shared by the rollback kinds: resolving targets, images, overrides."""

from __future__ import annotations

import re
from typing import Any

from backout.errors import NotFoundError, UsageError, did_you_mean
from backout.platforms.base import Platform
from backout.releases import RETAIN_REPO
from backout.state import Store

RELEASE_REF = re.compile(r"^(?:release:|r)?(\d{1,6})$")
CHECKPOINT_REF = re.compile(r"^(?:checkpoint:|cp)(\d{1,6})$")


def require_service(compose_config: dict[str, Any], service: str) -> dict[str, Any]:
    services: dict[str, Any] = compose_config.get("services") or {}
    if service not in services:
        raise NotFoundError(f'no service "{service}" in the compose project'
                            + did_you_mean(service, services),
                            fix=f"services: {', '.join(sorted(services))}")
    spec: dict[str, Any] = services[service]
    return spec


def running_image(platform: Platform, service: str) -> str | None:
    containers = platform.containers(service)
    return containers[0].image_id if containers else None


def release_by_ref(store: Store, ref: str) -> dict[str, Any] | None:
    m = RELEASE_REF.match(ref)
    if not m:
        return None
    release = store.release(int(m.group(1)))
    if release is None:
        raise NotFoundError(f"no release {m.group(1)}", fix="list them with `backout releases`")
    return release


def target_ref(project: str, service: str, image_id: str) -> str:
    """A tag of ours for an image a rollback targets (compose wants a reference)."""
    safe = re.sub(r"[^a-z0-9_.-]", "-", f"{project}.{service}".lower())
    return f"{RETAIN_REPO}/{safe}:target-{image_id.removeprefix('sha256:')[:12]}"


def ensure_tagged(platform: Platform, project: str, service: str, image_id: str) -> str:
    if platform.image(image_id) is None:
        raise NotFoundError(f"image {image_id[:19]} of {service} is no longer on this host",
                            fix="it cannot be rolled back to without a rebuild; pick another "
                                "release or deploy the code")
    ref = target_ref(project, service, image_id)
    platform.tag(image_id, ref)
    return ref


def compose_file_image(platform: Platform, spec: dict[str, Any], project: str,
                       service: str) -> str | None:
    """The image ID the compose files name for a service, if present locally."""
    ref = spec.get("image") or f"{project}-{service}"
    info = platform.image(ref)
    return info.id if info else None


def require_yes(yes: bool, interactive: bool, confirm: Any, question: str) -> None:
    if yes:
        return
    if not interactive:
        raise UsageError("refusing to change anything without confirmation: no terminal to ask",
                         fix="pass --yes (or --dry-run to see the plan)")
    if not confirm(question):
        raise UsageError("not confirmed; nothing changed")
