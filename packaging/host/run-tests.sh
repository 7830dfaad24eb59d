#!/usr/bin/env bash
# Install the dev dependencies (from package-lock.json) and run the host's tests.
#   packaging/host/run-tests.sh                                   # against the source run (.venv/bin/python -m sidecar)
#   SIDECAR_BIN=dist/model-sidecar/model-sidecar packaging/host/run-tests.sh   # against a frozen binary
# A relative SIDECAR_BIN is taken from the directory this script is called from.
set -euo pipefail
if [[ -n "${SIDECAR_BIN:-}" ]]; then
  if [[ "$SIDECAR_BIN" != /* ]]; then SIDECAR_BIN="$PWD/$SIDECAR_BIN"; fi
  if [[ ! -x "$SIDECAR_BIN" ]]; then
    echo "run-tests.sh: SIDECAR_BIN=$SIDECAR_BIN is not an executable file" >&2
    exit 2
  fi
  export SIDECAR_BIN
fi
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error >/dev/null
npm test --silent
