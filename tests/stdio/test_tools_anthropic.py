"""Tools and images with Anthropic, through stdio as a host uses them: a two-turn tool
loop, a retry after invalid arguments, tool-call deltas in a stream, images by path and
by base64. The fake renders ``tool_use`` blocks as the Messages API does and refuses
tool turns the API refuses, so what it received is what Anthropic would have accepted."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeToolCall, Reply
from tests.stdio.conftest import FREE_ANTHROPIC, Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid
from tests.support.images import gif, png

pytestmark = pytest.mark.stdio

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
SELECT = {"provider": "anthropic", "modelId": FREE_ANTHROPIC, "fallback": False}


def ask(**request: Any) -> dict[str, Any]:
    return {"request": {"prompt": "Weather in Paris?", "tools": [WEATHER], **request}, "selection": SELECT}


def test_two_turn_tool_loop(spawn: Spawn, fakes: dict[str, Any]) -> None:
    server = fakes["anthropic"]
    server.enqueue(Reply(text="Checking.", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_01A")]),
                   Reply(text="It is 18 C in Paris."))
    sidecar = spawn(fake_config(fakes))
    first = sidecar.call("model:generate", ask())
    assert_wire_valid(first, "model:generate")
    result = first["result"]
    assert result["toolCalls"] == [{"id": "toolu_01A", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert result["finishReason"] == "tool_calls"
    assert result["content"] == "Checking."
    sent = server.requests[0].json
    assert sent["tools"] == [{"name": "get_weather", "description": "The weather in a city.",
                              "input_schema": WEATHER["parameters"]}]
    assert "tool_choice" not in sent

    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": result["content"], "toolCalls": result["toolCalls"]},
               {"role": "tool", "toolCallId": "toolu_01A", "content": "18 C, sunny"}]
    second = sidecar.call("model:generate", ask(prompt="", messages=history))
    assert_wire_valid(second, "model:generate")
    assert second["result"]["content"] == "It is 18 C in Paris."
    assert second["result"]["finishReason"] == "stop"
    assert "toolCalls" not in second["result"] or not second["result"]["toolCalls"]
    assert server.requests[1].json["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18 C, sunny"}]},
    ]


def test_results_of_parallel_calls_and_a_follow_up_share_one_user_turn(spawn: Spawn, fakes: dict[str, Any]) -> None:
    server = fakes["anthropic"]
    server.enqueue(Reply(text="Both done."))
    sidecar = spawn(fake_config(fakes))
    calls = [{"id": "toolu_01P", "name": "get_weather", "arguments": {"city": "Paris"}},
             {"id": "toolu_01O", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    history = [{"role": "user", "content": "Paris and Oslo?"},
               {"role": "assistant", "content": "", "toolCalls": calls},
               {"role": "tool", "toolCallId": "toolu_01P", "content": "18 C"},
               {"role": "tool", "toolCallId": "toolu_01O", "content": "no data", "isError": True}]
    result = sidecar.result("model:generate", ask(prompt="Compare them.", messages=history))
    assert result["content"] == "Both done."
    assert server.requests[0].json["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01P", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_01O", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01P", "content": "18 C"},
            {"type": "tool_result", "tool_use_id": "toolu_01O", "content": "no data", "is_error": True},
            {"type": "text", "text": "Compare them."}]},
    ]


def test_invalid_arguments_are_retried_and_visible_in_attempts(spawn: Spawn, fakes: dict[str, Any]) -> None:
    server = fakes["anthropic"]
    server.enqueue(Reply(text="", tool_calls=[FakeToolCall("get_weather", {"city": 75000})]),
                   Reply(text="", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_01G")]))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(toolChoice="required", parallelToolCalls=False))
    assert_wire_valid(response, "model:generate")
    result = response["result"]
    assert result["toolCalls"] == [{"id": "toolu_01G", "name": "get_weather", "arguments": {"city": "Paris"}}]
    attempts = result["metadata"]["attempts"]
    assert [(a["provider"], a.get("structuredAttempt")) for a in attempts] == [("anthropic", 0), ("anthropic", 1)]
    first, second = (r.json for r in server.requests)
    assert first["tool_choice"] == second["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    feedback = second["messages"][-1]["content"]
    assert "/city" in json.dumps(feedback) and "string" in json.dumps(feedback)


def test_invalid_arguments_every_time_is_structured_output_error(spawn: Spawn, fakes: dict[str, Any]) -> None:
    server = fakes["anthropic"]
    server.set_default(Reply(text="", tool_calls=[FakeToolCall("get_weather", {"town": "Paris"})]))
    sidecar = spawn(fake_config(fakes))
    error = sidecar.call("model:generate", ask(maxToolRetries=1))["error"]
    assert (error["code"], error["data"]["type"]) == (-32007, "StructuredOutputError")
    assert error["data"]["validationErrors"]
    assert len(server.requests) == 2


def test_stream_relays_tool_call_deltas_with_unbroken_seq(spawn: Spawn, fakes: dict[str, Any]) -> None:
    server = fakes["anthropic"]
    server.enqueue(Reply(text="Let me look.", tool_calls=[
        FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_01S", pieces=["", '{"city', '": "Par', 'is"}']),
        FakeToolCall("get_weather", {"city": "Oslo"}, id="toolu_01T"),
    ]))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask())
    response = sidecar.response(request_id)
    assert_wire_valid(response, "model:stream")
    chunks = [m["params"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert chunks[-1]["chunk"]["done"] is True
    assert "".join(c["chunk"]["content"] for c in chunks) == "Let me look."
    deltas = [d for c in chunks for d in c["chunk"].get("toolCalls") or ()]
    assert all(c["chunk"]["content"] == "" for c in chunks if c["chunk"].get("toolCalls"))
    # Anthropic's blocks are 0 (text), 1 and 2: the calls are 0 and 1, id and name on their first delta.
    firsts = {d["index"]: d for d in reversed(deltas)}
    assert firsts[0]["id"] == "toolu_01S" and firsts[0]["name"] == "get_weather"
    assert firsts[1]["id"] == "toolu_01T" and firsts[1]["name"] == "get_weather"
    assert sorted(firsts) == [0, 1]
    assert [d["argumentsDelta"] for d in deltas if d["index"] == 0] == ["", '{"city', '": "Par', 'is"}']
    assert "".join(d["argumentsDelta"] for d in deltas if d["index"] == 1) == '{"city":"Oslo"}'
    result = response["result"]
    assert result["toolCalls"] == [{"id": "toolu_01S", "name": "get_weather", "arguments": {"city": "Paris"}},
                                   {"id": "toolu_01T", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert result["finishReason"] == "tool_calls"


def test_images_by_path_base64_and_url_reach_anthropic_as_image_blocks(spawn: Spawn, fakes: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    picture = tmp_path / "shot.jpg"  # a PNG whatever its name says
    picture.write_bytes(png(3, 2))
    inline = gif()
    server = fakes["anthropic"]
    server.enqueue(Reply(text="Two pictures and a link."))
    sidecar = spawn(fake_config(fakes))
    content = [{"type": "text", "text": "Compare these."},
               {"type": "image", "path": str(picture)},
               {"type": "image", "data": base64.b64encode(inline).decode(), "mediaType": "image/gif"},
               {"type": "image", "url": "https://example.com/c.webp"},
               {"type": "text", "text": "Briefly."}]
    params = {"request": {"prompt": "", "messages": [{"role": "user", "content": content}]}, "selection": SELECT}
    response = sidecar.call("model:generate", params)
    assert_wire_valid(response, "model:generate")
    assert response["result"]["content"] == "Two pictures and a link."
    assert server.requests[0].json["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png(3, 2)).decode()}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif",
                                     "data": base64.b64encode(inline).decode()}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/c.webp"}},
        {"type": "text", "text": "Briefly."},
    ]}]


def test_tools_with_a_response_format_send_no_forced_tool(spawn: Spawn, fakes: dict[str, Any]) -> None:
    """A model without native JSON output would get a forced structured-output tool; with
    the request's own tools it is not sent, and a call of a tool named like it is a call."""
    server = fakes["anthropic"]
    tool = {"name": "answer", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    server.enqueue(Reply(text="", tool_calls=[FakeToolCall("answer", {"q": "x"}, id="toolu_01F")]))
    sidecar = spawn(fake_config(fakes))
    params = {"request": {"prompt": "Go.", "tools": [tool]},
              "selection": {**SELECT, "modelId": "claude-3-5-haiku-20241022"},
              "responseFormat": {"type": "json_schema", "name": "answer",
                                 "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    result = sidecar.result("model:generate", params)
    assert result["toolCalls"] == [{"id": "toolu_01F", "name": "answer", "arguments": {"q": "x"}}]
    assert "parsed" not in result or result["parsed"] is None
    sent = server.requests[0].json
    assert sent["tools"] == [{"name": "answer", "input_schema": tool["parameters"]}]
    assert "tool_choice" not in sent


def test_stream_retry_after_invalid_arguments_restarts_and_keeps_seq(spawn: Spawn, fakes: dict[str, Any]) -> None:
    server = fakes["anthropic"]
    server.enqueue(Reply(text="", tool_calls=[FakeToolCall("get_weather", {"city": ["Paris"]}, id="toolu_01Bad")]),
                   Reply(text="", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_01Good")]))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask())
    response = sidecar.response(request_id)
    assert_wire_valid(response, "model:stream")
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    restarts = [i for i, c in enumerate(chunks) if c.get("restart")]
    assert len(restarts) == 1
    before = [d for c in chunks[:restarts[0]] for d in c.get("toolCalls") or ()]
    after = [d for c in chunks[restarts[0]:] for d in c.get("toolCalls") or ()]
    assert before[0]["id"] == "toolu_01Bad" and after[0]["id"] == "toolu_01Good"
    assert {d["index"] for d in before + after} == {0}
    result = response["result"]
    assert result["toolCalls"] == [{"id": "toolu_01Good", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert len(result["metadata"]["attempts"]) == 2
