"""model:list-models and model:health through stdio, with providers up and down."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio


def test_list_models_merges_every_provider(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:list-models", {})
    assert_wire_valid(response, "model:list-models")
    models = response["result"]["models"]
    by_provider: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        by_provider.setdefault(model["provider"], []).append(model)
    assert set(by_provider) == {"openai", "anthropic", "ollama", "local-llm"}
    assert all(m["available"] for m in models)
    ollama = {m["id"]: m for m in by_provider["ollama"]}
    assert "llama3.2:latest" in ollama and "local" in ollama["llama3.2:latest"]["capabilities"]
    llama = by_provider["local-llm"][0]
    assert llama["contextWindow"] == 8192  # from the server's n_ctx_train
    haiku = next(m for m in by_provider["anthropic"] if m["id"] == "claude-3-5-haiku-20241022")
    assert haiku["contextWindow"] == 200000
    # Served from a loopback address, billed at its list price all the same ($0.80/$4 per 1M).
    assert haiku["costPer1kTokens"] == {"input": 0.0008, "output": 0.004}
    assert "local" in haiku["capabilities"]  # the address is local: data stays here


def test_an_unreachable_provider_is_marked_not_failed(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    fakes["anthropic"].stop()
    result = sidecar.result("model:list-models", {"refresh": True})
    anthropic = [m for m in result["models"] if m["provider"] == "anthropic"]
    assert anthropic and not any(m["available"] for m in anthropic)
    assert any(m["available"] for m in result["models"] if m["provider"] == "openai")
    only = sidecar.result("model:list-models", {"provider": "ollama"})
    assert {m["provider"] for m in only["models"]} == {"ollama"}
    unknown = sidecar.call("model:list-models", {"provider": "ghost"})
    assert unknown["error"]["data"]["type"] == "InvalidParams"


def test_health_reports_availability_latency_and_limits(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": "openai"}})
    fakes["ollama"].stop()
    response = sidecar.call("model:health")
    assert_wire_valid(response, "model:health")
    health = response["result"]["providers"]
    assert health["openai"]["available"] is True
    assert health["openai"]["latencyMsP50"] > 0
    # The probe itself (GET /models) brings fresher headers than the earlier chat reply.
    limits = health["openai"]["rateLimit"]
    assert isinstance(limits["remainingRequests"], int) and isinstance(limits["resetRequestsMs"], int)
    assert health["ollama"]["available"] is False and health["ollama"]["lastError"]
    assert health["local-llm"]["available"] is True and health["local-llm"]["local"] is True


def test_health_without_keys_says_why(spawn: Spawn) -> None:
    sidecar = spawn({"providers": {"ollama": {"baseURL": "http://127.0.0.1:9"}}})
    health = sidecar.result("model:health")["providers"]
    openai = health["openai"]
    assert (openai["available"], openai["enabled"], openai["local"]) == (False, True, False)
    assert openai["lastError"] == "no API key configured" and openai["coolDownMs"] == 0
    assert health["ollama"]["available"] is False


def test_a_config_change_invalidates_cached_models(spawn: Spawn, fakes: dict[str, Any]) -> None:
    from tests.fakes import FakeServer

    sidecar = spawn(fake_config(fakes))
    before = {m["id"] for m in sidecar.result("model:list-models", {"provider": "ollama"})["models"]}
    with FakeServer("ollama", models=["phi4:latest"]).start() as other:
        sidecar.result("model:set-config", {"config": {"providers": {"ollama": {"baseURL": other.base_url}}}})
        after = {m["id"] for m in sidecar.result("model:list-models", {"provider": "ollama"})["models"]}
    assert "llama3.2:latest" in before and after == {"phi4:latest"}


def test_local_windows_reported_by_the_server_reach_the_selector(spawn: Spawn) -> None:
    import time

    from tests.fakes import FakeServer

    with FakeServer("ollama", context_lengths={"llama3.2:latest": 65536}).start() as ollama:
        sidecar = spawn({"providers": {"ollama": {"baseURL": ollama.base_url}},
                         "defaultProvider": "ollama", "fallbackChain": ["ollama"]})
        deadline = time.monotonic() + 10
        window = None
        while time.monotonic() < deadline:
            result = sidecar.result("model:select", {"request": {"prompt": "hi"}})
            window = result["candidates"][0]["contextWindow"]
            if window == 65536:
                break
            time.sleep(0.1)
        assert window == 65536  # learnt from /api/show at start-up, without a list-models call
        assert any(r.path == "/api/show" for r in ollama.all_requests)
