"""Regenerate the derived parts of ``sidecar/data/classifier.json``.

    .venv/bin/python -m tests.classifier.train            # heads + word model, rewrite the file
    .venv/bin/python -m tests.classifier.train --cv 5     # choose the word-model weight by CV on train

Two blocks are derived, everything else in the file is hand-written and kept as is (one
rule per line):

- ``heads``: for each rule/complexity regex, the literal word prefixes (at most 4 chars)
  that every match must start with, read from the regex's parse tree; ``word$`` when the
  word must be exactly ``word``. The classifier tries a regex only at words that start
  with (or equal) one of its heads; a regex with no literal start has no entry and is
  always searched.
- ``naive_bayes``: the word model, trained on the *train* split only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import re._constants as sre_c
import re._parser as sre_parse
from pathlib import Path
from typing import Any

import sidecar.core.classifier as clf

from .dataset import Example, load

DATA = Path(clf.__file__).resolve().parents[1] / "data" / "classifier.json"


def features(ex: Example) -> set[str]:
    text, _code = clf._split_prompt(ex.prompt)
    return clf._words(clf._norm(text))


def fit(examples: list[Example], alpha: float, min_count: int) -> dict[str, list[float]]:
    """Binary-feature multinomial NB: centred log P(feature | task), features seen in >= min_count prompts."""
    docs = [(features(ex), clf.TASK_TYPES.index(ex.task_type)) for ex in examples]
    seen: dict[str, int] = {}
    for feats, _ in docs:
        for f in feats:
            seen[f] = seen.get(f, 0) + 1
    vocab = sorted(f for f, n in seen.items() if n >= min_count)
    index = {f: i for i, f in enumerate(vocab)}
    counts = [[0] * len(vocab) for _ in clf.TASK_TYPES]
    for feats, label in docs:
        for f in feats:
            if f in index:
                counts[label][index[f]] += 1
    totals = [sum(row) for row in counts]
    table: dict[str, list[float]] = {}
    for f, j in index.items():
        logs = [math.log((counts[c][j] + alpha) / (totals[c] + alpha * len(vocab))) for c in range(len(clf.TASK_TYPES))]
        mean = sum(logs) / len(logs)
        table[f] = [round(v - mean, 3) for v in logs]
    return table


def heads(pattern: str) -> list[str] | None:
    """Literal word prefixes every match of ``(?<!\\w)(?:pattern)`` starts with, or None if there are none."""
    found = _walk(list(sre_parse.parse(pattern)), 0, "")
    return sorted(found) if found else None


def _walk(items: list[Any], i: int, acc: str) -> set[str] | None:
    if len(acc) >= clf._HEAD_LEN:
        return {acc}
    if i == len(items):
        return {acc} if acc else None
    op, av = items[i]
    word_ends = (op is sre_c.AT and av is sre_c.AT_BOUNDARY) or (op is sre_c.LITERAL and not re.match(r"\w", chr(av)))
    if acc and word_ends:
        return {acc + "$"}                                         # the word ends here: it must equal acc
    if op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):       # zero width
        return _walk(items, i + 1, acc)
    if op is sre_c.LITERAL and re.match(r"\w", chr(av)):
        return _walk(items, i + 1, acc + chr(av))
    if op is sre_c.SUBPATTERN:
        return _walk(list(av[-1]) + items[i + 1:], 0, acc)
    if op is sre_c.BRANCH:
        out: set[str] = set()
        for branch in av[1]:
            got = _walk(list(branch) + items[i + 1:], 0, acc)
            if got is None:
                return None
            out |= got
        return out
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
        low, high, item = av
        once = _walk(list(item) + items[i + 1:], 0, acc) if high != 0 else set()
        skip = _walk(items, i + 1, acc) if low == 0 else set()
        return None if once is None or skip is None else once | skip
    return {acc} if acc else None   # a class, a category, a non-word literal: the literal prefix ends here


def all_heads(data: dict[str, Any]) -> dict[str, list[str]]:
    patterns = [r[0] for r in data["prompt_rules"]]
    patterns += [p for key in ("high", "medium", "small") for p in data["complexity"][key]]
    out = {}
    for p in patterns:
        h = heads(p)
        if h:
            out[p] = h
    return out


def dump(data: dict[str, Any]) -> str:
    """JSON with one rule / one feature per line, so diffs of the data file stay readable."""
    out = ["{"]
    items = list(data.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if key == "heads":
            out.append(f"  {json.dumps(key)}: {{")
            names = list(value)
            out.extend(f"    {json.dumps(p, ensure_ascii=False)}: {json.dumps(value[p])}"
                       + ("," if j < len(names) - 1 else "") for j, p in enumerate(names))
            out.append(f"  }}{comma}")
        elif key in ("prompt_rules", "system_rules"):
            out.append(f"  {json.dumps(key)}: [")
            out.extend(f"    {json.dumps(r, ensure_ascii=False)}" + ("," if j < len(value) - 1 else "")
                       for j, r in enumerate(value))
            out.append(f"  ]{comma}")
        elif key == "naive_bayes":
            feats = value["features"]
            head = json.dumps({k: v for k, v in value.items() if k != "features"})
            out.append(f"  {json.dumps(key)}: {head[:-1]}, \"features\": {{")
            names = sorted(feats)
            out.extend(f"    {json.dumps(f, ensure_ascii=False)}: {json.dumps(feats[f])}"
                       + ("," if j < len(names) - 1 else "") for j, f in enumerate(names))
            out.append(f"  }}}}{comma}")
        else:
            out.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    out.append("}")
    return "\n".join(out) + "\n"


def cross_validate(train: list[Example], folds: int, alpha: float, min_count: int, weights: list[float]) -> None:
    """k-fold CV on the train split: the word model is refitted per fold; the rules are fixed."""
    saved = clf._NB, clf._NB_WEIGHT
    try:
        for weight in weights:
            right = 0
            for k in range(folds):
                fold_train = [ex for i, ex in enumerate(train) if i % folds != k]
                clf._NB = {f: tuple(v) for f, v in fit(fold_train, alpha, min_count).items()}
                clf._NB_WEIGHT = weight
                right += sum(ex.classify().task_type == ex.task_type
                             for i, ex in enumerate(train) if i % folds == k)
            print(f"weight {weight:.2f}: {folds}-fold CV accuracy on train {right / len(train):.3f}")
    finally:
        clf._NB, clf._NB_WEIGHT = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cv", type=int, default=0, help="k-fold cross-validation on train instead of writing")
    parser.add_argument("--weight", type=float, help="weight of the word model (default: keep the file's)")
    args = parser.parse_args()
    data = json.loads(DATA.read_text("utf-8"))
    nb = data["naive_bayes"]
    train = load("train")
    if args.cv:
        cross_validate(train, args.cv, nb["alpha"], nb["min_count"], [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
        return
    if args.weight is not None:
        nb["weight"] = args.weight
    nb["features"] = fit(train, nb["alpha"], nb["min_count"])
    data["heads"] = all_heads(data)
    data = {k: data[k] for k in data if k not in ("heads", "naive_bayes")} | {"heads": data["heads"],
                                                                          "naive_bayes": nb}
    DATA.write_text(dump(data), "utf-8")
    print(f"{len(data['heads'])} regex heads, {len(nb['features'])} word features from {len(train)} train prompts"
          f" -> {DATA}")


if __name__ == "__main__":
    main()
