"""Regressions of the core redesign, through stdio: money follows the model and not the
address, one token estimate everywhere (CJK prompts size Ollama's window), and
``ModelInfo.version`` filled from what providers report."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import Reply
from tests.stdio.conftest import Spawn, fake_config

pytestmark = pytest.mark.stdio

# gpt-4o's list price in the shipped catalog: $2.50 / $10 per 1M tokens.
GPT4O_OUTPUT_PER_1M = 10.0


def only(fakes: dict[str, Any], name: str, **top: Any) -> dict[str, Any]:
    return fake_config(fakes, defaultProvider=name, fallbackChain=[name], **top)


def test_a_loopback_openai_entry_bills_the_list_price(spawn: Spawn, fakes: dict[str, Any]) -> None:
    # The fake listens on 127.0.0.1: a local proxy in front of the real API.
    fakes["openai"].set_default(Reply("ok", usage=(1000, 1000)))
    sidecar = spawn(only(fakes, "openai"))
    result = sidecar.result("model:generate", {"request": {"prompt": "hi", "modelId": "gpt-4o", "maxTokens": 1000}})
    expected = (1000 * 2.5 + 1000 * GPT4O_OUTPUT_PER_1M) / 1e6
    assert result["metadata"]["costUsd"] == pytest.approx(expected)
    usage = sidecar.result("model:usage")
    assert usage["daily"]["spentUsd"] == pytest.approx(expected)
    # ... so maxCostUsd refuses it, before anything is sent upstream.
    sent = len(fakes["openai"].requests)
    refused = sidecar.call("model:generate", {"request": {"prompt": "hi", "modelId": "gpt-4o", "maxTokens": 1000},
                                              "selection": {"maxCostUsd": 0.0001}})
    assert refused["error"]["data"]["type"] == "BudgetExceededError"
    assert len(fakes["openai"].requests) == sent


def test_a_loopback_openai_entry_is_blocked_by_the_budget(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].set_default(Reply("ok", usage=(10, 10)))
    sidecar = spawn(only(fakes, "openai", budget={"dailyLimit": 0.001}))
    answer = sidecar.call("model:generate", {"request": {"prompt": "hi", "modelId": "gpt-4o", "maxTokens": 1000}})
    assert answer["error"]["data"]["type"] == "BudgetExceededError"
    assert fakes["openai"].requests == []


def test_ollama_and_custom_models_stay_free_unless_priced(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].set_default(Reply("ok", usage=(1000, 1000)))
    sidecar = spawn(only(fakes, "ollama", budget={"dailyLimit": 0.000001}))
    result = sidecar.result("model:generate", {"request": {"prompt": "hi", "maxTokens": 1000}})
    assert result["metadata"]["costUsd"] == 0


def test_a_cjk_prompt_gets_a_window_that_holds_it(spawn: Spawn, fakes: dict[str, Any]) -> None:
    # 6,000 CJK characters are about 6,000 tokens: more than Ollama's default window.
    prompt = "\u4f60\u597d\u4e16\u754c\u3002" * 1200
    sidecar = spawn(only(fakes, "ollama", modelOverrides={"ollama/llama3.2": {"contextWindow": 131072}}))
    sidecar.result("model:generate", {"request": {"prompt": prompt, "maxTokens": 200}})
    body = fakes["ollama"].requests[-1].json
    num_ctx = body["options"]["num_ctx"]
    assert num_ctx >= 6000 + 200
    selected = sidecar.result("model:select", {"request": {"prompt": prompt, "maxTokens": 200}})
    # The window sent to the server holds what the planner estimated: one estimate.
    assert num_ctx >= selected["promptTokens"] + 200


def test_model_info_version_comes_from_the_provider(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].set_default(Reply("ok", model="gpt-4o-2024-08-06"))
    sidecar = spawn(fake_config(fakes))
    models = sidecar.result("model:list-models", {"refresh": True})["models"]
    ollama = [m for m in models if m["provider"] == "ollama" and m["available"]]
    assert ollama and all(len(m["version"]) == 12 for m in ollama)
    dated = [m for m in models if m["id"].endswith("-2024-08-06")]
    assert all(m["version"] == "2024-08-06" for m in dated)
    sidecar.result("model:generate", {"request": {"prompt": "hi", "modelId": "gpt-4o"},
                                      "selection": {"provider": "openai"}})
    after = sidecar.result("model:list-models", {"provider": "openai", "refresh": True})["models"]
    gpt4o = next(m for m in after if m["id"] == "gpt-4o")
    assert gpt4o["version"] == "gpt-4o-2024-08-06"
