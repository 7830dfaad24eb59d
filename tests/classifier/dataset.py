"""The labelled set and the evaluation helpers shared by the tests, the report and the benchmark."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.core.classifier import TASK_TYPES, Classification, classify

PROMPTS = Path(__file__).resolve().parent / "prompts.jsonl"
#: Blind checks of generalization, each written after a version of the classifier and committed
#: before that version was run on it. A set is scored once blind; after that it may be used for
#: tuning (the description says which). The held-out split of prompts.jsonl is never tuned on.
HERE = Path(__file__).resolve().parent
BLIND_SETS: tuple[tuple[Path, str], ...] = (
    (HERE / "fresh.jsonl", "blind round 1: scored 0.720 blind, tuned on since"),
    (HERE / "fresh2.jsonl", "blind round 2: scored 0.821 blind, tuned on since"),
    (HERE / "fresh3.jsonl", "blind round 3: scored 0.804 blind, tuned on since"),
    (HERE / "fresh4.jsonl", "blind round 4: scored 0.875 blind on the shipped rules; never tuned on"),
)
COMPLEXITIES = ("low", "medium", "high")


@dataclass(frozen=True)
class Example:
    prompt: str
    system: str | None
    context: Any
    task_type: str
    complexity: str
    split: str

    def classify(self) -> Classification:
        return classify(self.prompt, self.system, self.context)


def load(split: str | None = None, path: Path = PROMPTS) -> list[Example]:
    rows = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            rows.append(Example(d["prompt"], d.get("system"), d.get("context"), d["task_type"], d["complexity"],
                                d["split"]))
    return [r for r in rows if split is None or r.split == split]


@dataclass
class Evaluation:
    n: int
    accuracy: float
    complexity_accuracy: float
    confusion: dict[str, dict[str, int]]          # confusion[true][predicted]
    complexity_confusion: dict[str, dict[str, int]]
    mistakes: list[tuple[Example, Classification]]


def evaluate(examples: Iterable[Example]) -> Evaluation:
    confusion = {t: dict.fromkeys(TASK_TYPES, 0) for t in TASK_TYPES}
    cx_confusion = {c: dict.fromkeys(COMPLEXITIES, 0) for c in COMPLEXITIES}
    mistakes = []
    n = right = cx_right = 0
    for ex in examples:
        got = ex.classify()
        n += 1
        confusion[ex.task_type][got.task_type] += 1
        cx_confusion[ex.complexity][got.complexity] += 1
        right += got.task_type == ex.task_type
        cx_right += got.complexity == ex.complexity
        if got.task_type != ex.task_type:
            mistakes.append((ex, got))
    return Evaluation(n, right / max(n, 1), cx_right / max(n, 1), confusion, cx_confusion, mistakes)


def format_matrix(matrix: dict[str, dict[str, int]], labels: tuple[str, ...]) -> str:
    short = {t: t.replace("code_", "")[:8] for t in labels}
    width = max(len(t) for t in labels)
    lines = [" " * width + "  " + " ".join(f"{short[t]:>8}" for t in labels) + "   (rows: true, cols: predicted)"]
    for t in labels:
        lines.append(f"{t:>{width}}  " + " ".join(f"{matrix[t][p]:>8}" for p in labels))
    return "\n".join(lines)
