#!/usr/bin/env bash
# The README's main job: the runbook's scenarios with backout on the test stack.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! docker info >/dev/null 2>&1 || ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    bash scripts/ensure-docker.sh
fi
command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
uv sync --frozen -q
exec uv run python scripts/try_it.py "$@"
