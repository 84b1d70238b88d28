#!/usr/bin/env bash
# Starts a Redis topology from redis-server processes on loopback ports, for trying the
# limiter on it and for the tests that prove it there.
#
#   scripts/redis-topology.sh cluster DIR [BASE_PORT]    3 masters + 1 replica each
#   scripts/redis-topology.sh sentinel DIR [BASE_PORT]   1 master + 1 replica + 3 sentinels
#   scripts/redis-topology.sh stop DIR                   stops every process started in DIR
#
# Ports: the cluster's nodes are BASE_PORT .. BASE_PORT+5 (default 7000); Sentinel's master
# is BASE_PORT, its replica BASE_PORT+1, its sentinels BASE_PORT+10 .. +12 (default 7100).
# Each process keeps its pid, log and data under DIR/<port>/. The last line printed is the
# URL to give the limiter (`--redis-url`), e.g. redis+cluster://127.0.0.1:7000,...
#
# Failure detection is set fast for tests and demos: a node is failed after 1 s without an
# answer (cluster-node-timeout, down-after-milliseconds); production wants longer.
# Installs Debian's redis-server and redis-tools when missing.
set -euo pipefail

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
mode=$1
dir=$2

install_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
    # Debian's package starts a system-wide server on 6379; nothing here needs it.
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
}

until_true() { # what, command…: retried for up to 20 s, or the script fails
    local what=$1
    shift
    for _ in $(seq 400); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "timed out waiting for: $what (logs under $dir)" >&2
    exit 1
}

wait_synced() { # replica port: until its link to the master is up
    for _ in $(seq 200); do
        redis-cli -p "$1" info replication | grep -q '^master_link_status:up' && return 0
        sleep 0.05
    done
    echo "the replica on port $1 did not sync; see $dir/$1/redis.log" >&2
    exit 1
}

wait_for() { # port: until it answers PING
    for _ in $(seq 100); do
        redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "redis on port $1 did not start; see $dir/$1/redis.log" >&2
    exit 1
}

start_node() { # port, extra redis-server arguments...
    local port=$1
    shift
    mkdir -p "$dir/$port"
    # A replica syncs at once (not after diskless replication's default 5 s delay).
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
        --repl-diskless-sync-delay 0 \
        --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" "$@"
}

case $mode in
cluster)
    install_redis
    base=${3:-7000}
    nodes=()
    for i in 0 1 2 3 4 5; do
        port=$((base + i))
        # Clients on healthy masters keep being served while another master fails over.
        start_node "$port" --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 1000 --cluster-require-full-coverage no \
            --cluster-replica-validity-factor 0
        nodes+=("127.0.0.1:$port")
    done
    for node in "${nodes[@]}"; do wait_for "${node#*:}"; done
    # The first three become masters, the last three their replicas.
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log"
    cluster_ok() { redis-cli -p "$1" cluster info | grep -q '^cluster_state:ok'; }
    for node in "${nodes[@]}"; do until_true "cluster_state:ok on $node" cluster_ok "${node#*:}"; done
    replicas_attached() { [ "$(redis-cli -p "$base" cluster nodes | grep -c ' slave ')" -eq 3 ]; }
    until_true "three replicas attached" replicas_attached
    for i in 3 4 5; do wait_synced "$((base + i))"; done
    (IFS=,; echo "redis+cluster://${nodes[*]}")
    ;;
sentinel)
    install_redis
    base=${3:-7100}
    start_node "$base"
    start_node "$((base + 1))" --replicaof 127.0.0.1 "$base"
    wait_for "$base"
    wait_for "$((base + 1))"
    wait_synced "$((base + 1))"
    sentinels=()
    for i in 10 11 12; do
        port=$((base + i))
        mkdir -p "$dir/$port"
        # Sentinel rewrites its configuration file: it must be its own, and writable.
        cat >"$dir/$port/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
dir $dir/$port
pidfile $dir/$port/redis.pid
logfile $dir/$port/redis.log
sentinel monitor limiter 127.0.0.1 $base 2
sentinel down-after-milliseconds limiter 1000
sentinel failover-timeout limiter 5000
sentinel parallel-syncs limiter 1
EOF
        redis-server "$dir/$port/sentinel.conf" --sentinel
        sentinels+=("127.0.0.1:$port")
    done
    for s in "${sentinels[@]}"; do wait_for "${s#*:}"; done
    # Each sentinel has found the replica and the other sentinels.
    sentinel_ready() {
        local info
        info=$(redis-cli -p "$1" sentinel master limiter 2>/dev/null | paste - -)
        grep -qP '^num-slaves\t1$' <<<"$info" && grep -qP '^num-other-sentinels\t2$' <<<"$info"
    }
    for s in "${sentinels[@]}"; do until_true "sentinel ${s#*:} ready" sentinel_ready "${s#*:}"; done
    (IFS=,; echo "redis+sentinel://${sentinels[*]}/limiter")
    ;;
stop)
    # By port, not by pid: a node killed earlier may have left a pid now used by another
    # process.
    for node in "$dir"/*/; do
        port=$(basename "$node")
        [[ $port =~ ^[0-9]+$ ]] || continue
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    ;;
*)
    usage
    ;;
esac
