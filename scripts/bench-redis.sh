#!/usr/bin/env bash
# Redis backend vs redis-benchmark running the same script, side by side in one run, with
# Redis's CPU per decision.
#
#   scripts/bench-redis.sh [SECS_PER_POINT] [TASKS...]      (defaults: 5 s; 1 16 64 256)
#
# Starts its own redis-server on 127.0.0.1:6390 (installing Debian's redis-server and
# redis-tools if missing), loads lua/token_bucket.lua, and for each concurrency runs
#   - redis-benchmark: EVALSHA of that script, one check per call, -P 1 and -P 16, and PING
#     (the round-trip floor);
#   - limiter-bench --backend redis: RedisLimiter::check in a closed loop, batched (the
#     default) and with --max-batch 1 (one call per check, like redis-benchmark's), each
#     with Redis's CPU per decision: the time Redis spent in the script over the run (its
#     own INFO commandstats, EVALSHA and EVAL) divided by the checks decided;
# on 10,000 keys, then prints a markdown table.
#
# The quota admits every check (the costlier path, which writes) and refills one token per
# second from a burst of 10^9: each bucket's key lives for seconds, as real clients' do. (A
# quota of 10^9 per second would refill within a microsecond, so every key would expire a
# millisecond after its write and Redis's expiry cycle would take part of the server's time.)
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-5}
shift || true
TASKS=${*:-1 16 64 256}
PORT=${BENCH_REDIS_PORT:-6390}

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

dir=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

cli() { redis-cli -p "$PORT" "$@"; }
sha=$(cli SCRIPT LOAD "$(cat lua/token_bucket.lua)")
# One check, as limiter-bench's: one policy of one quota of 1 per second with a burst of
# 1e9 (unit 1e6 µs-units per token, refill 1 unit per µs, max 1e15 units, tick 1), then the
# check: policy 1, cost 1.
evalsha=(EVALSHA "$sha" 1 "rl:{__rand_int__}:bench:1-1000000-1000000000:v2"
    1 1 1000000 1 1000000000000000 1 1 1)

# requests per point: enough for about SECS seconds at the measured ceilings
# redis-benchmark's CSV: "test","rps","avg_latency_ms","min","p50","p95","p99","max"
rb_p50_p99() {
    local c=$1 p=$2 n=$3; shift 3
    redis-benchmark -p "$PORT" -c "$c" -P "$p" -n "$n" -r 10000 --csv "$@" 2>/dev/null |
        awk -F'","' 'NR == 2 { gsub(/"/, "", $0); split($0, f, ","); printf "%.0f %.0f %.0f", f[2], f[5] * 1000, f[7] * 1000 }'
}

cargo build --release -q -p limiter-bench
bench=target/release/limiter-bench
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print(' '.join(str(r.get(k)) for k in sys.argv[1:]))" "$@"; }
ours() {
    "$bench" --backend redis --redis-url "redis://127.0.0.1:$PORT" --concurrency "$1" --keys 10000 \
        --duration "$SECS" --limit 1 --burst 1000000000 --max-batch "$2" --json |
        json checks_per_sec p50_us p99_us errors redis_us_per_check checks_per_call
}

echo "| tasks / clients | limiter-redis checks/s | p50 µs | p99 µs | errors | Redis µs/check | checks/call | max_batch 1 checks/s | Redis µs/check, max_batch 1 | redis-benchmark EVALSHA -P 1 /s | p50 µs | p99 µs | EVALSHA -P 16 /s | ours ÷ -P 16 | PING -P 1 /s | PING p99 µs | batched ÷ max_batch 1 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for c in $TASKS; do
    n=$((SECS * (c == 1 ? 4000 : 30000)))
    read -r ev_rps ev_p50 ev_p99 <<<"$(rb_p50_p99 "$c" 1 "$n" "${evalsha[@]}")"
    read -r evp_rps _ _ <<<"$(rb_p50_p99 "$c" 16 "$((n * 3))" "${evalsha[@]}")"
    read -r ping_rps _ ping_p99 <<<"$(rb_p50_p99 "$c" 1 "$n" PING)"
    read -r o_rps o_p50 o_p99 o_err o_cpu o_per <<<"$(ours "$c" 64)"
    read -r s_rps _ _ s_err s_cpu _ <<<"$(ours "$c" 1)"
    ratio=$(awk -v a="$o_rps" -v b="$evp_rps" 'BEGIN { printf "%.2f", a / b }')
    gain=$(awk -v a="$o_rps" -v b="$s_rps" 'BEGIN { printf "%.2f", a / b }')
    printf '| %s | %.0f | %s | %s | %s | %.2f | %.1f | %.0f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$c" "$o_rps" "$o_p50" "$o_p99" "$((o_err + s_err))" "$o_cpu" "$o_per" "$s_rps" "$s_cpu" \
        "$ev_rps" "$ev_p50" "$ev_p99" "$evp_rps" "$ratio" "$ping_rps" "$ping_p99" "$gain"
done

# Latency at half of peak load, against the round trip at the same load. The peak is the
# closed-loop figure at the highest concurrency; then the same tasks offer half of it in an
# open loop (limiter-bench's pacer: evenly spaced sends), first as checks, then as PINGs
# through the same client (the floor). Twice: with the client and Redis sharing both cores,
# and with Redis on core 1 and the client on core 0, as on a deployment where Redis has a
# CPU of its own (sharing, the client's threads preempt Redis for whole time slices).
top=${TASKS##* }
PIN=()
run_bench() {
    ${PIN[@]+"${PIN[@]}"} "$bench" --redis-url "redis://127.0.0.1:$PORT" --concurrency "$top" \
        --duration "$SECS" --limit 1 --burst 1000000000 --json "$@"
}
half_load() {
    local cores=$1 peak half c_rate c_p50 c_p99 c_err p_rate p_p50 p_p99
    peak=$(run_bench --backend redis | json checks_per_sec)
    half=$(awk -v p="$peak" 'BEGIN { printf "%.0f", p / 2 }')
    read -r c_rate c_p50 c_p99 c_err <<<"$(run_bench --backend redis --rate "$half" | json checks_per_sec p50_us p99_us errors)"
    read -r p_rate p_p50 p_p99 <<<"$(run_bench --backend redis-ping --rate "$half" | json checks_per_sec p50_us p99_us)"
    printf '| %s | %s | %.0f | %s | %.0f | %s | %s | %s | %.0f | %s | %s | %s |\n' "$top" "$cores" "$peak" "$half" \
        "$c_rate" "$c_p50" "$c_p99" "$c_err" "$p_rate" "$p_p50" "$p_p99" \
        "$(awk -v a="$c_p99" -v b="$p_p99" 'BEGIN { printf "%.2f", a / b }')"
}
echo
echo "| tasks | cores | peak checks/s | offered /s | checks/s | p50 µs | p99 µs | errors | PING /s | PING p50 µs | PING p99 µs | p99 ÷ PING p99 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
half_load shared
redis_pid=$(cat "$dir/redis.pid")
taskset -pc 1 "$redis_pid" >/dev/null
PIN=(taskset -c 0)
half_load split
taskset -pc 0-"$(($(nproc) - 1))" "$redis_pid" >/dev/null
