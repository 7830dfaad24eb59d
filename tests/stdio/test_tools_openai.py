"""Tools and images through stdio against the OpenAI fake and the llama.cpp fake (an
OpenAI-compatible custom entry): a whole two-turn tool loop, an invalid call retried
with feedback, a stream of tool-call deltas, and images by path and by base64, checking
what each fake received."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeToolCall, Reply
from tests.stdio.conftest import FREE_OPENAI, Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid
from tests.support.images import png

pytestmark = [pytest.mark.stdio, pytest.mark.timeout(60)]

WEATHER = {"name": "get_weather", "description": "The weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"]}}
NOTE = {"name": "note", "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                      "required": ["text"]}}
LOCAL_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: provider name -> the selection that pins it.
TARGETS = {
    "openai": {"provider": "openai", "modelId": FREE_OPENAI, "fallback": False},
    "local-llm": {"provider": "local-llm", "modelId": LOCAL_MODEL, "fallback": False},
}


def ask(provider: str, **request: Any) -> dict[str, Any]:
    return {"request": request, "selection": TARGETS[provider]}


@pytest.mark.parametrize("provider", ["openai", "local-llm"])
def test_a_two_turn_tool_loop(spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    server = fakes[provider]
    server.enqueue(Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="call_w1")]),
                   Reply("It is 18 C in Paris."))
    sidecar = spawn(fake_config(fakes))
    first = sidecar.result("model:generate", ask(provider, prompt="Weather in Paris?", tools=[WEATHER, NOTE]))
    assert first["finishReason"] == "tool_calls"
    assert first["toolCalls"] == [{"id": "call_w1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert first["metadata"]["provider"] == provider

    turns = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": first["content"], "toolCalls": first["toolCalls"]},
             {"role": "tool", "toolCallId": "call_w1", "content": "18 C"}]
    second = sidecar.result("model:generate", ask(provider, prompt="", messages=turns, tools=[WEATHER, NOTE]))
    assert second["content"] == "It is 18 C in Paris." and second["finishReason"] == "stop"
    assert "toolCalls" not in second or not second["toolCalls"]

    offered, answered = (r.json for r in server.requests)
    assert [t["function"]["name"] for t in offered["tools"]] == ["get_weather", "note"]
    assert ("strict" in offered["tools"][0]["function"]) == (provider == "openai")
    # llama-cpp-python's server answers 500 to a null content: compatible servers get "".
    assert answered["messages"][-2:] == [
        {"role": "assistant", "content": None if provider == "openai" else "", "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "18 C"},
    ]


@pytest.mark.parametrize("provider", ["openai", "local-llm"])
def test_invalid_arguments_are_sent_back_and_retried(spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    server = fakes[provider]
    server.enqueue(Reply("", tool_calls=[FakeToolCall("get_weather", '{"town": "Paris"', id="bad")]),
                   Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="good")]))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask(provider, prompt="Weather?", tools=[WEATHER],
                                                  toolChoice="required"))
    assert result["toolCalls"] == [{"id": "good", "name": "get_weather", "arguments": {"city": "Paris"}}]
    attempts = result["metadata"]["attempts"]
    assert [(a["provider"], a.get("structuredAttempt")) for a in attempts] == [(provider, 0), (provider, 1)]
    retry = server.requests[1].json
    feedback = retry["messages"][-1]["content"]
    assert '{"town": "Paris"' in feedback and "/toolCalls/0/arguments" in feedback


@pytest.mark.parametrize("provider", ["openai", "local-llm"])
def test_a_stream_of_tool_call_deltas(spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].enqueue(Reply("Checking.", tool_calls=[
        FakeToolCall("get_weather", {"city": "Oslo"}, id="c_1", pieces=['{"ci', 'ty": "Os', 'lo"}']),
        FakeToolCall("note", {"text": "done"}, id="c_2")]))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask(provider, prompt="Weather in Oslo?", tools=[WEATHER, NOTE]))
    response = sidecar.response(request_id)
    chunks = [n["params"] for n in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # unbroken, from 0
    for message in chunks:
        assert_wire_valid({"jsonrpc": "2.0", "method": "model:stream-chunk", "params": message})
    deltas = [d for c in chunks for d in c["chunk"].get("toolCalls") or ()]
    assert all(c["chunk"]["content"] == "" for c in chunks if c["chunk"].get("toolCalls"))
    assert [(d["index"], d.get("id"), d.get("name")) for d in deltas if "id" in d] == [
        (0, "c_1", "get_weather"), (1, "c_2", "note")]
    joined = {i: "".join(d["argumentsDelta"] for d in deltas if d["index"] == i) for i in (0, 1)}
    assert json.loads(joined[0]) == {"city": "Oslo"} and json.loads(joined[1]) == {"text": "done"}
    assert chunks[-1]["chunk"]["done"] is True
    result = response["result"]
    assert result["content"] == "Checking." and result["finishReason"] == "tool_calls"
    assert result["toolCalls"] == [{"id": "c_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
                                   {"id": "c_2", "name": "note", "arguments": {"text": "done"}}]


@pytest.mark.parametrize("provider", ["openai", "local-llm"])
def test_images_by_path_and_base64_reach_the_server_as_data_urls(spawn: Spawn, fakes: dict[str, Any],
                                                                tmp_path: Path, provider: str) -> None:
    picture = png(6, 4)
    path = tmp_path / "shot.jpg"  # the name lies: the bytes say PNG
    path.write_bytes(picture)
    encoded = base64.b64encode(picture).decode()
    fakes[provider].enqueue(Reply("Two black squares."))
    sidecar = spawn(fake_config(fakes))
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare"}, {"type": "image", "path": str(path)},
        {"type": "image", "data": encoded, "mediaType": "image/png"},
        {"type": "image", "url": "https://example.com/cat.jpg"}]}]
    result = sidecar.result("model:generate", ask(provider, prompt="", messages=messages))
    assert result["content"] == "Two black squares."
    [recorded] = fakes[provider].requests
    assert recorded.json["messages"][-1] == {"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + encoded}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + encoded}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}


def test_a_named_choice_on_a_compatible_server(spawn: Spawn, fakes: dict[str, Any]) -> None:
    """llama.cpp reads the object form as auto, so only the named tool is offered; the
    call is still checked against the request's choice."""
    fakes["local-llm"].enqueue(Reply("", tool_calls=[FakeToolCall("note", {"text": "x"})]))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask("local-llm", prompt="Note x", tools=[WEATHER, NOTE],
                                                  toolChoice={"name": "note"}, parallelToolCalls=False))
    [call] = result["toolCalls"]
    assert call["name"] == "note" and call["arguments"] == {"text": "x"} and len(call["id"]) == 32
    body = fakes["local-llm"].requests[0].json
    assert [t["function"]["name"] for t in body["tools"]] == ["note"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "note"}}
    assert body["parallel_tool_calls"] is False


def test_a_tool_error_result_says_so_in_its_text(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(Reply("Sorry, the lookup failed."))
    sidecar = spawn(fake_config(fakes))
    turns = [{"role": "user", "content": "Weather?"},
             {"role": "assistant", "content": "", "toolCalls": [
                 {"id": "c9", "name": "get_weather", "arguments": {"city": "Rome"}}]},
             {"role": "tool", "toolCallId": "c9", "content": "service down", "isError": True}]
    sidecar.result("model:generate", ask("openai", prompt="", messages=turns, tools=[WEATHER]))
    assert fakes["openai"].requests[0].json["messages"][-1] == {
        "role": "tool", "tool_call_id": "c9", "content": "Error: service down"}


def test_strict_mode_nulls_for_optional_fields_are_dropped(spawn: Spawn, fakes: dict[str, Any]) -> None:
    """OpenAI gets the strict form (optional ``unit`` nullable and required); the null it then
    sends for ``unit`` is not part of the arguments the host gets."""
    fakes["openai"].enqueue(Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Rome", "unit": None})]))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask("openai", prompt="Weather in Rome?", tools=[WEATHER]))
    assert result["toolCalls"][0]["arguments"] == {"city": "Rome"}
    assert len(result["metadata"]["attempts"]) == 1
    function = fakes["openai"].requests[0].json["tools"][0]["function"]
    assert function["strict"] is True
    assert function["parameters"]["required"] == ["city", "unit"]
    assert function["parameters"]["additionalProperties"] is False


def test_llama_server_without_jinja_or_projector_is_a_clear_error(spawn: Spawn, fakes: dict[str, Any]) -> None:
    renderer = fakes["local-llm"].renderer
    renderer.jinja, renderer.mmproj = False, False
    sidecar = spawn(fake_config(fakes))
    error = sidecar.call("model:generate", ask("local-llm", prompt="Note x", tools=[NOTE]))["error"]
    assert error["code"] == -32005 and "tools param requires --jinja flag" in error["message"], error
    image = [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                          {"type": "image", "data": base64.b64encode(png()).decode(),
                                           "mediaType": "image/png"}]}]
    error = sidecar.call("model:generate", ask("local-llm", prompt="", messages=image))["error"]
    assert error["code"] == -32005 and "mmproj" in error["message"], error
    assert not fakes["local-llm"].served
    assert sidecar.result("model:get-config", {})  # still serving
