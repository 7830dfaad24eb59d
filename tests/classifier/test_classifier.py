"""Task classifier: held-out accuracy, the unnamed-task examples, determinism, context and
system prompt influence, complexity ordering, robustness on any input, and consistency of
the derived data (regex heads, word model trained on the train split only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sidecar.core.classifier as clf
from sidecar.core.classifier import TASK_TYPES, Classification, classify

from .dataset import BLIND_SETS, COMPLEXITIES, evaluate, format_matrix, load
from .report import summary
from .train import DATA, all_heads, fit

REPO = Path(__file__).resolve().parents[2]

DIFF = """diff --git a/app/cache.py b/app/cache.py
--- a/app/cache.py
+++ b/app/cache.py
@@ -10,3 +10,6 @@ class Cache:
     def get(self, key):
-        return self._data.get(key)
+        entry = self._data.get(key)
+        if entry is None or entry[1] < time.time():
+            return None
+        return entry[0]
"""
CONFIG_CODE = "class Config:\n    def load(self):\n        return json.loads(self.path.read_text())\n"


def check_valid(c: Classification) -> None:
    assert isinstance(c, Classification)
    assert c.task_type in TASK_TYPES
    assert c.complexity in COMPLEXITIES
    assert 0.0 <= c.confidence <= 1.0
    assert list(c.scores) == list(TASK_TYPES)
    assert all(0.0 <= v <= 1.0 for v in c.scores.values())
    assert abs(sum(c.scores.values()) - 1.0) < 1e-3
    assert max(c.scores, key=lambda t: c.scores[t]) == c.task_type or c.confidence == 0.0
    assert c.signals and all(isinstance(s, str) and s for s in c.signals)


# ----------------------------------------------------------------------------- the labelled set

def test_labelled_set_shape() -> None:
    rows = load()
    assert len(rows) >= 210
    for task in TASK_TYPES:
        of_type = [r for r in rows if r.task_type == task]
        assert len(of_type) >= 30, task
        # the split was fixed before tuning: every third prompt of each type, in writing order
        assert [r.split for r in of_type] == ["heldout" if i % 3 == 2 else "train" for i in range(len(of_type))]
    assert {r.complexity for r in rows} == set(COMPLEXITIES)


def test_heldout_accuracy() -> None:
    train, heldout = evaluate(load("train")), evaluate(load("heldout"))
    print()
    print(summary("train", train))
    print(summary("heldout", heldout))
    assert heldout.n >= 70
    assert heldout.accuracy >= 0.90
    assert train.accuracy >= 0.90


def test_blind_sets_do_not_regress() -> None:
    """Prompts written after the rules (see README): a floor against regressions, not a tuning target."""
    for path, about in BLIND_SETS:
        ev = evaluate(load(path=path))
        print(f"{path.name}: {ev.accuracy:.3f} ({about})")
        assert ev.accuracy >= 0.80, path.name


# ----------------------------------------------------------------------------- unnamed tasks

@pytest.mark.parametrize(("prompt", "expected"), [
    ("make sure this handles empty input", "testing"),
    ("what does this regex do", "code_explanation"),
    ("can you look over this before I merge", "code_review"),
    ("this function is too long, split it up", "refactoring"),
    ("how should I structure the modules for a plugin system", "planning"),
    ("add a docstring", "documentation"),
    ("write the README section", "documentation"),
    ("I need a function that parses dates", "code_generation"),
])
def test_requests_that_never_name_the_task(prompt: str, expected: str) -> None:
    got = classify(prompt)
    assert got.task_type == expected, got
    assert got.signals


def test_signals_explain_the_decision() -> None:
    got = classify("what does this regex do", context=r"^\d{3}-\d{4}$")
    assert got.task_type == "code_explanation"
    assert "asks 'what does ... do'" in got.signals
    assert got.confidence > 0.5


# ----------------------------------------------------------------------------- determinism

def test_same_input_same_output() -> None:
    for ex in load()[::7]:
        assert ex.classify() == ex.classify()


def test_independent_of_hash_seed() -> None:
    """Two fresh processes with different hash seeds classify the whole set identically."""
    code = ("import json, dataclasses; from tests.classifier.dataset import load; "
            "print(json.dumps([dataclasses.astuple(e.classify()) for e in load()]))")
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              check=True)
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]


# ----------------------------------------------------------------------------- context and system prompt

def test_system_prompt_changes_the_answer() -> None:
    answers = {system: classify("the config module", system, CONFIG_CODE).task_type for system in (
        "You are a technical writer.", "You write unit tests with pytest.", "You are a strict code reviewer.")}
    assert answers == {"You are a technical writer.": "documentation",
                       "You write unit tests with pytest.": "testing",
                       "You are a strict code reviewer.": "code_review"}


def test_context_changes_the_answer() -> None:
    prompt = "can you help with this"
    assert classify(prompt, context=DIFF).task_type == "code_review"
    stub = {"file": "net/fetch.py", "selection": "def fetch(url):\n    # TODO: retries\n    raise NotImplementedError\n"}
    assert classify(prompt, context=stub).task_type == "code_generation"
    test_file = {"file": "tests/test_fetch.py", "selection": "def test_fetch():\n    assert fetch('x')\n"}
    assert classify(prompt, context=test_file).task_type == "testing"
    assert classify(prompt, context={"file": "docs/install.md"}).task_type == "documentation"


def test_code_in_the_prompt_is_not_read_as_intent() -> None:
    """Words inside pasted code (``review``, ``test``) must not count as the request."""
    prompt = "explain this\n```python\ndef review_test_docs():\n    return run_tests(review=True)\n```"
    assert classify(prompt).task_type == "code_explanation"


def test_negations() -> None:
    assert classify("think through how we'd add caching, don't write code yet").task_type == "planning"
    assert classify("refactor this, no tests needed", context=CONFIG_CODE).task_type == "refactoring"


# ----------------------------------------------------------------------------- complexity

def test_complexity_ordering() -> None:
    one_liner = classify("bash one-liner to count lines in all .go files")
    architecture = classify(
        "Design the architecture for splitting our monolith into services (auth, billing, inventory, "
        "notifications) with an event bus between them, and a plan to migrate the whole codebase over",
        context={"files": ["auth/service.py", "billing/service.py", "inventory/service.py", "core/app.py"]})
    module = classify("add retries with exponential backoff to this HTTP client class", context=CONFIG_CODE * 8)
    assert one_liner.complexity == "low"
    assert architecture.complexity == "high"
    assert module.complexity == "medium"
    assert classify("fix the typo", context="x = 1").complexity == "low"


def test_context_size_raises_complexity() -> None:
    small = classify("review this", context=CONFIG_CODE)
    big = classify("review this", context={"files": [{"path": f"pkg/m{i}.py", "content": CONFIG_CODE * 30}
                                                     for i in range(6)]})
    assert COMPLEXITIES.index(big.complexity) > COMPLEXITIES.index(small.complexity)


# ----------------------------------------------------------------------------- any input

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.text(max_size=2000), system=st.none() | st.text(max_size=300), context=json_values)
@example(prompt="", system=None, context=None)
@example(prompt="", system="", context="")
@example(prompt="x" * 2_000_000, system="y" * 100_000, context="z" * 1_000_000)
@example(prompt="(" * 200_000, system=None, context={"files": ["a.py"] * 100_000})
@example(prompt="🙂 ünïcödé \u202e\u0000\ud800 ```\n```" * 1000, system="\u2019s", context=[[[[["deep"]]]]])
@example(prompt="write a test " * 50_000, system=None, context={"lines": 10**12, "file": 5})
def test_any_input_gives_a_valid_classification(prompt: str, system: str | None, context: Any) -> None:
    check_valid(classify(prompt, system, context))


def test_deeply_nested_and_odd_context() -> None:
    nested: dict[str, Any] = {}
    cur = nested
    for _ in range(50_000):
        cur["x"] = {}
        cur = cur["x"]
    check_valid(classify("explain", context=nested))
    check_valid(classify("explain", context={1: b"bytes", (1, 2): {3, 4}, "x": object()}))
    check_valid(classify(12345, None, None))  # type: ignore[arg-type]


def test_huge_inputs_stay_fast() -> None:
    started = time.perf_counter()
    check_valid(classify("write a function " * 100_000, "be brief " * 10_000, {"selection": "x = f(1)\n" * 100_000}))
    assert time.perf_counter() - started < 0.5


def test_fast_on_the_labelled_set() -> None:
    rows = [(e.prompt, e.system, e.context) for e in load()]
    for r in rows:
        classify(*r)
    started = time.perf_counter()
    for _ in range(3):
        for r in rows:
            classify(*r)
    mean_us = (time.perf_counter() - started) / (3 * len(rows)) * 1e6
    assert mean_us < 1000, mean_us   # typically ~100 us; generous for noisy CI machines


def test_stdlib_only() -> None:
    # Loaded modules only: sidecar/__init__.py marks httpx's command-line tool absent
    # (a None entry), which loads nothing.
    code = ("import sys; before = set(sys.modules); import sidecar.core.classifier; "
            "print(sorted(m.split('.')[0] for m in set(sys.modules) - before if sys.modules[m] is not None))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    third_party = {m for m in eval(out) if m not in sys.stdlib_module_names and m != "sidecar"}
    assert not third_party


# ----------------------------------------------------------------------------- derived data

def data() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DATA.read_text("utf-8"))
    return loaded


def test_heads_are_up_to_date() -> None:
    assert data()["heads"] == all_heads(data()), "run: python -m tests.classifier.train"


def test_word_model_is_trained_on_the_train_split_only() -> None:
    nb = data()["naive_bayes"]
    assert nb["features"] == fit(load("train"), nb["alpha"], nb["min_count"]), "run: python -m tests.classifier.train"


def brute_force(text: str) -> list[int]:
    gated = clf._TEXT_RULES
    return [i for i, p in enumerate(gated._patterns) if re.search(r"(?<!\w)(?:" + p + ")", text)]


def test_gating_finds_exactly_what_a_full_search_finds() -> None:
    for ex in load():
        text = clf._norm(clf._split_prompt(ex.prompt)[0])
        assert clf._TEXT_RULES.matches(text, clf._word_offsets(text)) == brute_force(text), ex.prompt


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["what", "does", "this", "do", "why", "is", "a", "an", "the", "test", "tests", "write",
                                 "review", "refactor", "docstring", "plan", "i", "need", "function", "make", "sure",
                                 "it", "handles", "empty", "input", "?", "don't", "code", "yet", "before", "merge",
                                 "e2e", "#[test]", "api.md", "10k", "rps", "200", "lines", "-", "dry-run", "a.b"]),
                max_size=25).map(" ".join) | st.text(max_size=80))
def test_gating_equivalence_on_random_text(raw: str) -> None:
    text = clf._norm(raw)
    assert clf._TEXT_RULES.matches(text, clf._word_offsets(text)) == brute_force(text)


def test_confusion_matrix_format() -> None:
    ev = evaluate(load("heldout"))
    table = format_matrix(ev.confusion, TASK_TYPES)
    assert all(t in table for t in TASK_TYPES)
    assert sum(sum(row.values()) for row in ev.confusion.values()) == ev.n
