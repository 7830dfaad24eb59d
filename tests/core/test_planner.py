"""The planner: which model first and why, from config, registry, stats and the task."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.config import config_from_doc
from sidecar.core.planner import Planner
from sidecar.core.pool import ProviderPool
from sidecar.core.registry import Catalog, ModelRegistry
from sidecar.core.stats import StatsBook
from sidecar.core.tokens import estimate as request_tokens
from sidecar.errors import BudgetExceededError, ValidationError
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import HttpClientFactory
from sidecar.wire.model import ModelRequest, ModelSelection
from tests.support.scripted import Script, ScriptedProvider

SETTINGS = [
    ProviderSettings("openai", "openai", "https://api.openai.com/v1", "gpt-4o-mini", api_key="sk-a",
                     models=("gpt-4o",)),
    ProviderSettings("anthropic", "anthropic", "https://api.anthropic.com", "claude-opus-4-8", api_key="sk-b"),
    ProviderSettings("ollama", "ollama", "http://127.0.0.1:11434", "qwen2.5-coder:7b", local=True),
]


def planner(doc: dict[str, Any] | None = None, task: tuple[str, str] = ("code_generation", "medium"),
            stats: StatsBook | None = None) -> Planner:
    cfg = config_from_doc({"defaultProvider": "openai", **(doc or {})})
    pool = ProviderPool(lambda s, _h: ScriptedProvider(s, Script()), HttpClientFactory())
    pool.configure(SETTINGS)
    registry = ModelRegistry(Catalog.load(), lambda: cfg.model_overrides)
    return Planner(pool, lambda: cfg, registry, stats or StatsBook(),
                   classify=lambda _p, _s, _c: (task[0], task[1], ("test signal",)))


def req(**fields: Any) -> ModelRequest:
    return ModelRequest.model_validate({"prompt": "do the thing", **fields})


def first(p: Planner, request: ModelRequest | None = None, **selection: Any) -> tuple[str, str]:
    decision = p.decide(request or req(), ModelSelection.model_validate(selection) if selection else None)
    return decision.candidates[0].provider, decision.candidates[0].model


def test_priority_moves_the_choice_across_providers() -> None:
    p = planner(task=("planning", "high"))
    assert first(p, priority="quality") == ("anthropic", "claude-opus-4-8")
    assert first(p, priority="cost") == ("ollama", "qwen2.5-coder:7b")


def test_task_and_complexity_from_the_classifier_or_the_request() -> None:
    p = planner(task=("code_explanation", "low"))
    decision = p.decide(req(), None)
    assert (decision.task_type, decision.complexity) == ("code_explanation", "low")
    assert decision.reasons[0].startswith("task: code_explanation, complexity low (test signal")
    decision = p.decide(req(taskType="testing"), None)
    assert decision.task_type == "testing" and "taskType given" in decision.reasons[0]


def test_every_configured_model_is_a_candidate_and_fallbacks_follow_rank() -> None:
    decision = planner().decide(req(), None)
    listed = {(c.provider, c.model) for c in decision.candidates}
    assert listed == {("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-opus-4-8"),
                      ("ollama", "qwen2.5-coder:7b")}
    scores = [s.score for s in decision.ranking if s.excluded is None]
    assert scores == sorted(scores, reverse=True)
    assert any(r.startswith("chosen (best score)") for r in decision.reasons)
    assert sum(r.startswith("fallback ") for r in decision.reasons) == 3
    assert len(planner().decide(req(), ModelSelection(fallback=False)).candidates) == 1


def test_a_requested_model_is_pinned_on_its_provider() -> None:
    p = planner()
    assert first(p, req(modelId="gpt-4o")) == ("openai", "gpt-4o")
    assert first(p, modelId="claude-3-5-haiku-20241022") == ("anthropic", "claude-3-5-haiku-20241022")
    assert first(p, provider="ollama", modelId="llama3.1:8b") == ("ollama", "llama3.1:8b")
    with pytest.raises(BudgetExceededError):
        p.decide(req(maxTokens=100_000), ModelSelection(modelId="claude-opus-4-8", maxCostUsd=0.01))


def test_context_that_fits_nowhere_is_a_context_error() -> None:
    huge = req(prompt="x" * 3_500_000)  # ~1.2M tokens by the high estimate
    with pytest.raises(ValidationError) as info:
        planner().decide(huge, None)
    assert info.value.context_too_long


def test_a_long_prompt_leaves_only_the_models_that_fit() -> None:
    long = req(prompt="word " * 60_000)  # ~100k tokens: the 32k local window is out
    decision = planner().decide(long, ModelSelection(priority="cost"))
    assert all(c.provider != "ollama" for c in decision.candidates)
    assert any("excluded" in r and "window is 8192" in r for r in decision.reasons)  # unknown model: small


def test_overrides_change_what_the_selector_sees() -> None:
    doc = {"modelOverrides": {"ollama/qwen2.5-coder:7b": {"contextWindow": 200_000, "tier": "frontier"}}}
    long = req(prompt="word " * 60_000)
    decision = planner(doc).decide(long, ModelSelection(priority="cost"))
    assert decision.candidates[0].provider == "ollama"
    assert decision.candidates[0].tier == "frontier"


def test_max_cost_excludes_expensive_candidates() -> None:
    decision = planner().decide(req(maxTokens=4000), ModelSelection(maxCostUsd=0.005))
    assert {c.provider for c in decision.candidates} == {"ollama", "openai"}
    assert all(c.model != "gpt-4o" for c in decision.candidates)


def test_a_provider_in_cool_down_ranks_last() -> None:
    clock = [0.0]
    stats = StatsBook(clock=lambda: clock[0])
    p = planner(stats=stats, task=("planning", "high"))
    stats.failure("anthropic", "NetworkError", "refused", provider_wide=True)
    decision = p.decide(req(), ModelSelection(priority="quality"))
    assert decision.candidates[0].provider != "anthropic"
    assert decision.candidates[-1].provider == "anthropic"
    def anthropic_score() -> float:
        ranking = p.decide(req(), ModelSelection(priority="quality")).ranking
        return next(s.score for s in ranking if s.candidate.provider == "anthropic")

    during = anthropic_score()
    clock[0] = 31.0  # cool-down over: the next request may probe it again
    assert anthropic_score() > 3 * during


def test_token_estimate_counts_every_part_of_the_request() -> None:
    base = request_tokens(req(prompt="hello"))
    bigger = request_tokens(req(prompt="hello", systemPrompt="be nice " * 50, context={"file": "x" * 300},
                                messages=[{"role": "user", "content": "earlier " * 30}]))
    assert bigger > base + 100 + 100 + 50
