"""Anthropic Messages: tools, tool turns and images on the wire, tool calls back.

Each test talks to the loopback Anthropic fake, which renders ``tool_use`` blocks as the
API does (streamed as ``content_block_start``/``input_json_delta``/``content_block_stop``)
and answers the API's 400 to a ``tool_use`` without its ``tool_result`` right after or a
``tool_result`` for an unknown id, so a mapping mistake fails here.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from sidecar.errors import ModelError, ValidationError
from sidecar.providers.base import (
    ChatMessage,
    Completion,
    ImageInput,
    NamedTool,
    Provider,
    ProviderRequest,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)
from tests.fakes import FakeToolCall, Raw, Reply
from tests.providers.conftest import API_KEY, Harness, run

pytestmark = pytest.mark.timeout(20)

WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]}, "The weather in a city.")
CLOCK = ToolSpec("now", {"type": "object", "properties": {}})
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="


async def _sent(anthropic: Harness, streaming: bool, **fields: Any) -> dict[str, Any]:
    await run(anthropic.make(), anthropic.request(**fields), streaming)
    (recorded,) = anthropic.server.requests
    assert recorded.json is not None
    return recorded.json


async def _deltas(provider: Provider, request: ProviderRequest) -> list[StreamDelta]:
    return [delta async for delta in provider.stream(request)]


def _assemble(deltas: list[StreamDelta]) -> list[ToolCall]:
    """The calls as the core puts them together: by index, id and name from the first delta."""
    heads: dict[int, tuple[str, str]] = {}
    args: dict[int, str] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            if piece.index not in heads:
                assert piece.id and piece.name, "a call's first delta carries its id and name"
                heads[piece.index] = (piece.id, piece.name)
            else:
                assert piece.id is None and piece.name is None
            args[piece.index] = args.get(piece.index, "") + piece.arguments_delta
    assert sorted(heads) == list(range(len(heads))), "calls are numbered 0, 1, ..."
    return [ToolCall(heads[i][0], heads[i][1], args[i]) for i in sorted(heads)]


# -- the request --------------------------------------------------------------------------


async def test_tools_are_sent_with_input_schema(anthropic: Harness, streaming: bool) -> None:
    body = await _sent(anthropic, streaming, tools=(WEATHER, CLOCK))
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER.parameters},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body  # the API's default with tools is auto


@pytest.mark.parametrize(("choice", "parallel", "wire"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    (NamedTool("now"), None, {"type": "tool", "name": "now"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (NamedTool("now"), False, {"type": "tool", "name": "now", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),  # `none` takes no disable_parallel_tool_use (the API refuses it)
    ("auto", True, {"type": "auto"}),
])
async def test_tool_choice_mapping(anthropic: Harness, streaming: bool, choice: Any, parallel: bool | None,
                                   wire: dict[str, Any]) -> None:
    body = await _sent(anthropic, streaming, tools=(WEATHER, CLOCK), tool_choice=choice, parallel_tool_calls=parallel)
    assert body["tool_choice"] == wire


async def test_tool_loop_history_maps_to_tool_use_and_merged_results(anthropic: Harness, streaming: bool) -> None:
    turns = (
        ChatMessage("user", "Weather in Paris and Oslo?"),
        ChatMessage("assistant", "Checking.", tool_calls=(
            ToolCall("toolu_01A", "get_weather", '{"city":"Paris"}'),
            ToolCall("toolu_01B", "get_weather", '{"city":"Oslo"}'),
        )),
        ChatMessage("tool", "18 C", tool_call_id="toolu_01A", tool_name="get_weather"),
        ChatMessage("tool", "timeout", tool_call_id="toolu_01B", tool_name="get_weather", is_error=True),
        ChatMessage("user", "Go on."),
    )
    body = await _sent(anthropic, streaming, messages=turns, tools=(WEATHER,))
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Oslo"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18 C"},
            {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "timeout", "is_error": True},
            {"type": "text", "text": "Go on."},
        ]},
    ]


async def test_assistant_without_text_has_only_tool_use_and_empty_result_has_no_content(
    anthropic: Harness, streaming: bool
) -> None:
    turns = (
        ChatMessage("user", "Time?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_01C", "now", "{}"),)),
        ChatMessage("tool", "", tool_call_id="toolu_01C", tool_name="now"),
    )
    body = await _sent(anthropic, streaming, messages=turns, tools=(CLOCK,))
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01C", "name": "now", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01C"}]},
    ]


async def test_images_become_image_blocks_in_order(anthropic: Harness, streaming: bool) -> None:
    parts = ("What differs?", ImageInput(media_type="image/png", data=PNG_B64),
             ImageInput(url="https://example.com/b.jpg"), "Be brief.")
    turn = ChatMessage("user", "What differs?\nBe brief.", parts=parts)
    body = await _sent(anthropic, streaming, messages=(turn,))
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What differs?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/b.jpg"}},
        {"type": "text", "text": "Be brief."},
    ]}]


async def test_an_unanswered_tool_use_is_the_apis_400(anthropic: Harness, streaming: bool) -> None:
    """The fake refuses what the API refuses: a tool_use not answered in the next turn."""
    turns = (
        ChatMessage("user", "Time?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_01D", "now", "{}"),)),
        ChatMessage("user", "Never mind."),
    )
    with pytest.raises(ValidationError) as info:
        await run(anthropic.make(), anthropic.request(messages=turns, tools=(CLOCK,)), streaming)
    assert "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_01D" in info.value.message


async def test_a_result_for_an_unknown_id_is_the_apis_400(anthropic: Harness, streaming: bool) -> None:
    turns = (
        ChatMessage("user", "Time?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("toolu_01E", "now", "{}"),)),
        ChatMessage("tool", "noon", tool_call_id="toolu_01E", tool_name="now"),
        ChatMessage("tool", "noon", tool_call_id="toolu_01X", tool_name="now"),
    )
    with pytest.raises(ValidationError) as info:
        await run(anthropic.make(), anthropic.request(messages=turns, tools=(CLOCK,)), streaming)
    assert "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_01X" in info.value.message


# -- the answer ---------------------------------------------------------------------------


TWO_CALLS = Reply(text="Let me check.", tool_calls=[
    FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_01P"),
    FakeToolCall("get_weather", {"city": "Oslo"}, id="toolu_01Q", pieces=['{"ci', 'ty": "Os', 'lo"}']),
])


async def test_tool_use_blocks_become_tool_calls(anthropic: Harness) -> None:
    anthropic.server.enqueue(TWO_CALLS)
    result = await anthropic.make().generate(anthropic.request(tools=(WEATHER,)))
    assert result.content == "Let me check."
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == (
        ToolCall("toolu_01P", "get_weather", '{"city":"Paris"}'),
        ToolCall("toolu_01Q", "get_weather", '{"city":"Oslo"}'),
    )


async def test_streamed_tool_use_maps_block_index_to_call_index(anthropic: Harness) -> None:
    anthropic.server.enqueue(TWO_CALLS)
    deltas = await _deltas(anthropic.make(), anthropic.request(tools=(WEATHER,)))
    assert "".join(d.content for d in deltas) == "Let me check."
    pieces = [piece for d in deltas for piece in d.tool_calls]
    # The text is block 0, the calls blocks 1 and 2: the calls are 0 and 1.
    assert pieces[0] == ToolCallDelta(0, "", id="toolu_01P", name="get_weather")
    assert ToolCallDelta(1, "", id="toolu_01Q", name="get_weather") in pieces
    # The pieces arrive as sent, except that text which could begin the provider's key
    # ("s" of "sk-...") is held back until the next piece shows it does not.
    second = [p.arguments_delta for p in pieces if p.index == 1]
    assert len(second) >= 3 and "".join(second) == '{"city": "Oslo"}'

    calls = _assemble(deltas)
    assert [(c.id, c.name, orjson.loads(c.arguments)) for c in calls] == [
        ("toolu_01P", "get_weather", {"city": "Paris"}), ("toolu_01Q", "get_weather", {"city": "Oslo"})]
    assert deltas[-1].finish_reason == "tool_calls"


async def test_stream_yields_call_pieces_as_they_arrive(anthropic: Harness) -> None:
    """Each input_json_delta is its own delta (the host sees the call grow)."""
    anthropic.server.enqueue(Reply(text="", tool_calls=[
        FakeToolCall("get_weather", {"city": "Paris"}, pieces=["", '{"city"', ': "Paris"}'])]))
    deltas = await _deltas(anthropic.make(), anthropic.request(tools=(WEATHER,)))
    with_calls = [d.tool_calls for d in deltas if d.tool_calls]
    assert [[p.arguments_delta for p in group] for group in with_calls] == [[""], ['{"city"'], [': "Paris"}']]
    assert with_calls[0][0].id is not None and with_calls[0][0].id.startswith("toolu_01")


async def test_a_streamed_call_without_input_pieces_has_arguments_object(anthropic: Harness) -> None:
    """A tool_use block whose partial_json pieces are all empty has the input ``{}``."""
    anthropic.server.enqueue(Reply(text="", tool_calls=[FakeToolCall("now", {}, id="toolu_01N", pieces=[""])]))
    deltas = await _deltas(anthropic.make(), anthropic.request(tools=(CLOCK,)))
    assert _assemble(deltas) == [ToolCall("toolu_01N", "now", "{}")]


async def test_without_text_the_first_tool_use_is_block_zero(anthropic: Harness, streaming: bool) -> None:
    anthropic.server.enqueue(Reply(text="", tool_calls=[FakeToolCall("now", {}, id="toolu_01Z")]))
    provider = anthropic.make()
    request = anthropic.request(tools=(CLOCK,), tool_choice=NamedTool("now"))
    if streaming:
        deltas = await _deltas(provider, request)
        calls, content = _assemble(deltas), "".join(d.content for d in deltas)
    else:
        result = await provider.generate(request)
        calls, content = list(result.tool_calls), result.content
    assert calls == [ToolCall("toolu_01Z", "now", "{}")]
    assert content == ""


# -- the structured-output forced tool and the request's own tools -------------------------

FORCED = {"tools": [{"name": "response", "description": "Return the result.",
                     "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}],
          "tool_choice": {"type": "tool", "name": "response", "disable_parallel_tool_use": True}}


async def _answer(anthropic: Harness, request: ProviderRequest, streaming: bool) -> Completion:
    if not streaming:
        return await anthropic.make().generate(request)
    deltas = await _deltas(anthropic.make(), request)
    finish = next((d.finish_reason for d in reversed(deltas) if d.finish_reason), None)
    return Completion("".join(d.content for d in deltas), "", finish, tool_calls=tuple(_assemble(deltas)))


async def test_forced_structured_output_tool_is_the_text_answer(anthropic: Harness, streaming: bool) -> None:
    anthropic.server.enqueue(Reply(text="", tool_calls=[FakeToolCall("response", {"a": 1})]))
    request = anthropic.request(native_format=FORCED)
    result = await _answer(anthropic, request, streaming)
    assert orjson.loads(result.content) == {"a": 1}
    assert result.tool_calls == ()
    assert result.finish_reason == "stop"
    assert anthropic.server.requests[0].json["tool_choice"]["name"] == "response"  # type: ignore[index]


async def test_forced_tool_with_empty_input_is_an_empty_object(anthropic: Harness, streaming: bool) -> None:
    """Streamed or not, a forced tool's input that came as no JSON piece at all is ``{}``."""
    anthropic.server.enqueue(Reply(text="", tool_calls=[FakeToolCall("response", {}, pieces=[""])]))
    result = await _answer(anthropic, anthropic.request(native_format=FORCED), streaming)
    assert result.content == "{}"
    assert result.finish_reason == "stop"


async def test_user_tools_win_over_a_forced_tool_of_the_same_name(anthropic: Harness, streaming: bool) -> None:
    """A user tool named like the structured-output tool: its call is a tool call, never
    the text answer, and only the request's tools are sent."""
    mine = ToolSpec("response", {"type": "object", "properties": {"b": {"type": "string"}}})
    anthropic.server.enqueue(Reply(text="", tool_calls=[FakeToolCall("response", {"b": "x"}, id="toolu_01R")]))
    result = await _answer(anthropic, anthropic.request(native_format=FORCED, tools=(mine,)), streaming)
    assert result.content == ""
    assert result.tool_calls == (ToolCall("toolu_01R", "response", '{"b":"x"}'),)
    assert result.finish_reason == "tool_calls"
    sent = anthropic.server.requests[0].json
    assert sent is not None
    assert sent["tools"] == [{"name": "response", "input_schema": mine.parameters}]
    assert "tool_choice" not in sent


# -- the fake speaks the API's stream ---------------------------------------------------------


async def test_fake_streams_tool_use_as_the_api_does(anthropic: Harness) -> None:
    """content_block_start with ``input: {}``, a first ``partial_json`` of ``""``, the
    stop of each block, then ``message_delta`` with ``tool_use``."""
    anthropic.server.enqueue(Reply(text="Hm.", tool_calls=[FakeToolCall("now", {"tz": "UTC"}, id="toolu_01K")]))
    body = {"model": anthropic.model, "max_tokens": 50, "stream": True, "tools": [
        {"name": "now", "input_schema": {"type": "object"}}], "messages": [{"role": "user", "content": "Time?"}]}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient() as client:
        response = await client.post(anthropic.server.chat_url, json=body, headers=headers)
    events = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    kinds = [(e["type"], e.get("index")) for e in events]
    assert kinds == [("message_start", None), ("content_block_start", 0), ("ping", None),
                     ("content_block_delta", 0), ("content_block_stop", 0), ("content_block_start", 1),
                     ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_delta", 1),
                     ("content_block_delta", 1), ("content_block_stop", 1), ("message_delta", None),
                     ("message_stop", None)]
    assert events[5]["content_block"] == {"type": "tool_use", "id": "toolu_01K", "name": "now", "input": {}}
    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta" and e["index"] == 1]
    assert pieces[0] == "" and "".join(pieces) == '{"tz":"UTC"}'
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


@pytest.mark.parametrize("block", [{"type": "tool_use", "name": "now", "input": {}},
                                   {"type": "tool_use", "id": "toolu_01", "input": {}}])
async def test_a_tool_use_without_id_or_name_is_a_model_error(anthropic: Harness, streaming: bool,
                                                              block: dict[str, Any]) -> None:
    """A call the host could not answer (no id) or route (no name) is not passed on."""
    if streaming:
        body = _sse({"type": "message_start", "message": {"model": anthropic.model, "usage": {}}},
                    {"type": "content_block_start", "index": 0, "content_block": block},
                    {"type": "content_block_stop", "index": 0},
                    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}, {"type": "message_stop"})
        anthropic.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    else:
        message = {"type": "message", "model": anthropic.model, "content": [block], "stop_reason": "tool_use"}
        anthropic.server.enqueue(Raw(body=orjson.dumps(message), content_type="application/json"))
    with pytest.raises(ModelError, match="tool_use block has no id or name"):
        await run(anthropic.make(), anthropic.request(tools=(CLOCK,)), streaming)
