#!/usr/bin/env bash
# Redis backend vs redis-benchmark running the same script, side by side in one run.
#
#   scripts/bench-redis.sh [SECS_PER_POINT] [TASKS...]      (defaults: 5 s; 1 16 64 256)
#
# Starts its own redis-server on 127.0.0.1:6390 (installing Debian's redis-server and
# redis-tools if missing), loads lua/token_bucket.lua, and for each concurrency runs
#   - redis-benchmark: EVALSHA of that script, -P 1 and -P 16, and PING (the round-trip floor);
#   - the limiter-redis throughput bench: RedisLimiter::check in a closed loop;
# on 10,000 keys with a quota that admits every check, then prints a markdown table.
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
# The same quota as the Rust bench: 1e9 per second, so unit 1, refill 1000, max 1e9.
evalsha=(EVALSHA "$sha" 1 "rl:{__rand_int__}:bench:1000000000-1000000-1000000000" 1 1 1000 1000000000)

# requests per point: enough for about SECS seconds at the measured ceilings
# redis-benchmark's CSV: "test","rps","avg_latency_ms","min","p50","p95","p99","max"
rb_p50_p99() {
    local c=$1 p=$2 n=$3; shift 3
    redis-benchmark -p "$PORT" -c "$c" -P "$p" -n "$n" -r 10000 --csv "$@" 2>/dev/null |
        awk -F'","' 'NR == 2 { gsub(/"/, "", $0); split($0, f, ","); printf "%.0f %.0f %.0f", f[2], f[5] * 1000, f[7] * 1000 }'
}

cargo build --release -q -p limiter-redis --benches
ours=$(REDIS_URL="redis://127.0.0.1:$PORT" cargo bench -q -p limiter-redis --bench throughput -- "$SECS" $TASKS 2>/dev/null | tail -n +2)

echo "| tasks / clients | limiter-redis checks/s | p50 µs | p99 µs | errors | redis-benchmark EVALSHA -P 1 /s | p50 µs | p99 µs | EVALSHA -P 16 /s | ours ÷ -P 16 | PING -P 1 /s | PING p99 µs |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for c in $TASKS; do
    n=$((SECS * (c == 1 ? 4000 : 30000)))
    read -r ev_rps ev_p50 ev_p99 <<<"$(rb_p50_p99 "$c" 1 "$n" "${evalsha[@]}")"
    read -r evp_rps _ _ <<<"$(rb_p50_p99 "$c" 16 "$((n * 3))" "${evalsha[@]}")"
    read -r ping_rps _ ping_p99 <<<"$(rb_p50_p99 "$c" 1 "$n" PING)"
    read -r _ o_rps o_p50 o_p99 o_err <<<"$(echo "$ours" | awk -v c="$c" '$1 == c')"
    ratio=$(awk -v a="$o_rps" -v b="$evp_rps" 'BEGIN { printf "%.2f", a / b }')
    echo "| $c | $o_rps | $o_p50 | $o_p99 | $o_err | $ev_rps | $ev_p50 | $ev_p99 | $evp_rps | $ratio | $ping_rps | $ping_p99 |"
done

# Latency at half of peak load, against the round trip at the same load. The peak is the
# closed-loop figure at the highest concurrency; then the same tasks offer half of it in an
# open loop, first as checks, then as PINGs through the same client (the floor).
cargo build --release -q -p limiter-bench
bench=target/release/limiter-bench
top=${TASKS##* }
json() { python3 -c "import json,sys; r=json.load(sys.stdin); print(' '.join(str(r[k]) for k in sys.argv[1:]))" "$@"; }
run_bench() { "$bench" --redis-url "redis://127.0.0.1:$PORT" --concurrency "$top" --duration "$SECS" --json "$@"; }
peak=$(run_bench --backend redis | json checks_per_sec)
half=$(awk -v p="$peak" 'BEGIN { printf "%.0f", p / 2 }')
read -r c_rate c_p50 c_p99 c_err <<<"$(run_bench --backend redis --rate "$half" | json checks_per_sec p50_us p99_us errors)"
read -r p_rate p_p50 p_p99 <<<"$(run_bench --backend redis-ping --rate "$half" | json checks_per_sec p50_us p99_us)"
echo
echo "| tasks | peak checks/s | offered /s | checks/s | p50 µs | p99 µs | errors | PING /s | PING p50 µs | PING p99 µs | p99 ÷ PING p99 |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '| %s | %.0f | %s | %.0f | %s | %s | %s | %.0f | %s | %s | %s |\n' "$top" "$peak" "$half" "$c_rate" \
    "$c_p50" "$c_p99" "$c_err" "$p_rate" "$p_p50" "$p_p99" "$(awk -v a="$c_p99" -v b="$p_p99" 'BEGIN { printf "%.2f", a / b }')"
