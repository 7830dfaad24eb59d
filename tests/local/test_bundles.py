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


def test_a_frozen_build_with_the_model_runs_itself_as_the_server(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from sidecar.local import embedded

    monkeypatch.setattr(embedded.sys, "frozen", True, raising=False)
    monkeypatch.setattr(embedded.sys, "_MEIPASS", str(tmp_path), raising=False)
    with pytest.raises(embedded.EmbeddedUnavailable, match="--with-local-model"):
        embedded.check()  # the lean build: no model in the bundle
    model = tmp_path / embedded.BUNDLE_MODEL_DIR / embedded.MODEL_FILE
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert embedded.check() == model
    argv = embedded.command(model, 1234)
    assert argv[:2] == [sys.executable, embedded.FROZEN_SERVER_FLAG] and "-m" not in argv
    assert argv[argv.index("--model") + 1] == str(model)


def test_the_entry_point_flag_is_the_embedded_one() -> None:
    from sidecar.local import embedded

    assert f'["{embedded.FROZEN_SERVER_FLAG}"]' in (REPO / "packaging" / "entry.py").read_text()
