"""``backout backups verify``: checksums, format checks and counts, per artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backout import engines
from backout.backup.engines import checker_for
from backout.backup.volumes import volume_counts
from backout.environment import Environment
from backout.storage import sets
from backout.storage.pipeline import IntegrityError, Scanned, scan


@dataclass
class ArtifactReport:
    name: str
    ok: bool
    problem: str | None = None


@dataclass
class VerifyReport:
    set_id: str
    ok: bool
    artifacts: list[ArtifactReport] = field(default_factory=list)
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.set_id, "ok": self.ok, "problem": self.problem,
                "artifacts": [{"name": a.name, "ok": a.ok, "problem": a.problem}
                              for a in self.artifacts]}


def _counts(section: dict[str, Any], checks: dict[str, Any]) -> tuple[Any, Any]:
    if section["type"] == "volume":
        return volume_counts(section), volume_counts(checks)
    return engines.get(section["type"]).scanned_counts(section, checks)


def check_artifact(env: Environment, path: Path, section: dict[str, Any], sha256: str,
                   what: str) -> Scanned:
    """Re-read one artifact: decompression, format, its sha256 against the manifest's,
    its counts against the manifest section's. Raises IntegrityError."""
    scanned = scan(env, path, checker_for(section, what), what=what)
    if scanned.sha256 != sha256:
        raise IntegrityError(f"{what}: sha256 mismatch (file {scanned.sha256[:12]}…, "
                             f"manifest {sha256[:12]}…): the artifact changed since it was "
                             "written")
    expected, found = _counts(section, scanned.checks)
    if expected != found:
        raise IntegrityError(f"{what}: contents differ from the manifest's counts")
    return scanned


def verify_set(env: Environment, info: sets.SetInfo) -> VerifyReport:
    """Every artifact re-read: size, sha256, decompression, format, counts."""
    report = VerifyReport(info.id, True)
    try:
        manifest = sets.read_manifest(info.path)
    except IntegrityError as exc:
        report.ok = False
        report.problem = exc.message
        return report
    for name, art in sorted(manifest["artifacts"].items()):
        section = (manifest["volumes"][art["volume"]] if "volume" in art
                   else manifest["databases"][art["database"]])
        what = f"backup {info.id}: {name}"
        try:
            check_artifact(env, info.path / name, section, art["sha256"], what)
            report.artifacts.append(ArtifactReport(name, True))
        except IntegrityError as exc:
            report.ok = False
            report.artifacts.append(ArtifactReport(name, False, exc.message))
    return report
