#!/usr/bin/env bash
# What the dashboard costs (docs/dashboard.md): three release workers on a local
# redis-server, limiter-bench's JSON checks spread over them, ROUNDS alternating runs with
# no browser and with BROWSERS headless Chromium sessions on /dashboard (each polling
# every 2 s); and the page's weight and first render from Chromium's performance timing.
#
#   scripts/bench-dashboard.sh [ROUNDS] [SECS] [BROWSERS]     (defaults: 5, 5, 5)
#
# Installs what it lacks: redis-server, chromium and chromium-driver (Debian's packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-5}
BROWSERS=${3:-5}
out=target/bench-dashboard
rm -rf "$out"
mkdir -p "$out"

need=()
command -v redis-server >/dev/null || need+=(redis-server redis-tools)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p limiter-server -p limiter-bench
cargo build --release -q -p limiter-server --example dashboard_cost

token="dashboard-bench-token-0123456789"
printf '[tiers.anonymous]\nquotas = [{ limit = 1000000000, period = "1s" }]\n' >"$out/config.toml"
pids=()
redis_dir=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; redis-cli -p 6395 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$redis_dir"' EXIT
redis-server --port 6395 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
for _ in $(seq 50); do redis-cli -p 6395 ping >/dev/null 2>&1 && break; sleep 0.1; done
targets=()
for i in 0 1 2; do
    port=$((18401 + i))
    RATELIMIT_WORKER_NAME="worker-$i" target/release/ratelimitd --listen "127.0.0.1:$port" \
        --config "$out/config.toml" --redis-url redis://127.0.0.1:6395 \
        --hash-secret "bench-dashboard secret 0123456789" --admin-token "$token" \
        >"$out/worker-$i.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
    targets+=(--target "http://127.0.0.1:$port")
done
chromedriver --port=9516 >"$out/chromedriver.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:9516/status >/dev/null && break; sleep 0.1; done

target/release/examples/dashboard_cost --dashboard http://127.0.0.1:18401 --token "$token" \
    --webdriver http://127.0.0.1:9516 --browsers "$BROWSERS" --rounds "$ROUNDS" --secs "$SECS" \
    --bench target/release/limiter-bench "${targets[@]}" | tee "$out/report.txt"
