#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: the README's test command.
# Whatever the tests need is set up here, so a plain checkout passes with nothing else done.
#
# The Redis tests talk to a real Redis: the one at REDIS_URL if set, otherwise containers
# started by testcontainers from the local images that scripts/images.sh builds when no
# registry can provide them. The fallback's fault tests always use containers (they stop,
# pause, cut off and restart them) and need root for iptables. The cluster and Sentinel
# tests run redis-server processes on loopback ports (Debian's redis-server, installed
# here). If neither can be had the Redis tests fail, saying what to install; nothing is
# skipped. The dashboard's browser test drives Debian's chromium through chromium-driver
# (installed here; without them it fails saying so). Then every fuzz target runs for a
# few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

images=ok
if [ -z "${REDIS_URL:-}" ]; then
    scripts/images.sh || images=failed
fi

# The fallback's cut-off test drops packets to a container's port with iptables.
if ! command -v iptables >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null || true
fi

# The cluster and Sentinel tests start redis-server processes (scripts/redis-topology.sh).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null || true
    fi
fi

# The dashboard's browser test drives Debian's Chromium through chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || true
    fi
fi

status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

# Every fuzz target builds and survives a few seconds from its seed corpus, so none rots
# between long runs (scripts/fuzz.sh 600, the README's command). Not when arguments pick
# some tests: then the run is about those.
if [ $# -eq 0 ]; then
    scripts/fuzz.sh 5 || status=$?
fi
if [ "$images" = failed ]; then
    echo "error: the Redis images could not be prepared (see above); the Redis tests need Docker" >&2
    status=1
fi
exit "$status"
