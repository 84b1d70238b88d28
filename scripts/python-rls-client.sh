#!/usr/bin/env bash
# Sets up the "client that is not ours" for the Envoy rate limit service tests: a Python
# venv with grpcio, plus stubs compiled by grpcio-tools from the .proto files that ship
# inside the envoy-types crate (so no .proto is copied into this repository).
#
#   scripts/python-rls-client.sh VENV_DIR ENVOY_TYPES_DIR
#
# Afterwards run the client as
#   PYTHONPATH=VENV_DIR/stubs VENV_DIR/bin/python crates/limiter-server/tests/python/rls_client.py ADDR
#
# Idempotent: the venv, the packages and the stubs are each made only when missing, and a
# marker file records a finished set-up, so a second call returns at once. Safe to call
# from several tests at the same time: everything happens under flock(1) on a lock file
# beside VENV_DIR. Python is python3 from PATH, or $PYTHON if set (>= 3.10 for grpcio 1.85).
set -euo pipefail
# Any step that fails without its own message still says which command it was.
trap 'echo "python-rls-client.sh: error: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

if [ $# -ne 2 ]; then
    echo "usage: $0 VENV_DIR ENVOY_TYPES_DIR" >&2
    exit 2
fi

# Exact pins, verified to install together on CPython 3.11 (protobuf is the runtime the
# generated code checks its version against, so it is pinned as well).
PINS=(grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 protobuf==7.36.2)
# Where rls.proto lives below ENVOY_TYPES_DIR/proto/data-plane-api.
ROOT_PROTO=envoy/service/ratelimit/v3/rls.proto

venv_arg=${1%/}
envoy_arg=${2%/}

fail() {
    echo "python-rls-client.sh: error: $*" >&2
    exit 1
}

[ -f "$envoy_arg/proto/data-plane-api/$ROOT_PROTO" ] ||
    fail "$envoy_arg/proto/data-plane-api/$ROOT_PROTO not found; ENVOY_TYPES_DIR must be the envoy-types crate's directory (the manifest_path's directory of package envoy-types in 'cargo metadata --format-version 1')"
command -v flock >/dev/null 2>&1 || fail "flock not found; install util-linux"

mkdir -p "$(dirname "$venv_arg")"
# Absolute paths: the venv records its own path, and the stamp must not depend on the cwd.
parent=$(cd "$(dirname "$venv_arg")" && pwd)
VENV="$parent/$(basename "$venv_arg")"
ENVOY=$(cd "$envoy_arg" && pwd)
STUBS="$VENV/stubs"
MARKER="$VENV/.rls-client-ready"
PY=${PYTHON:-python3}

# What a finished set-up was made from; a change (new pins, another envoy-types) redoes it.
stamp="pins=${PINS[*]} envoy-types=$ENVOY script-version=1"

# Serialise concurrent callers. The lock file lives beside VENV_DIR (not inside it) so the
# venv can be removed and remade while the lock is held.
exec 9>"$parent/.$(basename "$VENV").lock"
flock -w 900 9 || fail "timed out after 900 s waiting for the lock $parent/.$(basename "$VENV").lock"

# Fast path: a finished set-up whose interpreter still runs.
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$stamp" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
    exit 0
fi
rm -f "$MARKER"

# --- 1. the venv ---------------------------------------------------------------------
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    # Missing, half-made (e.g. venv failed for want of ensurepip) or its Python is gone.
    if [ -e "$VENV" ]; then
        # Only ever remove something that is a venv we may have made (or an empty dir).
        if [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV")" ]; then
            rm -rf "$VENV"
        else
            fail "$VENV exists and is not a Python venv; remove it or choose another VENV_DIR"
        fi
    fi
    if ! command -v "$PY" >/dev/null 2>&1 && [ "$PY" = python3 ] && [ "$(id -u)" -eq 0 ] &&
        command -v apt-get >/dev/null 2>&1; then
        echo "python-rls-client.sh: python3 not found; installing python3 python3-venv with apt-get" >&2
        apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null ||
            fail "apt-get install python3 python3-venv failed"
    fi
    command -v "$PY" >/dev/null 2>&1 ||
        fail "$PY not found; install Python >= 3.10 with venv support (Debian: apt-get install python3 python3-venv)"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        fail "$PY is $("$PY" --version 2>&1); grpcio 1.85 needs Python >= 3.10 (set PYTHON to another interpreter)"
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        # Debian's own python3 leaves out ensurepip; python3-venv brings it back.
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "python-rls-client.sh: '$PY -m venv' failed; installing python3-venv with apt-get" >&2
            apt-get update -qq >/dev/null &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
                fail "apt-get install python3-venv failed"
        fi
        "$PY" -m venv "$VENV" || {
            rm -rf "$VENV"
            fail "'$PY -m venv $VENV' failed; install venv support for $PY (Debian: apt-get install python3-venv)"
        }
    fi
fi

# --- 2. the pinned packages ------------------------------------------------------------
# Checked by installed version so an already complete venv asks no registry.
if ! "$VENV/bin/python" - "${PINS[@]}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
then
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "${PINS[@]}" ||
        fail "pip install ${PINS[*]} into $VENV failed; PyPI must be reachable (or the wheels be in PIP_FIND_LINKS)"
fi

# --- 3. the stubs -------------------------------------------------------------------------
# Include paths: grpc_tools' own _proto first (the well-known google/protobuf types, whose
# _pb2 modules ship with the protobuf package), then every folder directly under the
# crate's proto/ (data-plane-api, xds, protoc-gen-validate, googleapis, ...).
wkt=$("$VENV/bin/python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') ||
    fail "grpc_tools is not importable in $VENV; remove $VENV and run again"
includes=(-I"$wkt")
for dir in "$ENVOY"/proto/*/; do
    includes+=(-I"${dir%/}")
done

tmp="$VENV/stubs.tmp.$$"
rm -rf "$tmp" "$VENV"/stubs.tmp.*
mkdir -p "$tmp"
# rls.proto's import closure, as protoc itself resolves it (about 19 files besides the
# well-known types), so nothing has to be listed here by hand.
"$VENV/bin/python" -m grpc_tools.protoc "${includes[@]}" --include_imports \
    --descriptor_set_out="$tmp/closure.pb" "$ROOT_PROTO" ||
    fail "protoc could not resolve $ROOT_PROTO and its imports under $ENVOY/proto"
mapfile -t protos < <("$VENV/bin/python" - "$tmp/closure.pb" "$wkt" <<'EOF'
import os, sys
from google.protobuf import descriptor_pb2
files = descriptor_pb2.FileDescriptorSet()
with open(sys.argv[1], "rb") as f:
    files.ParseFromString(f.read())
for fd in files.file:
    # The well-known types are already compiled into the protobuf package.
    if not os.path.exists(os.path.join(sys.argv[2], fd.name)):
        print(fd.name)
EOF
)
[ "${#protos[@]}" -gt 0 ] || fail "found no protos to compile for $ROOT_PROTO"
"$VENV/bin/python" -m grpc_tools.protoc "${includes[@]}" \
    --python_out="$tmp" --grpc_python_out="$tmp" "${protos[@]}" ||
    fail "protoc failed compiling ${protos[*]}"
rm -f "$tmp/closure.pb"
# Check the stubs import (and the health stubs that grpcio-health-checking brings).
PYTHONPATH="$tmp" "$VENV/bin/python" -c '
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc' ||
    fail "the compiled stubs in $tmp do not import"
rm -rf "$STUBS"
mv "$tmp" "$STUBS"

# Written last: its presence means the whole set-up finished.
printf '%s\n' "$stamp" >"$MARKER"
echo "python-rls-client.sh: ready: $VENV (${#protos[@]} protos compiled into $STUBS)" >&2
