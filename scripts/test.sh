#!/usr/bin/env bash
# Set up, then run every check: schema drift, lint, types, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m sidecar.wire.schemas --check
.venv/bin/ruff check sidecar tests scripts
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
