"""Named Docker volumes ([volumes.<name>]): a tar of the volume, made by a throwaway
container that mounts it read-only, streamed through zstd into the partial set.

``docker run --rm --network none --user 0:0 --entrypoint tar -v VOL:/v:ro IMAGE
-C /v -cf - .`` | zstd > volume-<name>.tar.zst, then the usual proof: sha256, the
zstd stream, and the tar listed to its end-of-archive marker with every header
checksum verified (file count and bytes go to the manifest).

When ``stop_service`` is set the plan stops the service first and starts it again
in an always-step; the tar refuses to run if the service is running anyway. A live
volume (``stop_service = false``) whose files change while tar reads them fails
(GNU tar exits 1: "file changed as we read it"): a copy is complete only when
every stage exited 0.

Restore is by hand (README): ``zstd -dc volume-<name>.tar.zst | docker run -i --rm
-v VOL:/v IMAGE tar -C /v -xpf - --numeric-owner`` with the service stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from backout.config import Config, VolumeConfig
from backout.engines.formats import VolumeTarChecker
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError, UnhealthyError
from backout.platforms.base import Platform
from backout.storage.pipeline import stream_to_file

FORMAT = "volume-tar+zstd"
DEFAULT_IMAGE = "debian:bookworm-slim"
LABEL = "io.backout.volume-backup"


def artifact_name(vol: VolumeConfig) -> str:
    return f"volume-{vol.name}.tar.zst"


def docker_volume(platform: Platform, vol: VolumeConfig) -> str:
    """The engine's name of the compose volume (``<project>_<key>`` unless named)."""
    spec = (platform.definition().get("volumes") or {}).get(vol.volume)
    if spec is None:
        raise NotFoundError(f"volume {vol.name}: no volume {vol.volume!r} in the compose project",
                            fix=f"correct volumes.{vol.name}.volume in backout.toml")
    name = str(spec.get("name") or vol.volume)
    if not platform.volume_exists(name):
        raise NotFoundError(f"volume {vol.name}: docker volume {name} does not exist",
                            fix="start the project once (docker compose up -d), or correct "
                                f"volumes.{vol.name}.volume")
    return name


def _image(platform: Platform, vol: VolumeConfig) -> str:
    if vol.image:
        return vol.image
    if vol.service:
        containers = platform.containers(vol.service)
        if containers:
            return containers[0].image_id  # present locally: no pull
    return DEFAULT_IMAGE


def tar_argv(docker_name: str, image: str, vol: VolumeConfig) -> list[str]:
    return ["docker", "run", "--rm", "--network", "none", "--user", "0:0",
            "--label", f"{LABEL}={vol.name}", "--entrypoint", "tar",
            "-v", f"{docker_name}:/v:ro", image, "-C", "/v", "-cf", "-", "."]


def back_up_volume(env: Environment, config: Config, platform: Platform, vol: VolumeConfig,
                   set_dir: Path) -> dict[str, Any]:
    """Tar one volume into ``set_dir``; returns ``{"volume": ..., "artifact": ...}``."""
    start = time.monotonic()
    docker_name = docker_volume(platform, vol)
    running = bool(vol.service) and any(
        c.state in ("running", "restarting") for c in platform.containers(vol.service or ""))
    if vol.stop_service and running:
        raise UnhealthyError(f"volume {vol.name}: service {vol.service} is running, so the copy "
                             "would not be consistent (stop_service = true)",
                             fix="retry; if something restarts the service, stop that first")
    image = _image(platform, vol)
    name = artifact_name(vol)
    what = f"volume {vol.name} tar"
    try:
        scanned = stream_to_file(env, tar_argv(docker_name, image, vol), set_dir / name,
                                 what=what, level=config.backups.zstd_level,
                                 cwd=str(config.project_dir),
                                 checker=VolumeTarChecker(what)).scanned
    except ExternalError as exc:
        if "executable file not found" in exc.message or "No such image" in exc.message:
            raise ExternalError(f"{what}: image {image} cannot run tar",
                                fix=f"set volumes.{vol.name}.image to an image with tar, "
                                    f"e.g. {DEFAULT_IMAGE}") from exc
        raise
    assert scanned is not None  # proven as it was written
    counts = scanned.checks
    return {
        "volume": {
            "type": "volume", "volume": vol.volume, "docker_volume": docker_name,
            "service": vol.service, "service_stopped": not running, "image": image,
            "consistency": ("service stopped during the tar" if not running else
                            "live copy: the service was running (stop_service = false)"),
            "files": counts["files"], "dirs": counts["dirs"], "symlinks": counts["symlinks"],
            "bytes": counts["bytes"], "artifacts": [name],
            "duration_s": round(time.monotonic() - start, 3),
        },
        "artifact": {"name": name, "format": FORMAT, "sha256": scanned.sha256,
                     "bytes": scanned.bytes, "raw_bytes": scanned.raw_bytes,
                     "volume": vol.name},
    }


def volume_counts(section: dict[str, Any]) -> dict[str, int]:
    """What a re-read of the artifact must reproduce."""
    return {k: section[k] for k in ("files", "dirs", "symlinks", "bytes")}
