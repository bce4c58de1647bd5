#!/usr/bin/env bash
# Regenerates the Python stubs for proto/hershy/v1 into hershy/v1 (the
# generated-code package: never edit it by hand).
#   scripts/codegen.sh          regenerate in place
#   scripts/codegen.sh --check  fail if the committed stubs are stale
set -euo pipefail
cd "$(dirname "$0")/.."

generate() {  # $1: output root
    python -m grpc_tools.protoc -Iproto \
        --python_out="$1" --grpc_python_out="$1" \
        --mypy_out="$1" --mypy_grpc_out="$1" \
        proto/hershy/v1/*.proto
    printf '"""Generated from proto/hershy/v1 by scripts/codegen.sh. Do not edit."""\n' \
        >"$1/hershy/v1/__init__.py"
}

if [[ "${1:-}" == "--check" ]]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    mkdir -p "$out/hershy/v1"
    generate "$out"
    if ! diff -ru "$out/hershy/v1" hershy/v1; then
        echo "generated code in hershy/v1 is stale: run scripts/codegen.sh" >&2
        exit 1
    fi
    echo "generated code is up to date"
else
    mkdir -p hershy/v1
    rm -f hershy/v1/*_pb2*.py hershy/v1/*_pb2*.pyi
    generate .
    echo "generated hershy/v1"
fi
