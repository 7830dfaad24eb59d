"""Task classifier figures: accuracy on the labelled set and time per classify() call.

    .venv/bin/python bench/classifier.py [--reps 50]

Times ``classify()`` over every prompt of ``tests/classifier/prompts.jsonl`` (with its
system prompt and context), ``--reps`` times, each call timed on its own; also the cold
import of the module in a fresh interpreter. Reports accuracy per split, the confusion
matrices, accuracy on the blind sets (see tests/classifier/README.md) and mean / p50 / p99
microseconds per prompt, and writes
``bench/results-classifier.json``. These 2-core machines are noisy: the minimum over
rounds of the per-round mean is reported next to the overall figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results-classifier.json"
sys.path.insert(0, str(REPO))

from sidecar.core.classifier import TASK_TYPES, classify  # noqa: E402
from tests.classifier.dataset import BLIND_SETS, COMPLEXITIES, evaluate, format_matrix, load  # noqa: E402


def cold_import_ms() -> float:
    code = ("import time; t = time.perf_counter(); import sidecar.core.classifier; "
            "print((time.perf_counter() - t) * 1000)")
    runs = [float(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout) for _ in range(5)]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=50, help="passes over the labelled set")
    args = parser.parse_args()

    examples = load()
    calls = [(e.prompt, e.system, e.context) for e in examples]
    for call in calls:                       # warm-up: lazy regex compilation, caches
        classify(*call)
    samples: list[float] = []
    round_means: list[float] = []
    for _ in range(args.reps):
        start = len(samples)
        for call in calls:
            t0 = time.perf_counter_ns()
            classify(*call)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        round_means.append(statistics.fmean(samples[start:]))
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))]

    timing = {"calls": len(samples), "mean_us": round(statistics.fmean(samples), 1), "p50_us": round(pct(0.50), 1),
              "p99_us": round(pct(0.99), 1), "max_us": round(samples[-1], 1),
              "best_round_mean_us": round(min(round_means), 1), "cold_import_ms": round(cold_import_ms(), 1)}
    results: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "python": platform.python_version(),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cpus", "prompts": len(examples),
        "timing": timing,
    }
    for split in ("train", "heldout"):
        ev = evaluate(e for e in examples if e.split == split)
        results[split] = {"n": ev.n, "accuracy": round(ev.accuracy, 4),
                          "complexity_accuracy": round(ev.complexity_accuracy, 4),
                          "confusion": ev.confusion, "complexity_confusion": ev.complexity_confusion}
        print(f"{split}: {ev.n} prompts, task accuracy {ev.accuracy:.3f}, "
              f"complexity accuracy {ev.complexity_accuracy:.3f}")
        print(format_matrix(ev.confusion, TASK_TYPES))
        print(format_matrix(ev.complexity_confusion, COMPLEXITIES))
    blind = {}
    for path, about in BLIND_SETS:
        ev = evaluate(load(path=path))
        blind[path.name] = {"about": about, "n": ev.n, "accuracy": round(ev.accuracy, 4),
                            "complexity_accuracy": round(ev.complexity_accuracy, 4), "confusion": ev.confusion}
        print(f"{path.name}: {ev.n} prompts, task accuracy {ev.accuracy:.3f} ({about})")
    results["blind_sets"] = blind
    print(f"classify(): mean {timing['mean_us']} us, p50 {timing['p50_us']} us, p99 {timing['p99_us']} us, "
          f"max {timing['max_us']} us over {timing['calls']} calls; best round mean {timing['best_round_mean_us']} us;"
          f" cold import {timing['cold_import_ms']} ms")
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
