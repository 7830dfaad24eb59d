"""Cold start and size of each way the sidecar ships: source run, onedir and onefile.

Cold start is spawn → the ``sidecar:ready`` line read by the host, and spawn → the first
answer (``model:get-config``, which needs the whole app imported). The three variants
are run round-robin, so a busy moment of this noisy 2-core machine hits all alike, and
medians are reported. Sizes are what a desktop app ships: the onedir folder, the onefile
executable. Idle RSS is read from /proc after ready.

    .venv/bin/python -m bench.startup [--runs 15]   # builds the binaries if missing

Writes ``bench/results-startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.compare import rss_mb

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results-startup.json"
ONEDIR = REPO / "dist" / "model-sidecar" / "model-sidecar"
ONEFILE = REPO / "dist" / "model-sidecar-onefile" / "model-sidecar"


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def one_start(command: list[str]) -> dict[str, float | None]:
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "MODEL_SIDECAR_DENY_REMOTE": "1"}
        started = time.perf_counter()
        proc = subprocess.Popen([*command, "--data-dir", data_dir], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        assert proc.stdin and proc.stdout
        ready = json.loads(proc.stdout.readline())
        ready_ms = (time.perf_counter() - started) * 1000
        assert ready["method"] == "sidecar:ready"
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"model:get-config","params":{}}\n')
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        first_ms = (time.perf_counter() - started) * 1000
        assert answer["id"] == 1 and "result" in answer
        time.sleep(0.3)  # let the start-up refresh and warm-up threads settle
        # A onefile binary runs as a bootloader parent plus the real child process.
        pids = [proc.pid, *_children(proc.pid)]
        rss = sum(r for pid in pids if (r := rss_mb(pid)) is not None)
        proc.stdin.close()
        proc.wait(10)
    return {"ready_ms": ready_ms, "first_answer_ms": first_ms, "idle_rss_mb": rss}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if not ONEDIR.exists():
        subprocess.run([str(REPO / "packaging" / "build")], check=True)
    if not ONEFILE.exists():
        subprocess.run([str(REPO / "packaging" / "build"), "--onefile"], check=True)
    variants = {
        "source": [sys.executable, "-m", "sidecar"],
        "onedir": [str(ONEDIR)],
        "onefile": [str(ONEFILE)],
    }
    for command in variants.values():  # one warm-up each: page cache, onefile extraction dir
        one_start(command)
    samples: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, command in variants.items():
            samples[name].append(one_start(command))

    def median(name: str, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[name] if s[key] is not None), 1)  # type: ignore[misc]

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": args.runs,
        "cold_start": {name: {"ready_ms_p50": median(name, "ready_ms"),
                              "first_answer_ms_p50": median(name, "first_answer_ms"),
                              "idle_rss_mb_p50": median(name, "idle_rss_mb")} for name in variants},
        "size_mb": {
            "onedir_folder": round(tree_bytes(ONEDIR.parent) / 2**20, 1),
            "onefile_executable": round(tree_bytes(ONEFILE) / 2**20, 1),
        },
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
