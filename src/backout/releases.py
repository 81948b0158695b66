"""Releases: exactly what runs, recorded, with its images retained.

A release is the deployment repository's commit (and the operator's uncommitted
diff, saved as a patch), the resolved compose configuration with secrets masked,
and for every service the image ID actually running. Each image gets a tag under
backout's own name, so ``docker image prune`` leaves it alone and a rollback never
has to rebuild or pull what the release already had.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from backout.adapters.git import Git
from backout.config import Config
from backout.environment import MASK, Environment
from backout.errors import NotFoundError, UnhealthyError
from backout.platforms.base import Platform
from backout.state import Store

RETAIN_REPO = "backout-retained"


def retained_ref(project: str, service: str, release_id: int) -> str:
    safe = re.sub(r"[^a-z0-9_.-]", "-", f"{project}.{service}".lower())
    return f"{RETAIN_REPO}/{safe}:release-{release_id}"


def redact_config(env: Environment, data: Any) -> Any:
    """The compose config with every known secret masked (values can be interpolated)."""
    if isinstance(data, dict):
        return {k: redact_config(env, v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_config(env, v) for v in data]
    if isinstance(data, str):
        return env.redact(data)
    return data


def _mask_environment(data: dict[str, Any]) -> dict[str, Any]:
    """Mask credential-looking environment values in services, known or not."""
    for spec in (data.get("services") or {}).values():
        environment = spec.get("environment") or {}
        for key in list(environment):
            if re.search(r"PASS|SECRET|TOKEN|KEY|AUTH", key, re.I):
                environment[key] = MASK
    return data


@dataclass(frozen=True)
class RecordedRelease:
    id: int
    commit: str | None
    dirty: bool
    diff_path: str | None
    services: dict[str, dict[str, Any]]


def record_release(env: Environment, config: Config, store: Store, platform: Platform, *,
                   note: str | None = None) -> RecordedRelease:
    """Record what runs now as a new release. Caller holds the operation lock."""
    platform.ping()
    resolved = _mask_environment(redact_config(env, platform.definition()))
    project_name = str(resolved.get("name") or config.project_dir.name)
    containers = platform.containers()
    running = {c.service: c for c in containers if c.state == "running"}
    missing = sorted(set((resolved.get("services") or {}).keys()) - set(running))
    if not running:
        raise UnhealthyError(
            f"no container of compose project {project_name!r} is running: nothing to record",
            fix="start the stack (docker compose up -d) first")
    tree = Git(env, config.project_dir).state(config.own_paths)

    services: dict[str, dict[str, Any]] = {}
    for name, container in sorted(running.items()):
        image = platform.image(container.image_id)
        services[name] = {
            "image": container.image,
            "image_id": container.image_id,
            "digests": list(image.repo_digests) if image else [],
            "container_id": container.id,
        }
    release_id = store.add_release(
        git_commit=tree.commit, git_dirty=tree.dirty, diff_path=None,
        compose_config=resolved, services=services, note=note,
    )
    diff_path = None
    if tree.dirty and tree.diff:
        diffs = config.state_dir / "diffs"
        diffs.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = diffs / f"release-{release_id}.patch"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(tree.diff)
        diff_path = str(path.relative_to(config.project_dir))
    for name, svc in services.items():
        ref = retained_ref(project_name, name, release_id)
        platform.tag(svc["image_id"], ref)
        svc["retained_as"] = ref
    store.update_release(release_id, services=services, diff_path=diff_path)
    retire_old_images(config, store, platform)
    store.record_event("release.record", target=f"release {release_id}", reason=note,
                       detail={"commit": tree.commit, "dirty": tree.dirty,
                               "not_running": missing})
    return RecordedRelease(release_id, tree.commit, tree.dirty, diff_path, services)


def retire_old_images(config: Config, store: Store, platform: Platform) -> list[str]:
    """Untag the retained images of releases beyond ``[releases] keep_last``.

    Never an image of the current or previous release (the two newest), nor one
    that a kept release still uses; only backout's own tags are removed, so an
    image another tag or a container uses stays.
    """
    releases = store.releases()
    keep = releases[: max(config.releases.keep_last, 2)]
    kept_refs = {svc.get("retained_as") for r in keep for svc in r["services"].values()}
    removed = []
    for rel in releases[len(keep):]:
        for svc in rel["services"].values():
            ref = svc.get("retained_as")
            if ref and ref not in kept_refs and platform.image(ref) is not None:
                # Removing a tag deletes the image only when no other tag (e.g. a kept
                # release's) and no container uses it.
                platform.untag(ref)
                removed.append(ref)
    if removed:
        store.record_event("release.retire_images", target=f"{len(removed)} tags",
                           detail={"removed": removed, "keep_last": config.releases.keep_last})
    return removed


def current_or_new_release(env: Environment, config: Config, store: Store,
                           platform: Platform) -> int:
    """The latest release if it is exactly what runs now, else a newly recorded one."""
    latest = store.releases(1)
    if latest:
        rel = latest[0]
        running = platform.running_images()
        recorded = {name: svc["image_id"] for name, svc in rel["services"].items()}
        tree = Git(env, config.project_dir).state(config.own_paths)
        if running == recorded and tree.commit == rel["git_commit"] and not tree.dirty \
                and not rel["git_dirty"]:
            return int(rel["id"])
    return record_release(env, config, store, platform, note="recorded by checkpoint").id


def get_release(store: Store, release_id: int) -> dict[str, Any]:
    release = store.release(release_id)
    if release is None:
        raise NotFoundError(f"no release {release_id}", fix="list them with `backout releases`")
    return release
