#!/usr/bin/env bash
# Sets up this machine for Hershy, idempotently: Python packages (the project
# and its Python client, clients/python, in editable mode, with the dev tools),
# buf, Chromium (the dashboard's browser tests), the dashboard's bundle, the
# Docker engine with gVisor (scripts/setup-host.sh), and the build of a test
# Kubernetes (scripts/setup-kubernetes.sh install; the tests start it). Run as
# root on Debian bookworm. A second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0

echo "==> Python packages"
# The client first: it provides hershy.v1 (the generated stubs), which the Host
# needs; both are editable, and `hershy` is a namespace package over the two.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e clients/python -e '.[dev]'
command -v pyenv >/dev/null && pyenv rehash || true

echo "==> buf ${BUF_VERSION}"
if [[ "$(buf --version 2>/dev/null)" != "${BUF_VERSION}" ]]; then
    npm install --global --silent --allow-scripts=@bufbuild/buf "@bufbuild/buf@${BUF_VERSION}" \
        || npm install --global --silent "@bufbuild/buf@${BUF_VERSION}"
fi

echo "==> Chromium and chromedriver (Debian's; the dashboard's browser tests)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi

echo "==> the dashboard (dashboard/: npm ci, then esbuild into dashboard/dist)"
(
    cd dashboard
    # npm ci only when the lockfile changed since the last install (a stamp in
    # node_modules), so a second run takes seconds. esbuild's install script is
    # not needed: its binary comes in the @esbuild/linux-x64 package.
    lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [[ "$(cat node_modules/.hershy-lock-sha256 2>/dev/null)" != "${lock_hash}" ]]; then
        npm ci --prefer-offline --no-audit --no-fund --loglevel=error
        echo "${lock_hash}" > node_modules/.hershy-lock-sha256
    fi
    node build.mjs
)

echo "==> Go tools"
scripts/codegen-go.sh --install-tools

echo "==> Docker engine and gVisor"
scripts/setup-host.sh

echo "==> Kubernetes for the kubernetes runtime's tests (built once, cached; scripts/setup-kubernetes.sh)"
scripts/setup-kubernetes.sh install

echo "==> ready: run 'hershy serve' (see README.md)"
