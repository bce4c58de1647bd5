#!/usr/bin/env bash
# Regenerates the Python stubs for proto/hershy/v1 into clients/python/hershy/v1
# (the `hershy.v1` package of the hershy-client distribution, which the Host
# imports too: never edit it by hand), then the Go stubs if
# scripts/codegen-go.sh exists.
#   scripts/codegen.sh          regenerate in place
#   scripts/codegen.sh --check  fail if the committed stubs are stale
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=clients/python

generate() {  # $1: output root
    python -m grpc_tools.protoc -Iproto \
        --python_out="$1" --grpc_python_out="$1" \
        --mypy_out="$1" --mypy_grpc_out="$1" \
        proto/hershy/v1/*.proto
    printf '"""Generated from proto/hershy/v1 by scripts/codegen.sh. Do not edit."""\n' \
        >"$1/hershy/v1/__init__.py"
    # PEP 561: the stubs ship their .pyi files; type checkers read them.
    : >"$1/hershy/v1/py.typed"
}

status=0
if [[ "${1:-}" == "--check" ]]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    mkdir -p "$out/hershy/v1"
    generate "$out"
    if diff -ru -x __pycache__ "$out/hershy/v1" "$OUT/hershy/v1"; then
        echo "generated Python code is up to date"
    else
        echo "generated code in $OUT/hershy/v1 is stale: run scripts/codegen.sh" >&2
        status=1
    fi
else
    mkdir -p "$OUT/hershy/v1"
    rm -f "$OUT"/hershy/v1/*_pb2*.py "$OUT"/hershy/v1/*_pb2*.pyi
    generate "$OUT"
    echo "generated $OUT/hershy/v1"
fi

# The Go stubs (clients/go) have a script of their own; run it the same way.
if [[ -f scripts/codegen-go.sh ]]; then
    bash scripts/codegen-go.sh "$@" || status=1
fi
exit "$status"
