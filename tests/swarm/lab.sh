#!/bin/bash
# The project's copy of ../shared/tools/swarm-lab.sh (the recipe of ENVIRONMENT.md),
# so that CI on a fresh clone can build the lab: tests/support/swarm.py runs it.
# swarm-lab.sh - two-node Docker Swarm lab inside network namespaces.
#
#   swarm-lab.sh up [IMAGE...]   build (or complete) the lab, copy IMAGEs from the
#                                host engine into node 1 and push them to the lab
#                                registry; prints `export VAR=...` lines on stdout
#   swarm-lab.sh down            tear everything down (idempotent)
#   swarm-lab.sh env             print the env lines again
#   swarm-lab.sh status          show what is running
#
# Topology (all private, nothing routed to the outside):
#   netns bolab0  bridge br0 10.213.7.2/24  + docker-registry on 10.213.7.2:5000
#   netns bolab1  eth0 10.213.7.11/24  dockerd -> unix:///run/bolab1.sock  (swarm manager)
#   netns bolab2  eth0 10.213.7.12/24  dockerd -> unix:///run/bolab2.sock  (swarm worker)
#   host          veth bolab-h 10.213.7.1/24 (BOLAB_HOST_LINK=0 to skip) so the host can curl the nodes
#
# Never touches the host engine except `docker save` of the requested images
# (read-only). Processes are only ever stopped by the PIDs recorded in
# $RUN/*.pid or found in the lab's own cgroups / containerd namespaces.
set -euo pipefail

P=${BOLAB_PREFIX:-bolab}
NET=${BOLAB_NET:-10.213.7}                 # /24 prefix
POOL=${BOLAB_ADDR_POOL:-10.214.0.0/16}      # swarm overlay address pool
RUN=/run/$P                                  # exec roots, pid files, configs
DATA=/var/lib/$P                             # data roots + registry storage
LOGD=/var/log/$P
REG_IP=$NET.2
REG=$REG_IP:5000
HOST_IP=$NET.1
HOST_LINK=${BOLAB_HOST_LINK:-1}
IPTABLES=${BOLAB_IPTABLES:-true}             # iptables inside each node netns
NODE2_ROLE=${BOLAB_NODE2_ROLE:-worker}       # worker | manager
SRC_HOST=${BOLAB_SOURCE_DOCKER_HOST:-unix:///var/run/docker.sock}
NODES=(1 2)

log() { echo "[$P $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
nsfile() { echo /var/run/netns/$P$1; }
sock() { echo unix:///run/$P$1.sock; }
dk() { local n=$1; shift; docker -H "$(sock "$n")" "$@"; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pidof_file() { [ -f "$1" ] && cat "$1" 2>/dev/null || true; }

wait_for() { # seconds description command...
  local t=$1 d=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && die "timeout (${t}s) waiting for $d"
    sleep 0.5
  done
}

# ---------------------------------------------------------------- network
net_up() {
  mkdir -p /var/run/netns
  for n in 0 "${NODES[@]}"; do
    [ -e "$(nsfile $n)" ] || ip netns add $P$n
    ip -n $P$n link set lo up
  done
  if ! ip -n ${P}0 link show br0 >/dev/null 2>&1; then
    ip -n ${P}0 link add br0 type bridge
    ip -n ${P}0 addr add $REG_IP/24 dev br0
  fi
  ip -n ${P}0 link set br0 up
  for n in "${NODES[@]}"; do
    if ! ip -n $P$n link show eth0 >/dev/null 2>&1; then
      ip -n ${P}0 link add n$n type veth peer name eth0 netns $P$n
      ip -n ${P}0 link set n$n master br0 up
      ip -n $P$n addr add $NET.1$n/24 dev eth0
      ip -n $P$n link set eth0 up
      # default route into the hub, which routes nowhere: docker wants a
      # default route, but nothing can leave the lab.
      ip -n $P$n route add default via $REG_IP
    fi
  done
  if [ "$HOST_LINK" = 1 ] && ! ip link show $P-h >/dev/null 2>&1; then
    ip link add $P-h type veth peer name hostp netns ${P}0
    ip -n ${P}0 link set hostp master br0 up
    ip addr add $HOST_IP/24 dev $P-h
    ip link set $P-h up
  fi
}

# ---------------------------------------------------------------- registry
registry_up() {
  mkdir -p "$RUN" "$DATA/registry" "$LOGD"
  local pid; pid=$(pidof_file "$RUN/registry.pid")
  if ! alive "$pid"; then
    command -v docker-registry >/dev/null || \
      DEBIAN_FRONTEND=noninteractive apt-get install -y docker-registry >&2
    cat >"$RUN/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DATA/registry
  delete:
    enabled: true
http:
  addr: $REG
EOF
    setsid nsenter --net="$(nsfile 0)" docker-registry serve "$RUN/registry.yml" \
      >>"$LOGD/registry.log" 2>&1 </dev/null &
    echo $! >"$RUN/registry.pid"
  fi
  wait_for 30 "registry on $REG" nsenter --net="$(nsfile 0)" curl -fsS -m 2 "http://$REG/v2/"
}

# ---------------------------------------------------------------- dockerd
dockerd_up() {
  local n=$1 name=$P$1
  mkdir -p "$RUN/$name" "$DATA/$name" "$LOGD"
  local pid; pid=$(pidof_file "$RUN/$name.pid")
  if ! alive "$pid"; then
    rm -f "/run/$name.sock" "$RUN/$name.pid"
    # --net only (not `ip netns exec`, which remounts /sys); own UTS ns so the
    # swarm node hostname is $name.
    setsid nsenter --net="$(nsfile "$n")" unshare --uts -- sh -c \
      "echo $name > /proc/sys/kernel/hostname; exec dockerd \
        --data-root $DATA/$name --exec-root $RUN/$name --pidfile $RUN/$name.pid \
        -H unix:///run/$name.sock \
        --containerd-namespace $name --containerd-plugins-namespace $name-plugins \
        --cgroup-parent /$name \
        --iptables=$IPTABLES --bridge none \
        --insecure-registry $REG \
        --log-level warn" \
      >>"$LOGD/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.launcher.pid"
  fi
  wait_for 60 "dockerd $name" docker -H "$(sock "$n")" version
}

swarm_up() {
  local st
  st=$(dk 1 info -f '{{.Swarm.LocalNodeState}}')
  if [ "$st" != active ]; then
    dk 1 swarm init --advertise-addr $NET.11 --listen-addr $NET.11:2377 \
      --default-addr-pool "$POOL" >&2
  fi
  local tok; tok=$(dk 1 swarm join-token -q "$NODE2_ROLE")
  st=$(dk 2 info -f '{{.Swarm.LocalNodeState}}')
  if [ "$st" != active ]; then
    dk 2 swarm join --token "$tok" --advertise-addr $NET.12 --listen-addr $NET.12:2377 \
      $NET.11:2377 >&2
  fi
  wait_for 60 "2 ready nodes" bash -c \
    "[ \$(docker -H $(sock 1) node ls -q | wc -l) -ge 2 ] && \
     ! docker -H $(sock 1) node ls --format '{{.Status}}' | grep -qv Ready"
  for n in "${NODES[@]}"; do
    dk 1 node update --label-add $P.node=$P$n "$P$n" >/dev/null
  done
}

# ---------------------------------------------------------------- images
images_up() {
  [ $# -gt 0 ] || return 0
  local todo=() img
  for img in "$@"; do
    local want have
    want=$(docker -H "$SRC_HOST" image inspect -f '{{.Id}}' "$img") || die "no image $img on host engine"
    have=$(dk 1 image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)
    [ "$want" = "$have" ] || todo+=("$img")
  done
  if [ ${#todo[@]} -gt 0 ]; then
    log "copying ${todo[*]} host engine -> ${P}1"
    docker -H "$SRC_HOST" save "${todo[@]}" | dk 1 load -q >&2
  fi
  for img in "$@"; do
    local ref=$img
    if [[ $img == */* ]]; then
      case ${img%%/*} in *.*|*:*|localhost) ref=${img#*/};; esac   # strip a registry host
    fi
    dk 1 tag "$img" "$REG/$ref"
    log "push $REG/$ref"
    dk 1 push -q "$REG/$ref" >&2
  done
}

print_env() {
  cat <<EOF
export BOLAB_NODE1_HOST=$(sock 1)
export BOLAB_NODE2_HOST=$(sock 2)
export DOCKER_HOST=$(sock 1)
export BOLAB_REGISTRY=$REG
export BOLAB_NODE1_ADDR=$NET.11
export BOLAB_NODE2_ADDR=$NET.12
export BOLAB_NODE1_NETNS=$(nsfile 1)
export BOLAB_NODE2_NETNS=$(nsfile 2)
EOF
}

cmd_up() {
  local t0=$SECONDS
  [ "$(id -u)" = 0 ] || die "must run as root"
  net_up
  registry_up
  for n in "${NODES[@]}"; do dockerd_up "$n"; done
  swarm_up
  images_up "$@"
  print_env | tee "$RUN/env"
  log "up done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- down
kill_pid() { # pid [grace seconds]
  local pid=$1 g=${2:-20}
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local end=$((SECONDS + g))
  while alive "$pid" && [ $SECONDS -lt $end ]; do sleep 0.3; done
  alive "$pid" && { log "SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.3; }
  return 0
}

lab_pids() { # pids of lab leftovers: processes in the lab cgroups and shims of the lab containerd namespaces
  local name=$1 f
  for f in /sys/fs/cgroup/pids/$name /sys/fs/cgroup/unified/$name /sys/fs/cgroup/$name; do
    [ -d "$f" ] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qE "^(/usr/bin/)?containerd-shim[^ ]* -namespace $name " \
      && echo "${p#/proc/}"
  done
  true
}

dockerd_down() {
  local n=$1 name=$P$1
  local pid; pid=$(pidof_file "$RUN/$name.pid")
  [ -n "$pid" ] || pid=$(pidof_file "$RUN/$name.launcher.pid")
  if alive "$pid"; then
    # remove lab containers first so shims/containers go away with dockerd
    if docker -H "$(sock "$n")" version >/dev/null 2>&1; then
      docker -H "$(sock "$n")" swarm leave --force >/dev/null 2>&1 || true
      local ids; ids=$(docker -H "$(sock "$n")" ps -aq 2>/dev/null || true)
      [ -z "$ids" ] || docker -H "$(sock "$n")" rm -f $ids >/dev/null 2>&1 || true
    fi
    kill_pid "$pid" 30
  fi
  kill_pid "$(pidof_file "$RUN/$name/containerd/containerd.pid")" 10
  local p
  for p in $(lab_pids "$name" | sort -u); do kill_pid "$p" 5; done
  rm -f "/run/$name.sock"
}

umount_under() { # lazily unmount everything below a path (deepest first)
  local d=$1
  awk -v d="$d" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

cmd_down() {
  local t0=$SECONDS
  for n in "${NODES[@]}"; do dockerd_down "$n"; done
  kill_pid "$(pidof_file "$RUN/registry.pid")" 10
  umount_under "$RUN"; umount_under "$DATA"
  for n in 0 "${NODES[@]}"; do
    [ -e "$(nsfile $n)" ] && ip netns del $P$n 2>/dev/null || true
  done
  ip link del $P-h 2>/dev/null || true
  rm -rf "$RUN" "$DATA"
  rm -f /run/${P}1.sock /run/${P}2.sock
  # empty cgroup dirs left by --cgroup-parent
  for n in "${NODES[@]}"; do
    find /sys/fs/cgroup/*/$P$n -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  log "down done in $((SECONDS - t0))s"
}

cmd_status() {
  for n in "${NODES[@]}"; do
    echo "== $P$n pid=$(pidof_file "$RUN/$P$n.pid")"
    dk "$n" info -f '{{.Name}} swarm={{.Swarm.LocalNodeState}} containers={{.Containers}}' 2>&1 || true
  done
  echo "== registry pid=$(pidof_file "$RUN/registry.pid")"
  nsenter --net="$(nsfile 0)" curl -fsS -m 2 "http://$REG/v2/_catalog" 2>&1 || true
  dk 1 node ls 2>/dev/null || true
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  env) print_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up [IMAGE...] | down | env | status" >&2; exit 2 ;;
esac
