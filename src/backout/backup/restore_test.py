"""``backups verify --restore-test``: restore each artifact into a throwaway
container of the same image and compare what comes back with the manifest.

Throwaway containers carry the label ``io.backout.restore-test`` and are removed
in all cases; leftovers of a crashed run are removed by the next one.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import Any

from backout import engines
from backout.config import Config
from backout.engines.base import TrialTarget, docker, remove_leftovers
from backout.environment import Environment
from backout.errors import ExternalError, NotFoundError
from backout.platforms.base import Platform
from backout.storage.pipeline import IntegrityError

PASSWORD_VAR = "BACKOUT_RESTORE_TEST_PASSWORD"


def restore_test(env: Environment, config: Config, platform: Platform, set_dir: Path,
                 manifest: dict[str, Any]) -> dict[str, Any]:
    """Per database: {"ok": bool, "expected": ..., "restored": ...}."""
    remove_leftovers(env)
    out: dict[str, Any] = {}
    for name, section in sorted(manifest["databases"].items()):
        image = section.get("image_id")
        if not image or not docker(env, "image", "inspect", image, check=False).ok:
            raise NotFoundError(f"restore test of {name}: image {str(image)[:19]} is no longer "
                                "on this host", fix="keep release images (backout retains them)")
        artifact = set_dir / section["artifacts"][0]
        password = secrets.token_urlsafe(18)
        env.redact.add(password)
        db = dataclasses.replace(config.databases[name], password_env=PASSWORD_VAR,
                                 password_file=None, user_env=None, mode="exec",
                                 password_container_env=None, password_container_file=None,
                                 user_container_env=None)
        cfg = dataclasses.replace(config, secrets={**config.secrets, PASSWORD_VAR: password})
        holder: list[str] = []
        try:
            target = TrialTarget(env, cfg, db, platform, image, password, holder)
            out[name] = engines.get(section["type"]).trial_restore(target, artifact, section)
        except (IntegrityError, ExternalError) as exc:
            out[name] = {"ok": False, "error": exc.one_line()}
        finally:
            for container in holder:
                docker(env, "rm", "-f", "-v", container, check=False)
    return out
