"""Sizes of the lean and the local-model bundles, and spawn → first local token.

    packaging/build && packaging/build --with-local-model
    .venv/bin/python -m bench.local_bundle [--runs 5]

Each run is ``packaging/smoke_local.py`` on ``dist/model-sidecar-local/model-sidecar``: a
fresh data directory, no Python on ``PATH``, its own network namespace when the machine
allows it, then ``model:stream`` to ``local-llm``. The clock starts at spawn, so the
first token includes the sidecar's start, the model server's start from the same
executable (the model loaded from the bundle) and the prompt. Medians over the runs.
Writes ``bench/results-local-bundle.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not (LOCAL / "model-sidecar").is_file():
        print("build it first: packaging/build --with-local-model", file=sys.stderr)
        return 2
    smoke = _smoke()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            out = Path(tmp) / f"run{index}.json"
            smoke.main(str(LOCAL / "model-sidecar"), str(out))  # type: ignore[attr-defined]
            runs.append(json.loads(out.read_text()))
    result = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "runs": args.runs,
        "isolation": runs[0]["isolation"],
        "size_mb": {"lean_onedir": tree_mb(LEAN) if LEAN.is_dir() else None, "local_onedir": tree_mb(LOCAL)},
        "spawn_to_ready_ms_p50": round(statistics.median(r["ready_ms"] for r in runs), 1),
        "spawn_to_first_local_token_ms_p50": round(statistics.median(r["first_token_ms"] for r in runs), 1),
        "spawn_to_first_local_token_ms": [r["first_token_ms"] for r in runs],
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
