#!/usr/bin/env bash
# The README's main job: the runbook's scenarios with backout on the test stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh env    # what is missing is listed and asked for first
exec uv run --frozen python scripts/try_it.py "$@"
