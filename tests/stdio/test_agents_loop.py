"""The tool-call loop through stdio, on every provider: invalid calls go back to the model
with their errors, each retry is a routed, billed attempt, a required call is enforced,
streamed calls restart after a rejection, and tools work beside a responseFormat."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes import FakeToolCall, Reply
from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio

PROVIDERS = ["openai", "anthropic", "ollama", "local-llm"]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 2},
                                                           "unit": {"enum": ["C", "F"]}},
                          "required": ["city"], "additionalProperties": False}}


def ask(provider: str, **request: Any) -> dict[str, Any]:
    return {"request": {"prompt": "What is the weather in Paris?", "tools": [WEATHER], **request},
            "selection": {"provider": provider, "fallback": False}}


def call(arguments: dict[str, Any] | str, name: str = "get_weather") -> Reply:
    return Reply("", tool_calls=[FakeToolCall(name, arguments)])


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn of a recorded request, whatever the provider."""
    turn = [m for m in body["messages"] if m["role"] == "user"][-1]
    content = turn["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_invalid_call_goes_back_with_its_errors_then_the_valid_one_is_returned(
        spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].enqueue(call({"city": "P"}), call({"city": "Paris", "unit": "C"}))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(provider))
    assert_wire_valid(response, "model:generate")
    result = response["result"]
    (tool_call,) = result["toolCalls"]
    assert (tool_call["name"], tool_call["arguments"]) == ("get_weather", {"city": "Paris", "unit": "C"})
    assert tool_call["id"] and result["finishReason"] == "tool_calls" and "parsed" not in result
    assert [a.get("structuredAttempt") for a in result["metadata"]["attempts"]] == [0, 1]
    _first, second = fakes[provider].requests
    feedback = last_user_text(second.json)
    assert "/toolCalls/0/arguments/city" in feedback and '"P"' in feedback


@pytest.mark.parametrize("provider", PROVIDERS)
def test_after_max_tool_retries_the_answer_is_a_structured_output_error(
        spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].set_default(call({"town": "Paris"}))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(provider, maxToolRetries=1))
    assert_wire_valid(response, "model:generate")
    error = response["error"]
    assert error["code"] == -32007 and error["data"]["cause"] == "invalid_tool_call"
    paths = {e["path"] for e in error["data"]["validationErrors"]}
    assert "/toolCalls/0/arguments" in paths or "/toolCalls/0/arguments/town" in paths, paths
    (last,) = json.loads(error["data"]["lastContent"])
    assert last["name"] == "get_weather" and json.loads(last["arguments"]) == {"town": "Paris"}
    assert len(fakes[provider].requests) == 2
    assert sidecar.result("model:get-config", {})  # still serving


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unknown_tool_and_a_missing_required_call_are_retried(spawn: Spawn, fakes: dict[str, Any],
                                                                 provider: str) -> None:
    fakes[provider].enqueue(call({"city": "Paris"}, name="get_wether"), Reply("It is sunny."),
                            call({"city": "Paris"}))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask(provider, toolChoice="required", maxToolRetries=2))
    assert result["toolCalls"][0]["arguments"] == {"city": "Paris"}
    _, second, third = fakes[provider].requests
    assert "get_wether" in last_user_text(second.json)
    assert "must call" in last_user_text(third.json)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_invalid_call_is_followed_by_a_restart_and_the_valid_call(
        spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].enqueue(call({"city": "P"}), call({"city": "Paris"}))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask(provider))
    response = sidecar.response(request_id)
    assert_wire_valid(response, "model:stream")
    chunks = [m["params"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    restarts = [i for i, c in enumerate(chunks) if c["chunk"].get("restart")]
    assert len(restarts) == 1
    after = [d for c in chunks[restarts[0]:] for d in c["chunk"].get("toolCalls", ())]
    assert after and after[0]["name"] == "get_weather" and after[0]["id"]
    assert json.loads("".join(d["argumentsDelta"] for d in after)) == {"city": "Paris"}
    assert chunks[-1]["chunk"]["done"] is True
    assert response["result"]["toolCalls"][0]["arguments"] == {"city": "Paris"}
    assert response["result"]["toolCalls"][0]["id"] == after[0]["id"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tools_beside_a_response_format(spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    fakes[provider].enqueue(call({"city": "Paris"}), Reply(json.dumps({"summary": "sunny"})))
    sidecar = spawn(fake_config(fakes))
    params = {**ask(provider), "responseFormat": {"type": "json_schema", "schema": schema}}
    first = sidecar.result("model:generate", params)
    assert first["toolCalls"][0]["arguments"] == {"city": "Paris"} and "parsed" not in first
    body = fakes[provider].requests[0].json
    assert body.get("tools"), "the host's tools reach the provider"
    # The format's own mechanism never takes the host's tools away (Anthropic's forced tool).
    assert [t.get("name") or t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert not (isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") == "tool")
    second = sidecar.result("model:generate", params)
    assert second["parsed"] == {"summary": "sunny"} and "toolCalls" not in second


def test_every_retry_is_billed_at_the_model_list_price(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "P"})], usage=(1000, 100)),
                            Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"})], usage=(1000, 100)))
    sidecar = spawn(fake_config(fakes))
    params = ask("openai")
    params["selection"]["modelId"] = "gpt-4o"  # list price: $2.50 / $10 per 1M tokens
    result = sidecar.result("model:generate", params)
    one = (1000 * 2.5 + 100 * 10.0) / 1e6
    assert result["metadata"]["costUsd"] == pytest.approx(2 * one)
    usage = sidecar.result("model:usage", {})
    assert usage["daily"]["spentUsd"] == pytest.approx(2 * one)
    assert usage["byModel"]["openai/gpt-4o"]["requests"] == 2
