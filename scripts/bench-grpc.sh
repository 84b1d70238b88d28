#!/usr/bin/env bash
# Envoy's rate limit service measured beside the JSON check (docs/performance.md, "Envoy
# rate limit service"): one ratelimitd serving both, the same limiter-bench load (same
# concurrency, same clients), the two driven in turn ROUNDS times:
#   1. memory backend: ShouldRateLimit with one descriptor vs POST /v1/check, checks/s;
#   2. Redis backend (a local redis-server): the same, then each at half of its own peak
#      (open loop) for p50/p99.
#
#   scripts/bench-grpc.sh [ROUNDS] [SECS] [CONCURRENCY]    (defaults: 5, 5, 32)
#
# Installs what it lacks: redis-server and redis-tools from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
SECS=${2:-5}
CONC=${3:-32}
out=target/bench-grpc
rm -rf "$out"
mkdir -p "$out"

if ! command -v redis-server >/dev/null; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release -q -p limiter-server -p limiter-bench

# Both paths admit everything, so every check takes the path that writes: the anonymous
# tier (the JSON check's clients) and the descriptor are a billion a second.
printf '[tiers.anonymous]\nquotas = [{ limit = 1000000000, period = "1s" }]\n' >"$out/tiers.toml"
mkdir -p "$out/rls"
cat >"$out/rls/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: client
    rate_limit: {unit: second, requests_per_unit: 1000000000}
YAML

pids=()
redis_dir=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; redis-cli -p 6394 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$redis_dir"' EXIT
start() { # http_port grpc_port [args...]
    local port=$1 grpc=$2
    shift 2
    target/release/ratelimitd --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$grpc" \
        --rls-config "$out/rls" --config "$out/tiers.toml" --rules-file "$out/rules-$port.json" \
        "$@" >"$out/ratelimitd-$port.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return
        sleep 0.1
    done
    echo "ratelimitd on $port did not start" >&2
    exit 1
}
bench() { # label backend url [args...]
    local label=$1 backend=$2 url=$3
    shift 3
    target/release/limiter-bench --backend "$backend" --url "$url" --concurrency "$CONC" \
        --duration "$SECS" --keys 10000 --json "$@" >"$out/$label.json"
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

side_by_side() { # name http_port grpc_port
    local name=$1 http=$2 grpc=$3
    echo "round	json_rps	grpc_rps	json_p99_us	grpc_p99_us" >"$out/$name.tsv"
    for round in $(seq "$ROUNDS"); do
        bench "$name-json-$round" check "http://127.0.0.1:$http"
        bench "$name-grpc-$round" grpc "http://127.0.0.1:$grpc"
        row="$round"
        for f in checks_per_sec p99_us; do
            row="$row	$(field "$out/$name-json-$round.json" $f)	$(field "$out/$name-grpc-$round.json" $f)"
        done
        echo "$row" >>"$out/$name.tsv"
        for f in "$out/$name-json-$round.json" "$out/$name-grpc-$round.json"; do
            [ "$(field "$f" errors)" = 0 ] || { echo "errors in $f" >&2; exit 1; }
        done
        echo "$name round $round: $(tail -1 "$out/$name.tsv")" >&2
    done
}

start 18201 18202
side_by_side memory 18201 18202

redis-server --port 6394 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
for _ in $(seq 50); do redis-cli -p 6394 ping >/dev/null 2>&1 && break; sleep 0.1; done
start 18203 18204 --redis-url redis://127.0.0.1:6394 --hash-secret "bench-grpc secret 0123456789"
side_by_side redis 18203 18204

# p99 at half of each one's peak (the median of its rounds), on Redis, open loop.
read -r json_peak grpc_peak < <(python3 - "$out/redis.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(statistics.median(float(r["json_rps"]) for r in rows), statistics.median(float(r["grpc_rps"]) for r in rows))
PY
)
json_half=$(python3 -c "print(round($json_peak / 2))")
grpc_half=$(python3 -c "print(round($grpc_peak / 2))")
echo "round	json_p50_us	json_p99_us	grpc_p50_us	grpc_p99_us" >"$out/half.tsv"
for round in $(seq "$ROUNDS"); do
    bench "half-json-$round" check "http://127.0.0.1:18203" --rate "$json_half"
    bench "half-grpc-$round" grpc "http://127.0.0.1:18204" --rate "$grpc_half"
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" \
        "$(field "$out/half-json-$round.json" p50_us)" "$(field "$out/half-json-$round.json" p99_us)" \
        "$(field "$out/half-grpc-$round.json" p50_us)" "$(field "$out/half-grpc-$round.json" p99_us)" >>"$out/half.tsv"
    echo "half round $round: $(tail -1 "$out/half.tsv")" >&2
done

python3 - "$out" "$json_half" "$grpc_half" <<'PY'
import csv, statistics, sys
out, json_half, grpc_half = sys.argv[1], sys.argv[2], sys.argv[3]
def rows(name):
    return list(csv.DictReader(open(f"{out}/{name}.tsv"), delimiter="\t"))
print("| backend | JSON /v1/check checks/s | gRPC ShouldRateLimit checks/s | gRPC ÷ JSON (median of rounds) | JSON p99 µs | gRPC p99 µs |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name in ("memory", "redis"):
    r = rows(name)
    med = lambda k: statistics.median(float(x[k]) for x in r)
    ratio = statistics.median(float(x["grpc_rps"]) / float(x["json_rps"]) for x in r)
    print(f"| {name} | {med('json_rps'):,.0f} | {med('grpc_rps'):,.0f} | {ratio:.3f} | {med('json_p99_us'):.0f} | {med('grpc_p99_us'):.0f} |")
r = rows("half")
med = lambda k: statistics.median(float(x[k]) for x in r)
print()
print(f"At half of peak on Redis (JSON {json_half}/s, gRPC {grpc_half}/s, open loop), medians of {len(r)} rounds:")
print(f"JSON p50 {med('json_p50_us'):.0f} µs, p99 {med('json_p99_us'):.0f} µs; gRPC p50 {med('grpc_p50_us'):.0f} µs, p99 {med('grpc_p99_us'):.0f} µs")
PY
