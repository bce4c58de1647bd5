#!/bin/sh
# Builds ./app next to the Dockerfile: a static Linux binary (no cgo), so the
# image can start FROM scratch and the build needs no Go image and no registry.
# GOARCH defaults to this machine's; set it to build for another (GOARCH=arm64).
set -eu
cd "$(dirname "$0")"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
CGO_ENABLED=0 GOOS=linux "$GO" build -trimpath -buildvcs=false -ldflags="-s -w" -o app .
echo "built $(pwd)/app ($(wc -c < app) bytes)"
