"""``toolChoice: "none"`` without a ``responseFormat``, through stdio: a model that calls
a tool anyway is refused and asked again like any invalid call, and never gets a success
with its calls silently dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes import FakeToolCall, Reply
from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid
from tests.stdio.test_agents_loop import last_user_text

pytestmark = pytest.mark.stdio

PROVIDERS = ["openai", "anthropic", "ollama", "local-llm"]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}}


def ask(provider: str, **request: Any) -> dict[str, Any]:
    return {"request": {"prompt": "What is the weather in Paris?", "tools": [WEATHER], "toolChoice": "none",
                        **request},
            "selection": {"provider": provider, "fallback": False}}


def call() -> Reply:
    return Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"})])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_call_under_none_is_refused_and_the_text_retry_is_the_answer(
        spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].enqueue(call(), Reply("It is sunny in Paris."))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(provider))
    assert_wire_valid(response, "model:generate")
    result = response["result"]
    assert result["content"] == "It is sunny in Paris."
    assert "toolCalls" not in result and result["finishReason"] != "tool_calls"
    assert [a.get("structuredAttempt") for a in result["metadata"]["attempts"]] == [0, 1]
    _first, second = fakes[provider].requests
    feedback = last_user_text(second.json)
    assert "get_weather" in feedback and "toolChoice none" in feedback
    assert "call the tool again" not in feedback.lower()  # the model is told to answer in text


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_calls_under_none_every_time_end_in_a_structured_output_error(
        spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].set_default(call())
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(provider, maxToolRetries=1))
    assert_wire_valid(response, "model:generate")
    error = response["error"]
    assert error["code"] == -32007 and error["data"]["cause"] == "invalid_tool_call"
    assert [e["path"] for e in error["data"]["validationErrors"]] == ["/toolCalls"]
    (last,) = json.loads(error["data"]["lastContent"])
    assert last["name"] == "get_weather"
    assert len(fakes[provider].requests) == 2
    assert len(error["data"]["attempts"]) == 2
    assert sidecar.result("model:get-config", {})  # still serving


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_a_streamed_call_under_none_is_followed_by_a_restart_and_the_text(
        spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].enqueue(call(), Reply("It is sunny in Paris."))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask(provider))
    response = sidecar.response(request_id)
    assert_wire_valid(response, "model:stream")
    result = response["result"]
    assert result["content"] == "It is sunny in Paris." and "toolCalls" not in result
    assert len(result["metadata"]["attempts"]) == 2
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    restarts = [i for i, c in enumerate(chunks) if c.get("restart")]
    assert len(restarts) == 1
    after = chunks[restarts[0] + 1:]
    assert "".join(c["content"] for c in after) == "It is sunny in Paris."
    assert not any(c.get("toolCalls") for c in after)


def test_streaming_every_call_under_none_ends_in_a_structured_output_error(
        spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].set_default(call())
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:stream", ask("openai", maxToolRetries=0))
    error = response["error"]
    assert error["code"] == -32007 and error["data"]["cause"] == "invalid_tool_call"
    assert len(fakes["openai"].requests) == 1
