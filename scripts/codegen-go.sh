#!/usr/bin/env bash
# Regenerates the Go code for proto/hershy/v1 into clients/go/hershyv1 (the
# generated-code package of the Go client: never edit it by hand).
#   scripts/codegen-go.sh                  install the pinned plugins if needed, regenerate in place
#   scripts/codegen-go.sh --check          fail if the committed Go code is stale
#   scripts/codegen-go.sh --install-tools  only install the pinned plugins (scripts/setup.sh)
#
# protoc is the one grpcio-tools bundles (`python -m grpc_tools.protoc`, with
# the well-known types), so the Python and Go code come from the same
# compiler. The plugins are pinned below and installed from the Go module
# proxy into .tools/bin (gitignored); a second run finds them and takes no
# time. PROTOC_GEN_GO_VERSION must match google.golang.org/protobuf in
# clients/go/go.mod (the generated code needs a runtime at least as new).
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12      # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2   # google.golang.org/grpc/cmd/protoc-gen-go-grpc

GO_MODULE=github.com/hershy/hershy/clients/go
TOOLS_BIN="$PWD/.tools/bin"

if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null; then
    echo "codegen-go: 'go' is not on PATH (nor in /usr/local/go/bin): install Go 1.24 or newer" >&2
    exit 1
fi

install_tools() {
    mkdir -p "$TOOLS_BIN"
    # `protoc-gen-go --version` prints "protoc-gen-go v1.36.12";
    # `protoc-gen-go-grpc --version` prints "protoc-gen-go-grpc 1.6.2".
    if [[ "$("$TOOLS_BIN/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go ${PROTOC_GEN_GO_VERSION}" ]]; then
        GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod \
            go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
    fi
    if [[ "$("$TOOLS_BIN/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]]; then
        GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod \
            go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
    fi
}

generate() {  # $1: the module root to write into (hershyv1/ lands under it)
    mkdir -p "$1/hershyv1"
    python -m grpc_tools.protoc -Iproto \
        --plugin=protoc-gen-go="$TOOLS_BIN/protoc-gen-go" \
        --plugin=protoc-gen-go-grpc="$TOOLS_BIN/protoc-gen-go-grpc" \
        --go_out="$1" --go_opt=module="$GO_MODULE" \
        --go-grpc_out="$1" --go-grpc_opt=module="$GO_MODULE" \
        proto/hershy/v1/*.proto
}

case "${1:-}" in
    --install-tools)
        install_tools
        echo "protoc-gen-go ${PROTOC_GEN_GO_VERSION} and protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION} are in .tools/bin"
        ;;
    --check)
        install_tools
        out=$(mktemp -d)
        trap 'rm -rf "$out"' EXIT
        generate "$out"
        if ! diff -ru "$out/hershyv1" clients/go/hershyv1; then
            echo "generated Go code in clients/go/hershyv1 is stale: run scripts/codegen-go.sh" >&2
            exit 1
        fi
        echo "generated Go code is up to date"
        ;;
    "")
        install_tools
        rm -f clients/go/hershyv1/*.pb.go
        generate clients/go
        echo "generated clients/go/hershyv1"
        ;;
    *)
        echo "usage: scripts/codegen-go.sh [--check | --install-tools]" >&2
        exit 2
        ;;
esac
