#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: every parser of outside input) for SECONDS each.
#
#   scripts/fuzz.sh SECONDS [TARGET...]      (default: every target)
#
# cargo fuzz (libFuzzer), installed from crates.io when missing, on the stable toolchain with
# RUSTC_BOOTSTRAP=1 (cargo fuzz needs nightly flags). No sanitizer: the project has no
# unsafe code, and what a fuzzer finds here is a panic, an abort or a hang. Each target
# starts from its seed corpus (fuzz/seeds/<target>, committed: valid inputs) and the corpus
# earlier runs grew (target/fuzz-corpus/<target>). An input that takes more than 10 s, or
# more than 2 GiB, counts as a crash. A crash stops the run: the input is written under
# target/fuzz-artifacts/<target>/ and the script exits non-zero; make it a regression test
# before fixing it.
#
# The long run (the goal: 10 minutes per target, no crash): scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked --version 0.13.2 -q
fi

fuzz=(--fuzz-dir fuzz --sanitizer none --target-dir target/fuzz)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
log=$(mktemp)
if ! cargo fuzz build "${fuzz[@]}" >"$log" 2>&1; then
    grep -v '^ *Compiling' "$log" >&2
    echo "FAILED: the fuzz targets do not build (cargo fuzz build ${fuzz[*]})" >&2
    exit 1
fi
rm -f "$log"

for target in "${targets[@]}"; do
    corpus=target/fuzz-corpus/$target
    artifacts=target/fuzz-artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    echo "fuzzing $target for ${SECONDS_EACH}s" >&2
    log=$(mktemp)
    # The config target writes its input to a file under TMPDIR; keep those under target/.
    mkdir -p target/fuzz-tmp
    if ! TMPDIR=$PWD/target/fuzz-tmp cargo fuzz run "${fuzz[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        if [ -n "$(ls -A "$artifacts")" ]; then
            echo "FAILED: $target found a crash, a panic or a hang; the input is in $artifacts/" >&2
        else
            # A stack overflow kills the process before libFuzzer can save the input.
            echo "FAILED: $target died without saving its input (a stack overflow does that);" \
                "look for deep nesting or recursion in the log above" >&2
        fi
        rm -f "$log"
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$log" |
        sed "s/^/  $target /" >&2 || true
    rm -f "$log"
done
echo "fuzzed ${targets[*]}: ${SECONDS_EACH}s each, no crash" >&2
