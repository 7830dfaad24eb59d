"""Every ModelRequest field, sent through stdio, as each provider's fake recorded it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stdio.conftest import Spawn, fake_config

pytestmark = pytest.mark.stdio

REQUEST = {
    "prompt": "Now add tests.",
    "messages": [{"role": "user", "content": "Write add()."}, {"role": "assistant", "content": "def add(): ..."}],
    "modelId": "model-x",
    "temperature": 1.5,
    "maxTokens": 77,
    "topP": 0.9,
    "frequencyPenalty": 0.5,
    "presencePenalty": -0.5,
    "stop": ["```", "END"],
    "systemPrompt": "You are terse.",
    "context": {"file": "calc.py"},
    "taskType": "testing",
}
LAST_USER = 'Context:\n{\n  "file": "calc.py"\n}\n\nNow add tests.'
TURNS = [{"role": "user", "content": "Write add()."}, {"role": "assistant", "content": "def add(): ..."},
         {"role": "user", "content": LAST_USER}]


def expected_body(provider: str) -> dict[str, Any]:
    if provider == "openai":
        return {"model": "model-x", "messages": [{"role": "system", "content": "You are terse."}, *TURNS],
                "temperature": 1.5, "max_completion_tokens": 77, "top_p": 0.9, "frequency_penalty": 0.5,
                "presence_penalty": -0.5, "stop": ["```", "END"]}
    if provider == "local-llm":
        return {"model": "model-x", "messages": [{"role": "system", "content": "You are terse."}, *TURNS],
                "temperature": 1.5, "max_tokens": 77, "top_p": 0.9, "frequency_penalty": 0.5,
                "presence_penalty": -0.5, "stop": ["```", "END"]}
    if provider == "anthropic":
        # No penalties in the Messages API; temperature is 0-1 there.
        return {"model": "model-x", "system": "You are terse.", "messages": TURNS, "max_tokens": 77,
                "temperature": 1.0, "top_p": 0.9, "stop_sequences": ["```", "END"]}
    return {"model": "model-x", "messages": [{"role": "system", "content": "You are terse."}, *TURNS],
            "options": {"temperature": 1.5, "num_predict": 77, "top_p": 0.9, "frequency_penalty": 0.5,
                        "presence_penalty": -0.5, "stop": ["```", "END"]}}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama", "local-llm"])
@pytest.mark.parametrize("method", ["model:generate", "model:stream"])
def test_every_request_field_reaches_the_provider(
    spawn: Spawn, fakes: dict[str, Any], provider: str, method: str
) -> None:
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result(method, {"request": REQUEST, "selection": {"provider": provider}})
    assert result["metadata"]["taskType"] == "testing"
    body = dict(fakes[provider].requests[0].json)
    streaming = body.pop("stream", False)
    assert streaming is (method == "model:stream") or provider == "ollama"
    body.pop("stream_options", None)
    assert body == expected_body(provider)
