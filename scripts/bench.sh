#!/usr/bin/env bash
# Runs every side-by-side comparison of docs/performance.md, ROUNDS times, and writes one
# markdown report of medians and ratios (each ratio taken within a round, then the median).
#
#   scripts/bench.sh [ROUNDS] [SECS]      (defaults: 3 rounds, 5 s per measurement)
#
# Output: target/bench/report.md (also printed), with SVG plots of the Redis figures beside
# it (checks/s and p99 against concurrency, Redis CPU per decision); each round's raw output
# under target/bench/round-N/. Takes about 6 minutes per round at the defaults. Installs
# what it lacks: wrk, redis-server and redis-tools from Debian's packages, and matplotlib
# (for the plots) from PyPI into target/bench-venv.
#
#   1. memory backend vs governor: `cargo bench -p limiter-memory --bench check` (criterion);
#   2. Redis backend vs redis-benchmark on the same script, and p99 at half of peak load vs
#      PING at that load: scripts/bench-redis.sh;
#   3. HTTP with wrk: a route behind the rate-limit layer vs the same route without it
#      (limiter-bench --serve) and without it but with the layer's five headers, fixed
#      (--static-headers), and ratelimitd's POST /v1/check (memory backend), each request a
#      new client;
#   4. memory footprint: 1,000,000 clients in the memory backend, peak RSS;
#   5. the Redis backend on a 3-master cluster (with replicas) vs one Redis, same client
#      concurrency (scripts/redis-topology.sh; redis-server processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECS=${2:-5}
out=target/bench
rm -rf "$out"
mkdir -p "$out"

if ! command -v wrk >/dev/null; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

cargo build --release -q -p limiter-bench -p limiter-server
cargo bench -q -p limiter-memory --bench check --no-run 2>/dev/null

# The HTTP servers, started once for every round.
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
target/release/limiter-bench --serve 127.0.0.1:18091 2>/dev/null &
pids+=($!)
target/release/limiter-bench --serve 127.0.0.1:18092 --guarded 2>/dev/null &
pids+=($!)
RATELIMIT_LOG_FORMAT=json target/release/ratelimitd --listen 127.0.0.1:18093 2>/dev/null >/dev/null &
pids+=($!)
target/release/limiter-bench --serve 127.0.0.1:18094 --static-headers 2>/dev/null &
pids+=($!)
for port in 18091 18092 18093 18094; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

# One Redis and a cluster, for the topology comparison.
topo=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; scripts/redis-topology.sh stop "$topo"; redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$topo"' EXIT
cluster_url=$(scripts/redis-topology.sh cluster "$topo" 7300 | tail -n 1)
redis-server --port 6391 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$topo" --pidfile "$topo/single.pid" --logfile "$topo/single.log"

# POST /v1/check with a new client each request: every check finds a fresh bucket.
cat >"$out/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, "/v1/check", nil, '{"client":"bench-' .. n .. '","cost":1}')
end
LUA

for round in $(seq "$ROUNDS"); do
    dir="$out/round-$round"
    mkdir -p "$dir"
    echo "round $round of $ROUNDS" >&2

    echo "  memory vs governor (criterion)" >&2
    cargo bench -q -p limiter-memory --bench check >"$dir/criterion.txt" 2>&1
    python3 - "$dir/memory.tsv" <<'PY'
import glob, json, os, sys
rows = []
for bench in glob.glob("target/criterion/check_*/*/new/benchmark.json"):
    meta = json.load(open(bench))
    est = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
    rows.append(f"{meta['group_id']}\t{meta['function_id']}\t{est['median']['point_estimate']:.2f}\n")
open(sys.argv[1], "w").writelines(sorted(rows))
PY

    echo "  Redis vs redis-benchmark" >&2
    scripts/bench-redis.sh "$SECS" >"$dir/redis.md" 2>"$dir/redis.err"

    echo "  HTTP: unguarded, guarded, /v1/check, fixed headers" >&2
    # Each server's CPU time over the run (utime + stime, in clock ticks) is kept beside
    # wrk's output: CPU per request is steadier than req/s on a shared two-core machine.
    i=0
    for name in unguarded guarded check static; do
        pid=${pids[$i]}; i=$((i + 1))
        script=(); [ "$name" = check ] && script=(-s "$out/check.lua")
        before=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        wrk -t1 -c32 -d"${SECS}s" --latency "${script[@]}" "http://127.0.0.1:$((18090 + i))/" >"$dir/wrk-$name.txt"
        echo "cpu_ticks $(($(awk '{ print $14 + $15 }' "/proc/$pid/stat") - before)) $(getconf CLK_TCK)" >>"$dir/wrk-$name.txt"
    done

    echo "  1,000,000 clients in memory" >&2
    target/release/limiter-bench --backend memory --keys 1000000 --max-buckets 1100000 \
        --concurrency 2 --duration "$SECS" --json >"$dir/footprint.json"

    echo "  cluster vs one Redis" >&2
    for tasks in 64 256; do
        for topology in single cluster; do
            url=redis://127.0.0.1:6391
            [ "$topology" = cluster ] && url=$cluster_url
            target/release/limiter-bench --backend redis --redis-url "$url" --concurrency "$tasks" \
                --limit 1 --burst 1000000000 --duration "$SECS" --json >"$dir/topology-$topology-$tasks.json"
        done
    done
done

# The report's plots: matplotlib, in a virtual environment of its own under target/.
venv=target/bench-venv
if ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q matplotlib
fi

"$venv/bin/python" - "$out" "$ROUNDS" "$SECS" >"$out/report.md" <<'PY'
import glob, json, re, statistics, sys
out, rounds, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dirs = sorted(glob.glob(f"{out}/round-*"))
med = statistics.median
def fmt(x, d=0): return f"{x:,.{d}f}"
p = print

def plots(out, curves):
    """SVG plots of the Redis figures beside the report, if matplotlib is there."""
    try:
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks = sorted(curves)
    def plot(name, title, ylabel, series, log=False):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for label, key in series:
            ax.plot(tasks, [curves[t][key] for t in tasks], marker="o", label=label)
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(tasks, [str(t) for t in tasks])
        ax.set_xlabel("concurrent tasks (clients)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{out}/{name}.svg")
        plt.close(fig)
    plot("checks-per-sec", "Checks per second, one Redis", "checks/s",
         [("limiter-redis, batched", "batched"), ("limiter-redis, max_batch 1", "max_batch 1"),
          ("redis-benchmark EVALSHA -P 1", "redis-benchmark -P 1"),
          ("redis-benchmark EVALSHA -P 16", "redis-benchmark -P 16")])
    plot("p99", "p99 latency, closed loop", "µs", [("limiter-redis, batched", "p99 batched"),
         ("redis-benchmark EVALSHA -P 1", "p99 -P 1")], log=True)
    plot("redis-cpu", "Redis CPU per decision (INFO commandstats)", "µs per check",
         [("batched", "cpu batched"), ("max_batch 1", "cpu max_batch 1")])
    return True

p(f"# limiter benchmarks: {rounds} rounds, {secs} s per measurement\n")
p("Medians over rounds; each ratio is taken within a round, then its median is shown.\n")

# 1. memory vs governor
memory = {}
for d in dirs:
    for line in open(f"{d}/memory.tsv"):
        group, fn, ns = line.rstrip("\n").split("\t")
        memory.setdefault(group, {}).setdefault(fn, []).append(float(ns))
p("## Memory backend vs governor (ns per check, goal: ratio ≤ 1.0)\n")
p("| case | limiter-memory | via dyn trait | governor | ours ÷ governor |")
p("|---|---|---|---|---|")
for group in sorted(memory):
    m = memory[group]
    ratios = [a / b for a, b in zip(m["limiter-memory"], m["governor"])]
    p(f"| {group.removeprefix('check/')} | {med(m['limiter-memory']):.1f} | {med(m['limiter-memory/trait']):.1f} "
      f"| {med(m['governor']):.1f} | **{med(ratios):.2f}** |")

# 2. Redis
def table_rows(path, columns):
    rows = []
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == columns and re.fullmatch(r"\d+", cells[0]):
            rows.append(cells)
    return rows
# bench-redis.sh's columns: tasks, checks/s, p50, p99, errors, Redis µs/check, checks/call,
# max_batch 1 checks/s, its Redis µs/check, EVALSHA -P 1 /s, p50, p99, EVALSHA -P 16 /s,
# ours ÷ -P 16, PING /s, PING p99, batched ÷ max_batch 1.
tput, half = {}, []
for d in dirs:
    for r in table_rows(f"{d}/redis.md", 17):
        tput.setdefault(int(r[0]), []).append(r)
    half += table_rows(f"{d}/redis.md", 12)
p("\n## Redis backend vs redis-benchmark, same script (goal: ≥ 0.9 × EVALSHA -P 16 at the top concurrency)\n")
p("Redis µs/check: the time Redis spent in the script (its `INFO commandstats`) per decision.\n")
p("| tasks = clients | limiter-redis checks/s | p99 µs | Redis µs/check | checks/call | max_batch 1 checks/s | Redis µs/check, max_batch 1 | batched ÷ max_batch 1 | EVALSHA -P 1 /s | EVALSHA -P 16 /s | ours ÷ -P 1 | ours ÷ -P 16 | PING -P 1 /s | errors |")
p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
curves = {}
for tasks in sorted(tput):
    rs = tput[tasks]
    col = lambda i: med(float(r[i]) for r in rs)
    curves[tasks] = {"batched": col(1), "max_batch 1": col(7), "redis-benchmark -P 1": col(9),
                     "redis-benchmark -P 16": col(12), "p99 batched": col(3), "p99 -P 1": col(11),
                     "cpu batched": col(5), "cpu max_batch 1": col(8)}
    p(f"| {tasks} | {fmt(col(1))} | {fmt(col(3))} | **{col(5):.2f}** | {col(6):.1f} | {fmt(col(7))} "
      f"| **{col(8):.2f}** | {col(16):.2f} | {fmt(col(9))} | {fmt(col(12))} "
      f"| {med(float(r[1]) / float(r[9]) for r in rs):.2f} | **{col(13):.2f}** | {fmt(col(14))} "
      f"| {sum(int(r[4]) for r in rs)} |")
if plots(out, curves):
    p("\n![checks/s against concurrency](checks-per-sec.svg) ![p99 against concurrency](p99.svg) "
      "![Redis CPU per decision](redis-cpu.svg)")
if half:
    p("\n## Latency at half of peak load vs PING at that load (goal: p99 ≤ 2 × PING p99)\n")
    p("Cores: `shared`, the client and Redis on both cores; `split`, Redis on core 1 and the client on core 0.\n")
    p("| tasks | cores | peak checks/s | offered /s | check p50 µs | check p99 µs | PING p50 µs | PING p99 µs | p99 ÷ PING p99 | per round | errors |")
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    for cores in ("shared", "split"):
        rs = [r for r in half if r[1] == cores]
        if not rs:
            continue
        col = lambda i: med(float(r[i]) for r in rs)
        p(f"| {rs[0][0]} | {cores} | {fmt(col(2))} | {fmt(col(3))} | {fmt(col(5))} | {fmt(col(6))} | {fmt(col(9))} "
          f"| {fmt(col(10))} | **{med(float(r[11]) for r in rs):.2f}** | {', '.join(r[11] for r in rs)} | {sum(int(r[7]) for r in rs)} |")

# 3. HTTP
def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", text).groups()
    p99 = float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    ticks, hz = map(int, re.search(r"cpu_ticks (\d+) (\d+)", text).groups())
    return rps, p99, errors, ticks / hz * 1e6 / requests
http = {name: [wrk(f"{d}/wrk-{name}.txt") for d in dirs] for name in ("unguarded", "guarded", "check", "static")}
p("\n## HTTP, wrk -t1 -c32 (goal: guarded ≥ 0.9 × unguarded)\n")
p("Server CPU µs per request is the server process's user + system time over the run; its")
p("ratio (unguarded ÷ this) is the throughput ratio when the server is the bottleneck.\n")
p("| route | req/s | p99 µs | non-2xx | req/s ÷ unguarded | server CPU µs/req | CPU ratio |")
p("|---|---|---|---|---|---|---|")
for name, label in (("unguarded", "GET / without the layer"), ("guarded", "GET / behind the layer (memory)"),
                    ("check", "ratelimitd POST /v1/check (memory)"),
                    ("static", "GET / without the layer, with its five headers fixed")):
    runs = http[name]
    ratio = med(a[0] / b[0] for a, b in zip(runs, http["unguarded"]))
    cpu_ratio = med(b[3] / a[3] for a, b in zip(runs, http["unguarded"]))
    bold = "**" if name == "guarded" else ""
    p(f"| {label} | {fmt(med(r[0] for r in runs))} | {fmt(med(r[1] for r in runs))} "
      f"| {sum(r[2] for r in runs)} | {bold}{ratio:.2f}{bold} | {med(r[3] for r in runs):.2f} | {bold}{cpu_ratio:.2f}{bold} |")
guarded_vs_static = med(g[0] / s[0] for g, s in zip(http["guarded"], http["static"]))
p(f"\nGuarded ÷ the same five headers without the layer: {guarded_vs_static:.2f} by req/s, "
  f"{med(s[3] / g[3] for g, s in zip(http['guarded'], http['static'])):.2f} by server CPU: the layer's own work, "
  "apart from sending and parsing its headers.")

# 4. footprint
foot = [json.load(open(f"{d}/footprint.json")) for d in dirs]
p("\n## Memory footprint (goal: 1,000,000 clients ≤ 128 MiB resident)\n")
p("| distinct clients checked | buckets held at the end | peak RSS of the process MiB | checks/s |")
p("|---|---|---|---|")
p(f"| {fmt(foot[0]['keys'])} | {fmt(med(f['tracked_buckets'] for f in foot))} "
  f"| **{med(f['max_rss_kib'] for f in foot) / 1024:.1f}** | {fmt(med(f['checks_per_sec'] for f in foot))} |")

# 5. topologies
p("\n## Redis Cluster (3 masters + 3 replicas) vs one Redis, same client concurrency\n")
p("| tasks | one Redis checks/s | p99 µs | cluster checks/s | p99 µs | cluster ÷ one | errors |")
p("|---|---|---|---|---|---|---|")
for tasks in (64, 256):
    one = [json.load(open(f"{d}/topology-single-{tasks}.json")) for d in dirs]
    cl = [json.load(open(f"{d}/topology-cluster-{tasks}.json")) for d in dirs]
    p(f"| {tasks} | {fmt(med(r['checks_per_sec'] for r in one))} | {fmt(med(r['p99_us'] for r in one))} "
      f"| {fmt(med(r['checks_per_sec'] for r in cl))} | {fmt(med(r['p99_us'] for r in cl))} "
      f"| {med(b['checks_per_sec'] / a['checks_per_sec'] for a, b in zip(one, cl)):.2f} "
      f"| {sum(r['errors'] for r in one + cl)} |")
PY
cat "$out/report.md"
