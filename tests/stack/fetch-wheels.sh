#!/usr/bin/env bash
# Download the wheels that the app and mongodb images install (see wheels.txt) into
# wheels/, for the Docker server's architecture and Debian 12's Python 3.11.
set -euo pipefail
cd "$(dirname "$0")"
arch=$(docker version --format '{{.Server.Arch}}' 2>/dev/null || uname -m)
case "$arch" in
    amd64|x86_64) platform=manylinux2014_x86_64 ;;
    arm64|aarch64) platform=manylinux2014_aarch64 ;;
    *) echo "unsupported architecture: $arch" >&2; exit 1 ;;
esac
python3 -m pip download --quiet --disable-pip-version-check -d wheels -r wheels.txt \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform "$platform"
ls wheels
