#!/usr/bin/env bash
# Every check CI runs: lint, types, the proto API, generated code, the tests
# and a quick benchmark smoke run. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> ruff"
ruff check .
ruff format --check .

echo "==> mypy --strict"
mypy

echo "==> buf lint, format"
buf lint
buf format --diff --exit-code
if git rev-parse --verify --quiet origin/main >/dev/null \
    && git cat-file -e origin/main:proto/hershy/v1/program.proto 2>/dev/null; then
    echo "==> buf breaking against origin/main"
    buf breaking --against ".git#ref=origin/main"
elif git rev-parse --verify --quiet HEAD~1 >/dev/null \
    && git cat-file -e HEAD~1:proto/hershy/v1/program.proto 2>/dev/null; then
    echo "==> buf breaking against the previous commit"
    buf breaking --against ".git#ref=HEAD~1"
fi

echo "==> generated code is current (Python and Go)"
scripts/codegen.sh --check

echo "==> Go client (clients/go): vet, gofmt, go.mod, tests against a live Host"
(
    cd clients/go
    command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
    go vet ./...
    unformatted=$(gofmt -l .)
    [[ -z "$unformatted" ]] || { echo "gofmt needed: $unformatted" >&2; exit 1; }
    go mod tidy -diff
    go test -count=1 ./...
)

echo "==> example programs (examples/): gofmt, vet, tests, static builds"
(
    cd examples
    command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
    unformatted=$(gofmt -l .)
    [[ -z "$unformatted" ]] || { echo "gofmt needed: $unformatted" >&2; exit 1; }
    ./build-all.sh  # go vet, go test, then each example's static binary
)

echo "==> pytest"
python3 -m pytest -p no:cacheprovider "$@"
