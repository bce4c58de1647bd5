#!/usr/bin/env bash
# Sets up this machine for Hershy, idempotently: Python packages (the project
# and its Python client, clients/python, in editable mode, with the dev tools),
# buf, and the Docker engine with gVisor (scripts/setup-host.sh). Run as root
# on Debian bookworm. A second run takes seconds.
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

echo "==> Go tools"
scripts/codegen-go.sh --install-tools

echo "==> Docker engine and gVisor"
scripts/setup-host.sh

echo "==> ready: run 'hershy serve' (see README.md)"
