#!/usr/bin/env bash
# Set up, then run a host session: spawn the sidecar and stream one answer. Nothing
# else is started here: the sidecar runs the embedded local model itself when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/host_demo.py "$@"
