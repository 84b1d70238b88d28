#!/usr/bin/env bash
# Live rules, measured side by side (docs/performance.md, "Live rules"):
#   1. POST /v1/check throughput of ratelimitd (memory backend) with 1,000 rules loaded vs
#      the 4 tiers alone, the two servers measured in turn, ROUNDS times; medians and the
#      median of the per-round ratios;
#   2. Redis commands per check with rules and statistics on: INFO commandstats around a
#      wrk run against a worker on a local redis-server.
#
#   scripts/bench-rules.sh [ROUNDS] [SECS]      (defaults: 5 rounds, 5 s per measurement)
#
# Installs what it lacks: wrk, redis-server and redis-tools from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
SECS=${2:-5}
out=target/bench-rules
rm -rf "$out"
mkdir -p "$out"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server redis-tools)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p limiter-server

# Both servers admit everything: the anonymous tier, and the rule that decides the
# benchmark's requests, are a billion a second.
big='quotas = [{ limit = 1000000000, period = "1s" }]'
printf '[tiers.anonymous]\n%s\n' "$big" >"$out/tiers.toml"
python3 - "$out/rules.toml" "$big" <<'PY'
import sys
path, big = sys.argv[1], sys.argv[2]
q = 'quotas = [{ limit = 100, period = "1m" }]'
rules = []
# 1,000 rules of every kind, none but the last matching the benchmark's clients
# (198.18.0.0/15, resource "search"): networks of every length, keys, resources, tiers.
for i in range(400):
    a, b = divmod(i, 200)
    rules.append(f'name = "net-{i}"\nscope = "ip"\nmatch = "10.{a}.{b}.0/{24 + i % 9}"'.replace(f"/{24 + i % 9}", "/24") if False else
                 f'name = "net-{i}"\nscope = "ip"\nmatch = "10.{a}.{b}.0/24"')
for i in range(300):
    rules.append(f'name = "key-{i}"\nscope = "api_key"\nmatch = "bench-key-{i:08}-0123456789"')
for i in range(150):
    rules.append(f'name = "res-{i}"\nscope = "global"\nresource = "res-{i}"')
for i in range(100):
    rules.append(f'name = "path-{i}"\nscope = "tier"\nmatch = "anonymous"\nresource = "/api/v{i}/items"')
for i in range(49):
    rules.append(f'name = "v6-{i}"\nscope = "ip"\nmatch = "2001:db8:{i:x}::/48"')
with open(path, "w") as f:
    f.write(f'[tiers.anonymous]\n{big}\n')
    for r in rules:
        f.write(f"\n[[rules]]\n{r}\n{q}\n")
    f.write(f'\n[[rules]]\nname = "search"\nscope = "global"\nresource = "search"\n{big}\n')
print(len(rules) + 1, "rules", file=sys.stderr)
PY

cat >"$out/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
    n = n + 1
    local ip = "198.18." .. (math.floor(n / 256) % 256) .. "." .. (n % 256)
    return wrk.format(nil, "/v1/check", nil, '{"client":"' .. ip .. '","resource":"search"}')
end
LUA

pids=()
redis_dir=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; redis-cli -p 6393 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$redis_dir"' EXIT
start() { # port config [args...]
    local port=$1 config=$2
    shift 2
    RATELIMIT_LOG_FORMAT=json target/release/ratelimitd --listen "127.0.0.1:$port" --config "$config" \
        --rules-file "$out/rules-$port.json" "$@" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return
        sleep 0.1
    done
    echo "ratelimitd on $port did not start" >&2
    exit 1
}
start 18101 "$out/tiers.toml"
start 18102 "$out/rules.toml"
# The rules server decides by the rule, the tiers server by the tier.
curl -s 127.0.0.1:18102/v1/check -d '{"client":"198.18.0.1","resource":"search"}' | grep -q '"rule":"search"'
curl -s 127.0.0.1:18101/v1/check -d '{"client":"198.18.0.1","resource":"search"}' | grep -q '"rule":null'

echo "round	tiers_rps	rules_rps	tiers_cpu_us	rules_cpu_us" >"$out/http.tsv"
for round in $(seq "$ROUNDS"); do
    row="$round"
    cpus=""
    for i in 0 1; do
        pid=${pids[$i]}
        port=$((18101 + i))
        before=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        wrk -t1 -c32 -d"${SECS}s" -s "$out/check.lua" "http://127.0.0.1:$port/" >"$out/wrk-$round-$port.txt"
        ticks=$(($(awk '{ print $14 + $15 }' "/proc/$pid/stat") - before))
        rps=$(awk '/^Requests\/sec/ { print $2 }' "$out/wrk-$round-$port.txt")
        requests=$(awk '/requests in/ { print $1 }' "$out/wrk-$round-$port.txt")
        row="$row	$rps"
        cpus="$cpus	$(python3 -c "print(round($ticks / $(getconf CLK_TCK) * 1e6 / $requests, 2))")"
    done
    echo "$row$cpus" >>"$out/http.tsv"
    echo "round $round: $row$cpus" >&2
done

# Redis: one worker with the same rules, statistics on (they always are).
redis-server --port 6393 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
for _ in $(seq 50); do redis-cli -p 6393 ping >/dev/null 2>&1 && break; sleep 0.1; done
start 18103 "$out/rules.toml" --redis-url redis://127.0.0.1:6393 --hash-secret "bench-rules secret 0123456789"
redis-cli -p 6393 config resetstat >/dev/null
wrk -t1 -c32 -d"${SECS}s" -s "$out/check.lua" "http://127.0.0.1:18103/" >"$out/wrk-redis.txt"
sleep 1.5 # the last flush
redis-cli -p 6393 info commandstats >"$out/commandstats.txt"

python3 - "$out" "$SECS" <<'PY'
import statistics, sys
out, secs = sys.argv[1], float(sys.argv[2])
rows = [l.split("\t") for l in open(f"{out}/http.tsv").read().splitlines()[1:]]
tiers = [float(r[1]) for r in rows]
rules = [float(r[2]) for r in rows]
ratios = [float(r[2]) / float(r[1]) for r in rows]
cpu_ratios = [float(r[4]) / float(r[3]) for r in rows]
print("## POST /v1/check: 1,000 rules vs the 4 tiers (memory backend, wrk -t1 -c32)\n")
print("| | tiers | 1,000 rules | rules / tiers |\n| --- | --- | --- | --- |")
print(f"| checks/s, median of {len(rows)} | {statistics.median(tiers):,.0f} | {statistics.median(rules):,.0f} | {statistics.median(ratios):.3f} |")
print(f"| server CPU µs per check, median | {statistics.median(float(r[3]) for r in rows):.2f} | {statistics.median(float(r[4]) for r in rows):.2f} | {statistics.median(cpu_ratios):.3f} |")
stats = {}
for line in open(f"{out}/commandstats.txt"):
    if line.startswith("cmdstat_"):
        name, rest = line[len("cmdstat_"):].split(":", 1)
        stats[name] = int(rest.split(",")[0].split("=")[1])
requests = int(next(l.split()[0] for l in open(f"{out}/wrk-redis.txt") if "requests in" in l))
scripts = stats.get("evalsha", 0) + stats.get("eval", 0)
# Commandstats count the commands a script runs too: those are the checks' own work.
inside = {k: stats.pop(k) for k in ("get", "set", "time", "pexpireat", "pexpire") if k in stats}
fleet = {k: v for k, v in stats.items() if k not in ("evalsha", "eval", "config|resetstat")}
print(f"\n## Redis commands per check, 1,000 rules, statistics on ({secs:.0f} s)\n")
print(f"- checks answered: {requests:,}; script calls: {scripts:,}, {scripts / requests:.3f} per check "
      f"(concurrent checks share a call); inside them: "
      f"{', '.join(f'{k} {v:,}' for k, v in sorted(inside.items()))}")
print(f"- the fleet's own commands (version checks, statistics flushes): "
      f"{', '.join(f'{k} {v}' for k, v in sorted(fleet.items()))}: "
      f"{sum(fleet.values()) / (secs + 1.5):.1f} per second, whatever the load")
PY
