#!/usr/bin/env bash
# The docker-compose fleet on a machine with or without a registry.
#   scripts/fleet.sh up [cluster]     images (scripts/images.sh), release binaries, compose up
#   scripts/fleet.sh check [cluster]  the load generator's result, and each worker's view
#   scripts/fleet.sh down [cluster]   stop and remove the fleet
# With `cluster`, the workers share a 6-node Redis Cluster (docker-compose.cluster.yml)
# instead of one Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

files=(-f docker-compose.yml)
[ "${2:-}" = cluster ] && files+=(-f docker-compose.cluster.yml)
if docker compose version >/dev/null 2>&1; then
    compose() { docker compose "${files[@]}" "$@"; }
elif command -v docker-compose >/dev/null 2>&1; then
    compose() { docker-compose "${files[@]}" "$@"; }
else
    echo "error: neither 'docker compose' nor 'docker-compose' found; install Docker Compose (apt-get install docker-compose)" >&2
    exit 1
fi

case "${1:-up}" in
up)
    scripts/images.sh
    cargo build --release -p limiter-server -p limiter-bench
    compose build
    compose up -d
    echo "fleet up: workers on 127.0.0.1:8081, :8082, :8083; the load generator runs for 20 s"
    echo "then: scripts/fleet.sh check ${2:-}"
    ;;
check)
    for port in 8081 8082 8083; do
        printf 'worker :%s ready: ' "$port"
        curl -fsS "http://127.0.0.1:$port/health/ready" || echo "(not answering)"
        echo
    done
    echo "load generator (allowed = admitted by the whole fleet):"
    compose logs --no-color loadgen | grep -o '{.*}' || echo "(no result yet)"
    ;;
down)
    compose down --remove-orphans
    ;;
*)
    echo "usage: scripts/fleet.sh up|check|down [cluster]" >&2
    exit 2
    ;;
esac
