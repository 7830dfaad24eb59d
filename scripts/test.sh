#!/usr/bin/env bash
# Set up, then run every check: schema drift, lint, types, the whole test suite from
# source (the real local model included), then the frozen binary: build it, run the
# stdio suite and replay transcripts against it, and the Node host tests on it; then the
# bundle with the local model and its no-network smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m sidecar.wire.schemas --check
.venv/bin/ruff check sidecar tests scripts packaging
.venv/bin/mypy
# The real-model, OpenAPI-spec and keychain tests (a private GNOME Keyring, started by
# tests/keys/secret_service.py) must run here, never skip.
export SIDECAR_REQUIRE_KEYCHAIN=1
SIDECAR_REQUIRE_LOCAL_MODEL=1 SIDECAR_REQUIRE_OPENAPI=1 .venv/bin/python -m pytest -q "$@"
.venv/bin/python scripts/mutants.py

echo "--- frozen binary"
packaging/build
BIN="$PWD/dist/model-sidecar/model-sidecar"
SIDECAR_CMD="$BIN" SIDECAR_REQUIRE_LOCAL_MODEL=1 .venv/bin/python -m pytest -q tests/stdio tests/replay
echo "--- Node host against the frozen binary"
SIDECAR_BIN="$BIN" packaging/host/run-tests.sh
echo "--- frozen binary with the local model (about a minute more: build, then a local answer with no network)"
packaging/build --with-local-model
.venv/bin/python -m pytest -q tests/local/test_bundles.py
