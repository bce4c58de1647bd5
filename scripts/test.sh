#!/usr/bin/env bash
# Every check CI runs: lint, types, the proto API (lint, format, breaking),
# generated code, the Go client and the examples, the tests, and a quick
# benchmark smoke run. Needs scripts/setup.sh first. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> ruff"
ruff check .
ruff format --check .

echo "==> mypy --strict"
mypy

echo "==> dashboard: TypeScript types (tsc --noEmit), then the bundle the browser tests load"
(
    cd dashboard
    node_modules/.bin/tsc --noEmit
    node build.mjs
)

echo "==> buf lint, format"
buf lint
buf format --diff --exit-code
# buf-baseline.binpb is the API as released: no change may break it. Rebuild it
# (`buf build -o buf-baseline.binpb`) only for an intended, announced break.
echo "==> buf breaking against buf-baseline.binpb"
buf breaking --against buf-baseline.binpb

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

# Benchmarks measure and print; timing targets are not pass/fail here (a shared CI
# machine's timings say little), but the scripts must run.
echo "==> benchmark smoke run (figures in the output)"
python3 benchmarks/core_bench.py --quick
python3 benchmarks/host_bench.py --smoke
python3 benchmarks/label_bench.py --smoke
python3 benchmarks/proxy_bench.py --smoke
python3 -m benchmarks.start_bench --smoke
