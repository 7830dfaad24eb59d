"""What goes on the wire: the recorded upstream body and headers for every request field.

Each test sends a real request to the loopback fake and inspects what it recorded, so
the body builders are checked exactly as the server sees them, streaming and not.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.errors import AuthenticationError
from sidecar.providers.base import ChatMessage
from sidecar.providers.openai import is_reasoning_model
from tests.fakes import RecordedRequest
from tests.providers.conftest import API_KEY, Harness, run

pytestmark = pytest.mark.timeout(20)

FULL: dict[str, Any] = {
    "system": "Be brief.",
    "temperature": 0.3,
    "max_tokens": 77,
    "top_p": 0.9,
    "frequency_penalty": 0.5,
    "presence_penalty": -0.25,
    "stop": ("END", "STOP"),
}
CUSTOM_HEADERS = {"X-Extra-Header": "extra-value", "OpenAI-Project": "proj_123"}


async def _sent(
    harness: Harness, streaming: bool, settings: dict[str, Any] | None = None, **fields: Any
) -> RecordedRequest:
    await run(harness.make(**(settings or {})), harness.request(**fields), streaming)
    (recorded,) = harness.server.requests
    return recorded


def _stream_fields(streaming: bool) -> dict[str, Any]:
    return {"stream": True, "stream_options": {"include_usage": True}} if streaming else {}


# -- OpenAI --------------------------------------------------------------------------------


async def test_openai_full_request(openai: Harness, streaming: bool) -> None:
    sent = await _sent(openai, streaming, {"headers": CUSTOM_HEADERS}, **FULL)
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "temperature": 0.3,
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
        # The official API wants the new name (wire-reference §1.2).
        "max_completion_tokens": 77,
        "stop": ["END", "STOP"],
        **_stream_fields(streaming),
    }
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-extra-header"] == "extra-value"
    assert sent.headers["openai-project"] == "proj_123"


async def test_openai_minimal_request_sends_only_what_is_set(openai: Harness, streaming: bool) -> None:
    sent = await _sent(openai, streaming)
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        **_stream_fields(streaming),
    }


async def test_openai_multi_turn_keeps_roles_and_order(openai: Harness, streaming: bool) -> None:
    turns = (
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("system", "mid-conversation rule"),
        ChatMessage("user", "again"),
    )
    sent = await _sent(openai, streaming, system="top", messages=turns)
    assert sent.json["messages"] == [
        {"role": "system", "content": "top"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "mid-conversation rule"},
        {"role": "user", "content": "again"},
    ]


REASONING_CASES = [
    # (model, sampling kept, stop kept)
    ("o1", False, True),
    ("o3-mini", False, False),
    ("o4-mini-2025-04-16", False, False),
    ("gpt-5", False, True),
    ("gpt-5.4-mini", False, True),
    ("gpt-5-chat-latest", True, True),
    ("gpt-5.1-chat-latest", True, True),
    ("gpt-4o", True, True),
]


@pytest.mark.parametrize(("model", "sampling", "stop"), REASONING_CASES)
async def test_openai_reasoning_models_get_no_sampling_parameters(
    openai: Harness, streaming: bool, model: str, sampling: bool, stop: bool
) -> None:
    assert is_reasoning_model(model) is not sampling
    sent = await _sent(openai, streaming, model=model, **FULL)
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        assert (name in sent.json) is sampling, name
    assert ("stop" in sent.json) is stop
    assert sent.json["max_completion_tokens"] == 77
    assert "max_tokens" not in sent.json


async def test_openai_native_format_is_merged(openai: Harness, streaming: bool) -> None:
    fmt = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        }
    }
    sent = await _sent(openai, streaming, native_format=fmt, temperature=0.0)
    assert sent.json["response_format"] == fmt["response_format"]
    assert sent.json["temperature"] == 0.0


async def test_openai_without_key_fails_before_any_request(openai: Harness, streaming: bool) -> None:
    provider = openai.make(api_key=None)
    with pytest.raises(AuthenticationError) as info:
        await run(provider, openai.request(), streaming)
    assert "OPENAI_API_KEY" in info.value.message
    assert "providers.openai.apiKey" in info.value.message
    assert info.value.provider == "openai" and info.value.model_id == "gpt-4o-mini"
    assert not info.value.retryable
    assert openai.server.all_requests == []


# -- OpenAI-compatible (llama.cpp) -------------------------------------------------------------


async def test_custom_full_request_uses_max_tokens_and_no_auth(llamacpp: Harness, streaming: bool) -> None:
    sent = await _sent(llamacpp, streaming, {"headers": {"X-Extra-Header": "v"}}, **FULL)
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {
        "model": llamacpp.model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "temperature": 0.3,
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
        # llama.cpp and older compatible servers only know the old name.
        "max_tokens": 77,
        "stop": ["END", "STOP"],
        **_stream_fields(streaming),
    }
    assert "authorization" not in sent.headers
    assert sent.headers["x-extra-header"] == "v"


async def test_custom_with_key_sends_bearer(llamacpp: Harness, streaming: bool) -> None:
    sent = await _sent(llamacpp, streaming, {"api_key": "local-key-123"})
    assert sent.headers["authorization"] == "Bearer local-key-123"


async def test_custom_reasoning_like_names_keep_sampling(llamacpp: Harness, streaming: bool) -> None:
    """Only the official API refuses sampling for o-series names; a local server may not."""
    sent = await _sent(llamacpp, streaming, model="o3-mini", temperature=0.2, stop=("x",))
    assert sent.json["temperature"] == 0.2
    assert sent.json["stop"] == ["x"]


async def test_custom_native_format_is_merged(llamacpp: Harness, streaming: bool) -> None:
    fmt = {"response_format": {"type": "json_object", "schema": {"type": "object"}}}
    sent = await _sent(llamacpp, streaming, native_format=fmt)
    assert sent.json["response_format"] == fmt["response_format"]


# -- Anthropic -----------------------------------------------------------------------------------


async def test_anthropic_full_request(anthropic: Harness, streaming: bool) -> None:
    sent = await _sent(anthropic, streaming, {"headers": {"anthropic-beta": "some-beta"}}, **FULL)
    assert sent.path == "/v1/messages"
    expected: dict[str, Any] = {
        "model": anthropic.model,
        "max_tokens": 77,
        "messages": [{"role": "user", "content": "Say hello"}],
        "system": "Be brief.",
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END", "STOP"],
    }
    if streaming:
        expected["stream"] = True
    # frequency/presence penalties do not exist in the Messages API and are dropped.
    assert sent.json == expected
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["anthropic-beta"] == "some-beta"
    assert "authorization" not in sent.headers


async def test_anthropic_defaults_max_tokens_and_omits_unset_fields(
    anthropic: Harness, streaming: bool
) -> None:
    sent = await _sent(anthropic, streaming)
    expected: dict[str, Any] = {
        "model": anthropic.model,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    if streaming:
        expected["stream"] = True
    assert sent.json == expected


async def test_anthropic_folds_system_messages_into_system(anthropic: Harness, streaming: bool) -> None:
    turns = (
        ChatMessage("system", "Rule one."),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("system", "Rule two."),
        ChatMessage("user", "again"),
    )
    sent = await _sent(anthropic, streaming, system="Top.", messages=turns)
    assert sent.json["system"] == "Top.\n\nRule one.\n\nRule two."
    assert sent.json["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


@pytest.mark.parametrize(
    ("given", "sent_value"), [(0.0, 0.0), (0.7, 0.7), (1.0, 1.0), (1.5, 1.0), (2.0, 1.0)]
)
async def test_anthropic_clamps_temperature_to_its_range(
    anthropic: Harness, streaming: bool, given: float, sent_value: float
) -> None:
    sent = await _sent(anthropic, streaming, temperature=given)
    assert sent.json["temperature"] == sent_value


async def test_anthropic_native_format_is_merged(anthropic: Harness, streaming: bool) -> None:
    fmt = {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}
    sent = await _sent(anthropic, streaming, native_format=fmt)
    assert sent.json["output_config"] == fmt["output_config"]


async def test_anthropic_without_key_fails_before_any_request(anthropic: Harness, streaming: bool) -> None:
    provider = anthropic.make(api_key=None)
    with pytest.raises(AuthenticationError) as info:
        await run(provider, anthropic.request(), streaming)
    assert "ANTHROPIC_API_KEY" in info.value.message
    assert "providers.anthropic.apiKey" in info.value.message
    assert anthropic.server.all_requests == []


# -- Ollama ----------------------------------------------------------------------------------------


async def test_ollama_full_request(ollama: Harness, streaming: bool) -> None:
    sent = await _sent(ollama, streaming, {"headers": {"X-Extra-Header": "v"}}, context_window=16384, **FULL)
    assert sent.path == "/api/chat"
    assert sent.json == {
        "model": ollama.model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": streaming,
        "options": {
            "temperature": 0.3,
            "top_p": 0.9,
            "num_predict": 77,
            "frequency_penalty": 0.5,
            "presence_penalty": -0.25,
            "num_ctx": 16384,
            "stop": ["END", "STOP"],
        },
    }
    assert sent.headers["x-extra-header"] == "v"
    assert "authorization" not in sent.headers


async def test_ollama_always_sends_stream_flag_and_no_empty_options(ollama: Harness, streaming: bool) -> None:
    sent = await _sent(ollama, streaming)
    # Ollama streams by default: `stream: false` must be explicit (wire-reference §3).
    assert sent.json == {
        "model": ollama.model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": streaming,
    }


async def test_ollama_native_format_is_merged(ollama: Harness, streaming: bool) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    sent = await _sent(
        ollama, streaming, native_format={"format": schema, "options": {"seed": 7}}, temperature=0.1
    )
    assert sent.json["format"] == schema
    assert sent.json["options"] == {"temperature": 0.1, "seed": 7}
    assert sent.json["stream"] is streaming
