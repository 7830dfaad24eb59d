"""The selector's choice follows prices, windows, priorities, measured latency, availability."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.selector import Candidate, Exclusion, Need, infer_tier, rank
from sidecar.core.tokens import estimate_text as estimate_tokens

FRONTIER = Candidate("anthropic", "anthropic", "claude-opus-4-8", False, "frontier", 1_000_000, 5.0, 25.0,
                     frozenset({"code", "reasoning"}))
STRONG = Candidate("openai", "openai", "gpt-4o", False, "strong", 128_000, 2.5, 10.0, frozenset({"code"}))
FAST = Candidate("openai", "openai", "gpt-4o-mini", False, "fast", 128_000, 0.15, 0.6, frozenset({"code"}))
LOCAL = Candidate("ollama", "ollama", "qwen2.5-coder:7b", True, "fast", 32_768, capabilities=frozenset({"code"}))
SMALL = Candidate("ollama", "ollama", "llama3.2", True, "small", 8_192)
ALL = [FRONTIER, STRONG, FAST, LOCAL, SMALL]

HARD = Need("planning", "high", prompt_tokens=3_000, output_tokens=2_000)
EASY = Need("code_explanation", "low", prompt_tokens=200, output_tokens=300)


def best(need: Need, candidates: list[Candidate], **kw: object) -> str:
    return rank(need, candidates, **kw)[0].candidate.model  # type: ignore[arg-type]


def test_priority_changes_the_choice() -> None:
    assert best(HARD, ALL, priority="quality") == "claude-opus-4-8"
    assert best(HARD, ALL, priority="cost") in {"qwen2.5-coder:7b", "llama3.2"}
    assert best(EASY, ALL, priority="speed") in {"gpt-4o-mini", "qwen2.5-coder:7b"}


def test_complexity_decides_whether_a_small_model_is_good_enough() -> None:
    easy = {s.candidate.model: s.factors["task"] for s in rank(EASY, ALL)}
    hard = {s.candidate.model: s.factors["task"] for s in rank(HARD, ALL)}
    assert easy["llama3.2"] > 0.7 > hard["llama3.2"]
    assert hard["claude-opus-4-8"] - hard["llama3.2"] > easy["claude-opus-4-8"] - easy["llama3.2"]


def test_price_changes_move_the_choice() -> None:
    need = Need("code_generation", "medium", 2_000, 1_000)
    cloud = [STRONG, FAST]
    assert best(need, cloud, priority="cost") == "gpt-4o-mini"
    cheaper_strong = replace(STRONG, input_per_1m=0.01, output_per_1m=0.01)
    assert best(need, [cheaper_strong, FAST], priority="cost") == "gpt-4o"


def test_context_window_is_a_hard_filter_with_a_reason() -> None:
    need = Need("code_review", "medium", prompt_tokens=20_000, output_tokens=1_000)
    ranked = rank(need, ALL, priority="cost")
    small = next(s for s in ranked if s.candidate.model == "llama3.2")
    assert small.excluded is not None and small.excluded.kind is Exclusion.WINDOW
    assert (small.excluded.needed, small.excluded.limit) == (21_000, 8192)
    assert "window is 8192" in small.reason()
    assert ranked[-1] is small
    bigger = replace(SMALL, context_window=64_000)
    assert rank(need, [bigger])[0].excluded is None


def test_measured_latency_replaces_the_prior() -> None:
    need = Need("code_generation", "low", 300, 300)
    slow_fast = replace(FAST, latency_p50_ms=9_000, latency_samples=10)
    quick_local = replace(LOCAL, latency_p50_ms=150, latency_samples=10)
    assert best(need, [slow_fast, quick_local], priority="speed") == "qwen2.5-coder:7b"
    assert best(need, [replace(FAST, latency_p50_ms=100, latency_samples=10),
                       replace(LOCAL, latency_p50_ms=9_000, latency_samples=10)], priority="speed") == "gpt-4o-mini"
    few = replace(FAST, latency_p50_ms=100, latency_samples=1)  # too few samples: prior stays
    assert rank(need, [few])[0].factors["speed"] == rank(need, [FAST])[0].factors["speed"]


def test_error_rate_and_availability_sink_a_candidate() -> None:
    need = Need("code_generation", "medium", 1_000, 500)
    assert best(need, [STRONG, replace(FAST, error_rate=0.9)], priority="cost") == "gpt-4o"
    down = replace(FAST, available=False)
    ranked = rank(need, [down, STRONG], priority="cost")
    assert ranked[0].candidate.model == "gpt-4o" and ranked[1].candidate is down


def test_hard_filters_max_cost_and_local_only() -> None:
    ranked = rank(HARD, ALL, max_cost_usd=0.001)
    allowed = {s.candidate.model for s in ranked if s.excluded is None}
    assert allowed == {"qwen2.5-coder:7b", "llama3.2"}
    assert all(s.excluded.kind is Exclusion.MAX_COST for s in ranked if s.excluded)
    assert all("maxCostUsd" in s.reason() for s in ranked if s.excluded)
    ranked = rank(EASY, ALL, local_only=True)
    assert {s.candidate.model for s in ranked if s.excluded is None} == {"qwen2.5-coder:7b", "llama3.2"}


def test_unpriced_cloud_models_are_not_assumed_cheap() -> None:
    unknown = Candidate("custom", "custom", "mystery", False, "fast", 128_000, priced=False)
    assert best(EASY, [unknown, FAST], priority="cost") == "gpt-4o-mini"


def test_reasons_are_readable() -> None:
    reason = rank(EASY, [FAST])[0].reason()
    assert reason.startswith("openai/gpt-4o-mini: score ") and "fast tier" in reason and "$" in reason


@pytest.mark.parametrize(("model", "local", "tier"), [
    ("qwen2.5-coder:32b", True, "strong"), ("llama3.1:8b", True, "fast"), ("SmolLM2-135M-Instruct", True, "small"),
    ("llama3.2", True, "small"), ("some-hosted-model", False, "fast"), ("deepseek-r1:70b", True, "strong")])
def test_tier_inference_for_unknown_models(model: str, local: bool, tier: str) -> None:
    assert infer_tier(model, local=local) == tier


def test_token_estimate_errs_high() -> None:
    english = "The quick brown fox jumps over the lazy dog. " * 20
    assert estimate_tokens(english) >= len(english) / 4
    assert estimate_tokens("\u4f60\u597d" * 100) >= 200  # CJK: about a token per character


@given(st.lists(st.sampled_from(ALL), min_size=1, max_size=6), st.sampled_from(["balanced", "quality", "cost", "speed"]),
       st.integers(0, 200_000), st.integers(1, 50_000), st.sampled_from(["low", "medium", "high"]))
def test_ranking_is_total_and_ordered(cands: list[Candidate], priority: str, prompt: int, out: int, cx: str) -> None:
    ranked = rank(Need("testing", cx, prompt, out), cands, priority=priority)
    assert len(ranked) == len(cands)
    kept = [s.score for s in ranked if s.excluded is None]
    assert kept == sorted(kept, reverse=True)
    assert all(0 <= s <= 1.1 for s in kept)
    seen_excluded = False
    for s in ranked:
        seen_excluded = seen_excluded or s.excluded is not None
        assert s.excluded is not None or not seen_excluded  # excluded ones come last
