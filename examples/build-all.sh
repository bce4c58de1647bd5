#!/bin/sh
# Builds every example's static binary (./<example>/app) after running the Go tests.
set -eu
cd "$(dirname "$0")"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
export GO
"$GO" vet ./...
"$GO" test -count=1 ./...
for example in simple-counter watcher-server trading-long; do
	"./$example/build.sh"
done
