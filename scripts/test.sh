#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: the README's test command.
# Whatever the tests need is set up here, so a plain checkout passes with nothing else done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

exec cargo test --workspace "$@"
