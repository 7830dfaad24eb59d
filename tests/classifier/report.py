"""Accuracy and confusion matrices of the classifier on the labelled set.

    .venv/bin/python -m tests.classifier.report [--train-mistakes]

``--train-mistakes`` lists the misclassified *train* prompts (for tuning). Held-out
mistakes are deliberately never listed: tune on train only.
"""

from __future__ import annotations

import argparse

from sidecar.core.classifier import TASK_TYPES

from .dataset import BLIND_SETS, COMPLEXITIES, Evaluation, evaluate, format_matrix, load


def summary(name: str, ev: Evaluation) -> str:
    return "\n".join([
        f"== {name}: {ev.n} prompts, task accuracy {ev.accuracy:.3f}, complexity accuracy {ev.complexity_accuracy:.3f}",
        format_matrix(ev.confusion, TASK_TYPES),
        "complexity:",
        format_matrix(ev.complexity_confusion, COMPLEXITIES),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-mistakes", action="store_true", help="list misclassified train prompts")
    args = parser.parse_args()
    train = evaluate(load("train"))
    heldout = evaluate(load("heldout"))
    print(summary("train", train))
    print()
    print(summary("heldout", heldout))
    for path, about in BLIND_SETS:
        print()
        print(summary(f"{path.name} ({about})", evaluate(load(path=path))))
    if args.train_mistakes:
        print("\n== train mistakes")
        for ex, got in train.mistakes:
            top = sorted(got.scores.items(), key=lambda kv: -kv[1])[:3]
            print(f"- [{ex.task_type} -> {got.task_type}] {ex.prompt[:90]!r} sys={bool(ex.system)} "
                  f"ctx={type(ex.context).__name__} {top} {got.signals}")


if __name__ == "__main__":
    main()
