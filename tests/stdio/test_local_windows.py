"""What a local server really loaded, through stdio: the window it runs a model with
(llama.cpp ``/props``, LM Studio ``/api/v0/models``, Ollama ``/api/ps``) decides, before
anything is sent, whether a prompt fits, and which ``num_ctx`` Ollama is sent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import FakeServer, Reply
from tests.fakes.local_servers import LocalServerFake
from tests.stdio.conftest import CUSTOM_KEY, Spawn

pytestmark = pytest.mark.stdio

LLAMA_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFF = {"baseURL": "http://127.0.0.1:9/v1", "defaultModel": "off", "enabled": False}


def only_custom(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"openai": {**OFF, "baseURL": "https://api.openai.com/v1"}, "anthropic": {
            **OFF, "baseURL": "https://api.anthropic.com"}, "ollama": {**OFF, "baseURL": "http://127.0.0.1:9"},
            "custom": {"local-llm": OFF, name: {"rateLimit": {"maxRetries": 0}, **entry}}},
        "defaultProvider": name, "fallbackChain": [],
    }


def only_ollama(fake: FakeServer) -> dict[str, Any]:
    config = only_custom("unused", {**OFF})
    config["providers"]["ollama"] = {"baseURL": fake.base_url, "defaultModel": "llama3.2",
                                     "rateLimit": {"maxRetries": 0}}
    config.update(defaultProvider="ollama", fallbackChain=[])
    return config


def words(tokens: int) -> str:
    """A prompt the sidecar estimates at about ``tokens`` tokens (one per 3 bytes)."""
    return "abc" * tokens


def test_llamacpp_refuses_a_prompt_longer_than_the_loaded_window(spawn: Spawn) -> None:
    # Trained for 8192 tokens, started with -c 2048: the server cuts or refuses a longer
    # prompt only after it was sent. The sidecar refuses it first, naming both numbers.
    with FakeServer("llamacpp", api_key=CUSTOM_KEY, context_lengths={LLAMA_MODEL: 8192}).start() as fake:
        fake.renderer.n_ctx = 2048  # type: ignore[attr-defined]
        sidecar = spawn(only_custom("box", {"baseURL": fake.base_url, "apiKey": CUSTOM_KEY,
                                            "defaultModel": LLAMA_MODEL}))
        answer = sidecar.call("model:generate", {"request": {"prompt": words(3000), "maxTokens": 10}})
        error = answer["error"]
        assert error["code"] == -32005 and error["data"]["type"] == "ValidationError", error
        assert error["data"]["contextWindow"] == 2048 and error["data"]["promptTokens"] > 3000, error
        assert "2048" in error["message"] and str(error["data"]["promptTokens"]) in error["message"]
        assert fake.requests == []  # nothing was sent
        # The listing shows the loaded window, and selection uses it from then on.
        models = sidecar.result("model:list-models", {"provider": "box", "refresh": True})["models"]
        assert [m["contextWindow"] for m in models] == [2048]
        again = sidecar.call("model:generate", {"request": {"prompt": words(3000), "maxTokens": 10}})
        assert again["error"]["code"] == -32005 and "window is 2048" in again["error"]["message"], again
        assert fake.requests == []
        # A prompt that fits is served.
        fake.enqueue(Reply("fits"))
        assert sidecar.result("model:generate", {"request": {"prompt": words(1000)}})["content"] == "fits"


def test_a_pinned_model_too_long_for_its_window_is_refused_before_sending(spawn: Spawn) -> None:
    # The planner keeps a pinned model even when the estimate says it may not fit; the
    # window the server reports is a fact, not an estimate of the model's size.
    with FakeServer("llamacpp", api_key=CUSTOM_KEY).start() as fake:
        fake.renderer.n_ctx = 1024  # type: ignore[attr-defined]
        sidecar = spawn(only_custom("box", {"baseURL": fake.base_url, "apiKey": CUSTOM_KEY,
                                            "defaultModel": LLAMA_MODEL}))
        answer = sidecar.call("model:stream", {"request": {"prompt": words(1500), "modelId": LLAMA_MODEL},
                                               "selection": {"provider": "box"}})
        assert answer["error"]["data"]["type"] == "ValidationError", answer
        assert answer["error"]["data"]["contextWindow"] == 1024
        assert fake.requests == []


def test_lm_studio_loaded_context_length_is_the_window(spawn: Spawn) -> None:
    model = "qwen2.5-7b-instruct"
    with LocalServerFake("lmstudio", models=[model], loaded={model: 4096}).start() as fake:
        sidecar = spawn(only_custom("studio", {"baseURL": fake.origin + "/v1", "defaultModel": model}))
        models = sidecar.result("model:list-models", {"provider": "studio", "refresh": True})["models"]
        assert [m["contextWindow"] for m in models] == [4096]
        answer = sidecar.call("model:generate", {"request": {"prompt": words(5000), "modelId": model}})
        assert answer["error"]["data"]["type"] == "ValidationError", answer
        assert answer["error"]["data"]["contextWindow"] == 4096
        assert [r.path for r in fake.requests if "chat" in r.path] == []


def test_ollama_gets_the_running_window_and_never_more_than_the_trained_one(spawn: Spawn) -> None:
    with FakeServer("ollama", context_lengths={"llama3.2": 8192}).start() as fake:
        sidecar = spawn(only_ollama(fake))

        def num_ctx(prompt_tokens: int, max_tokens: int = 100) -> int | None:
            fake.enqueue(Reply("ok"))
            sidecar.result("model:generate", {"request": {"prompt": words(prompt_tokens), "maxTokens": max_tokens}})
            options = fake.requests[-1].json.get("options", {})
            return options.get("num_ctx")

        assert num_ctx(100) is None  # not running: Ollama's default window holds it
        # 6,000 tokens and 2,000 to write: 16,384 rounded up, but llama3.2 here is trained for 8,192.
        assert num_ctx(6000, 2000) == 8192
        # It runs with 8,192 now: a short request gets that window, not the default (a reload).
        assert num_ctx(100) == 8192
        answer = sidecar.call("model:generate", {"request": {"prompt": words(9000), "modelId": "llama3.2"}})
        assert answer["error"]["data"]["type"] == "ValidationError", answer
        assert answer["error"]["data"]["contextWindow"] == 8192
        assert len(fake.requests) == 3


def test_ollama_reports_what_another_client_loaded(spawn: Spawn) -> None:
    # Another program loaded the model with num_ctx 16384: asking for it avoids a reload.
    with FakeServer("ollama", context_lengths={"llama3.2": 131072}).start() as fake:
        fake.renderer.running["llama3.2:latest"] = (0.0, 16384)  # type: ignore[attr-defined]
        sidecar = spawn(only_ollama(fake))
        sidecar.result("model:generate", {"request": {"prompt": "hi"}})
        assert fake.requests[-1].json["options"]["num_ctx"] == 16384
