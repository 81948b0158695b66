"""``backout init --scripts``: the runbook's quick-reference commands, kept working
letter for letter as thin wrappers around backout."""

from __future__ import annotations

import os
from pathlib import Path

HEADER = """#!/usr/bin/env bash
# Written by `backout init --scripts`: a thin wrapper so the runbook's command keeps
# working. The work is done by backout; see `backout {sub} --help`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BACKOUT=${{BACKOUT:-backout}}
"""

SCRIPTS = {
    "deploy/rollback/emergency_rollback.sh": (
        "rollback emergency",
        'if [ $# -lt 1 ]; then echo "usage: $0 <commit|tag|release|checkpoint> [--with-data]" >&2; exit 2; fi\n'
        'exec "$BACKOUT" rollback emergency "$@" --yes\n'),
    "deploy/rollback/service_rollback.sh": (
        "rollback service",
        'if [ $# -lt 1 ]; then echo "usage: $0 <service> [version]" >&2; exit 2; fi\n'
        'exec "$BACKOUT" rollback service "$@" --yes\n'),
    "deploy/rollback/db_rollback.sh": (
        "rollback db",
        'if [ $# -ne 2 ]; then echo "usage: $0 <mysql|mongodb|redis> <backup-id|dump-file>" >&2; exit 2; fi\n'
        'exec "$BACKOUT" rollback db "$1" "$2" --yes\n'),
    "deploy/rollback/verify_rollback.sh": (
        "verify",
        'exec "$BACKOUT" verify "$@"\n'),
    "deploy/scripts/backup.sh": (
        "checkpoint",
        '# The runbook\'s "create backup" + "save commit hash" in one record.\n'
        'exec "$BACKOUT" checkpoint --label "${1:-pre-migration}"\n'),
    "deploy/scripts/monitor_migration.sh": (
        "status",
        '# Until `backout monitor` lands: status and the post-rollback checks every 10 s.\n'
        'while true; do\n'
        '  clear 2>/dev/null || true\n'
        '  date -u\n'
        '  "$BACKOUT" status || true\n'
        '  "$BACKOUT" verify --settle 0 || true\n'
        '  sleep "${INTERVAL:-10}"\n'
        'done\n'),
}


def write_scripts(project_dir: Path, *, force: bool) -> list[str]:
    written = []
    for rel, (sub, body) in SCRIPTS.items():
        path = project_dir / rel
        if path.exists() and not force:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(HEADER.format(sub=sub) + body)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(rel)
    return written
