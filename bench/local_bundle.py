"""Sizes of the lean and the local-model bundles, and spawn → first local token.

    packaging/build && packaging/build --with-local-model
    .venv/bin/python -m bench.local_bundle [--runs 5]

Each run is ``packaging/smoke_local.py`` on ``dist/model-sidecar-local/model-sidecar``: a
fresh data directory, no Python on ``PATH``, its own network namespace when the machine
allows it, then ``model:stream`` to ``local-llm``. The clock starts at spawn, so the
first token includes the sidecar's start, the model server's start from the same
executable (the model loaded from the bundle) and the prompt. The same request is timed
on a source run (``python -m sidecar``, the embedded server from the ``[local]`` extra)
for comparison, alternating with the bundle runs, and so is the lean bundle running the
embedded server from this venv as a managed ``command`` server. Medians over the runs. Writes
``bench/results-local-bundle.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results-local-bundle.json"
LEAN = REPO / "dist" / "model-sidecar"
LOCAL = REPO / "dist" / "model-sidecar-local"


def tree_mb(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 1e6, 1)


def _smoke() -> object:
    # Loaded by path: "packaging" is also the name of a PyPI package.
    spec = importlib.util.spec_from_file_location("smoke_local", REPO / "packaging" / "smoke_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_token(smoke: object, command: list[str], data_dir: str) -> tuple[float, float]:
    """Spawn ``command``, stream one local answer: (spawn → ready, spawn → first token) in ms."""
    env = {**os.environ, "MODEL_SIDECAR_DENY_REMOTE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([*command, "--data-dir", data_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    host = smoke.Host(proc)  # type: ignore[attr-defined]
    try:
        assert host.read()["method"] == "sidecar:ready"
        ready_ms = (time.perf_counter() - started) * 1000
        result, first_ms = smoke._stream(host, started)  # type: ignore[attr-defined]
        assert result["metadata"]["provider"] == "local-llm", result
        host.send({"id": 3, "method": "sidecar:shutdown", "params": {}})
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return ready_ms, first_ms


def source_run(smoke: object) -> dict[str, float]:
    """Spawn → ready and → first local token of ``python -m sidecar`` (same request)."""
    with tempfile.TemporaryDirectory() as data_dir:
        ready_ms, first_ms = _first_token(smoke, [sys.executable, "-m", "sidecar"], data_dir)
    return {"ready_ms": round(ready_ms, 1), "first_token_ms": round(first_ms, 1)}


def lean_managed_run(smoke: object) -> dict[str, float]:
    """Spawn → first local token of the lean bundle (no model server inside) running the
    embedded model's server from this venv as a managed ``command`` server: what an app
    that ships the lean binary and finds a Python with the ``[local]`` extra gets."""
    from sidecar.local.embedded import LOCAL_MODEL, command, gguf_path

    server = {"run": "command", "command": command(gguf_path()), "port": "auto", "healthPath": "/v1/models"}
    config = {"providers": {"custom": {"local-llm": {
        "baseURL": "http://127.0.0.1:8080/v1", "defaultModel": LOCAL_MODEL, "server": server}}},
        "defaultProvider": "local-llm"}
    with tempfile.TemporaryDirectory() as data_dir:
        Path(data_dir, "config.json").write_text(json.dumps(config))
        _ready, first_ms = _first_token(smoke, [str(LEAN / "model-sidecar")], data_dir)
    return {"first_token_ms": round(first_ms, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not (LOCAL / "model-sidecar").is_file():
        print("build it first: packaging/build --with-local-model", file=sys.stderr)
        return 2
    smoke = _smoke()
    runs, sources, leans = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            out = Path(tmp) / f"run{index}.json"
            smoke.main(str(LOCAL / "model-sidecar"), str(out))  # type: ignore[attr-defined]
            runs.append(json.loads(out.read_text()))
            sources.append(source_run(smoke))
            if (LEAN / "model-sidecar").is_file():
                leans.append(lean_managed_run(smoke))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "runs": args.runs,
        "isolation": runs[0]["isolation"],
        "size_mb": {"lean_onedir": tree_mb(LEAN) if LEAN.is_dir() else None, "local_onedir": tree_mb(LOCAL)},
        "spawn_to_ready_ms_p50": round(statistics.median(r["ready_ms"] for r in runs), 1),
        "spawn_to_first_local_token_ms_p50": round(statistics.median(r["first_token_ms"] for r in runs), 1),
        "spawn_to_first_local_token_ms": [r["first_token_ms"] for r in runs],
        "source_spawn_to_ready_ms_p50": round(statistics.median(r["ready_ms"] for r in sources), 1),
        "source_spawn_to_first_local_token_ms_p50": round(statistics.median(r["first_token_ms"] for r in sources), 1),
        "source_spawn_to_first_local_token_ms": [r["first_token_ms"] for r in sources],
        "lean_managed_spawn_to_first_local_token_ms_p50": round(statistics.median(r["first_token_ms"] for r in leans), 1)
        if leans else None,
        "lean_managed_spawn_to_first_local_token_ms": [r["first_token_ms"] for r in leans],
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
