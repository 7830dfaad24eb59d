"""The frozen bundles, when they were built (``packaging/build`` and
``packaging/build --with-local-model``): the lean one carries no local model server, the
local one answers from its own model with no Python and no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LEAN = REPO / "dist" / "model-sidecar"
LOCAL = REPO / "dist" / "model-sidecar-local"


@pytest.mark.skipif(not (LEAN / "model-sidecar").is_file(), reason="packaging/build has not run")
def test_the_lean_bundle_carries_no_local_model() -> None:
    internal = LEAN / "_internal"
    assert not (internal / "llama_cpp").exists() and not (internal / "local-model").exists()
    assert not list(internal.glob("**/*.gguf")) and not (internal / "numpy").exists()


@pytest.mark.timeout(300)
@pytest.mark.skipif(not (LOCAL / "model-sidecar").is_file(), reason="packaging/build --with-local-model has not run")
def test_the_local_bundle_answers_from_its_own_model() -> None:
    run = subprocess.run([sys.executable, str(REPO / "packaging" / "smoke_local.py"), str(LOCAL / "model-sidecar")],
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "local smoke ok" in run.stdout
