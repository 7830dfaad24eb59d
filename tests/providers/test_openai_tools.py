"""Tools and images on the Chat Completions wire: the exact request bodies the official
API and an OpenAI-compatible server (the llama.cpp fake) receive, and the calls read back
from their answers and streams. Real loopback servers; nothing below HTTP is faked."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from sidecar.errors import ModelError, ValidationError
from sidecar.providers.base import (
    TOOL_ERROR_PREFIX,
    ChatMessage,
    Completion,
    ImageInput,
    NamedTool,
    Provider,
    ProviderRequest,
    StreamDelta,
    ToolCall,
    ToolSpec,
)
from sidecar.providers.openai import build_chat_body
from sidecar.structured.grammar_profiles import lower_for_grammar
from sidecar.structured.lower import openai_strict_schema
from tests.fakes import FakeServer, FakeToolCall, Raw, Reply
from tests.providers.conftest import API_KEY, Harness, _harness
from tests.providers.test_openai_schema import assert_valid, validator  # noqa: F401 (fixture)
from tests.support.images import png

pytestmark = pytest.mark.timeout(30)

WEATHER = ToolSpec(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
     "required": ["city"]},
    "The weather in a city.",
)
#: Not expressible in strict mode (additionalProperties true): sent plain, without strict.
LOOSE = ToolSpec("note", {"type": "object", "properties": {"text": {"type": "string"}}, "additionalProperties": True})
#: A pattern llama.cpp's grammar converter cannot take, and a long bound it would unroll.
PATTERNED = ToolSpec("lookup", {"type": "object", "properties": {
    "code": {"type": "string", "pattern": r"^\d{3}\.\w+$"}, "tags": {"type": "array", "items": {"type": "string"},
                                                                      "maxItems": 5000}}, "required": ["code"]})
PNG_B64 = base64.b64encode(png(4, 4)).decode()

HISTORY = (
    ChatMessage("user", "Weather in Paris and Oslo?"),
    ChatMessage("assistant", "", tool_calls=(
        ToolCall("call_a", "get_weather", '{"city":"Paris"}'), ToolCall("call_b", "get_weather", '{"city":"Oslo"}'))),
    ChatMessage("tool", "18 C", tool_call_id="call_a", tool_name="get_weather"),
    ChatMessage("tool", "timeout", tool_call_id="call_b", tool_name="get_weather", is_error=True),
)
IMAGE_TURN = ChatMessage("user", "What is this?\nAnd this?", parts=(
    "What is this?", ImageInput(media_type="image/png", data=PNG_B64), "And this?",
    ImageInput(url="https://example.com/cat.jpg")))


@pytest.fixture(params=["openai", "llamacpp"])
def chat(request: pytest.FixtureRequest, servers: dict[str, FakeServer], providers: list[Provider]) -> Harness:
    """The official API's fake, then llama.cpp's."""
    return _harness(request.param, servers, providers)


async def stream_all(provider: Provider, request: ProviderRequest) -> tuple[Completion, list[StreamDelta]]:
    """A stream folded into a Completion, its calls assembled by index as the router does."""
    deltas = [delta async for delta in provider.stream(request)]
    heads: dict[int, list[str]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            head = heads.setdefault(piece.index, ["", "", ""])
            head[0] = piece.id or head[0]
            head[1] = piece.name or head[1]
            head[2] += piece.arguments_delta
    calls = tuple(ToolCall(*heads[i]) for i in sorted(heads))
    finish = next((d.finish_reason for d in reversed(deltas) if d.finish_reason), None)
    text = "".join(d.content for d in deltas)
    return Completion(text, request.model, finish, None, calls), deltas


async def answer(harness: Harness, streaming: bool, request: ProviderRequest) -> Completion:
    provider = harness.make()
    if streaming:
        return (await stream_all(provider, request))[0]
    return await provider.generate(request)


# -- requests ------------------------------------------------------------------------------------------------


def test_official_tools_are_strict_when_the_schema_allows_it() -> None:
    request = ProviderRequest("gpt-4o-mini", (ChatMessage("user", "hi"),), tools=(WEATHER, LOOSE))
    body = build_chat_body(request, official=True, stream=False)
    strict = openai_strict_schema(WEATHER.parameters)
    assert strict is not None and strict["additionalProperties"] is False
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                          "parameters": strict, "strict": True}},
        {"type": "function", "function": {"name": "note", "parameters": LOOSE.parameters}},
    ]
    # Neither tool_choice nor parallel_tool_calls unless asked for (the API's defaults).
    assert "tool_choice" not in body and "parallel_tool_calls" not in body


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    (NamedTool("note"), {"type": "function", "function": {"name": "note"}}),
])
def test_official_tool_choice_and_parallel_calls(choice: Any, wire: Any) -> None:
    request = ProviderRequest("gpt-4o-mini", (ChatMessage("user", "hi"),), tools=(WEATHER, LOOSE),
                              tool_choice=choice, parallel_tool_calls=False)
    body = build_chat_body(request, official=True, stream=True)
    assert body["tool_choice"] == wire
    assert body["parallel_tool_calls"] is False
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "note"]  # all offered


def test_no_tool_fields_without_tools() -> None:
    """The API refuses parallel_tool_calls and tool_choice without tools."""
    request = ProviderRequest("gpt-4o-mini", (ChatMessage("user", "hi"),), tool_choice="auto",
                              parallel_tool_calls=True)
    body = build_chat_body(request, official=True, stream=False)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & body.keys()


def test_history_and_images_on_the_wire() -> None:
    request = ProviderRequest("gpt-4o-mini", (*HISTORY, IMAGE_TURN), system="Be brief.")
    messages = build_chat_body(request, official=True, stream=False)["messages"]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_b", "content": TOOL_ERROR_PREFIX + "timeout"},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
            {"type": "text", "text": "And this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]},
    ]


def test_an_assistant_turn_with_text_and_calls_keeps_its_text() -> None:
    turn = ChatMessage("assistant", "Checking.", tool_calls=(ToolCall("c1", "note", "{}"),))
    [wire] = build_chat_body(ProviderRequest("m", (turn,)), official=True, stream=False)["messages"]
    assert wire["content"] == "Checking."


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", [None, "auto", "none", "required", NamedTool("get_weather")])
def test_tool_and_image_bodies_validate_against_the_openapi_spec(
    validator: Draft202012Validator, choice: Any, stream: bool,  # noqa: F811
) -> None:
    for model in ("gpt-4o-mini", "o4-mini", "gpt-5"):
        for parallel in (None, False, True):
            request = ProviderRequest(model, (*HISTORY, IMAGE_TURN), system="s", tools=(WEATHER, LOOSE, PATTERNED),
                                      tool_choice=choice, parallel_tool_calls=parallel, max_tokens=50)
            assert_valid(validator, build_chat_body(request, official=True, stream=stream))


def test_the_spec_refuses_a_broken_tool_body(validator: Draft202012Validator) -> None:  # noqa: F811
    """The check above can fail: a call without its function, a bad image part."""
    request = ProviderRequest("gpt-4o-mini", (*HISTORY, IMAGE_TURN), tools=(WEATHER,))
    body = build_chat_body(request, official=True, stream=False)
    body["messages"][1]["tool_calls"][0].pop("function")
    assert list(validator.iter_errors(body))
    body = build_chat_body(request, official=True, stream=False)
    body["messages"][-1]["content"][1]["image_url"] = "data:image/png;base64,AAAA"
    assert list(validator.iter_errors(body))
    body = build_chat_body(request, official=True, stream=False)
    body["tools"][0]["function"].pop("name")
    assert list(validator.iter_errors(body))


async def test_sent_tool_bodies_validate_and_the_fake_accepts_them(
    openai: Harness, streaming: bool, validator: Draft202012Validator,  # noqa: F811
) -> None:
    openai.server.enqueue(Reply("Sunny."))
    request = openai.request(messages=(*HISTORY, IMAGE_TURN), tools=(WEATHER, PATTERNED),
                             tool_choice="required", parallel_tool_calls=False)
    got = await answer(openai, streaming, request)
    assert got.content == "Sunny."
    [recorded] = openai.server.requests
    assert_valid(validator, recorded.json)
    assert recorded.json["tools"][0]["function"]["strict"] is True
    assert recorded.json["messages"][-1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_compatible_servers_get_grammar_lowered_schemas_without_strict() -> None:
    request = ProviderRequest("m", (ChatMessage("user", "hi"),), tools=(PATTERNED, WEATHER), tool_choice="auto",
                              parallel_tool_calls=True)
    body = build_chat_body(request, official=False, stream=False)
    lowered = lower_for_grammar(PATTERNED.parameters)
    assert lowered.dropped  # the pattern and the bound are not sent as they are
    assert body["tools"][0] == {"type": "function", "function": {"name": "lookup", "parameters": lowered.schema}}
    assert body["tools"][1]["function"]["parameters"] == lower_for_grammar(WEATHER.parameters).schema
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True


@pytest.mark.parametrize(("tools", "choice", "names", "wire"), [
    # llama-cpp-python forces only the named form; llama.cpp reads it as auto, so only that tool is offered.
    ((WEATHER, LOOSE), NamedTool("note"), ["note"], {"type": "function", "function": {"name": "note"}}),
    ((WEATHER,), "required", ["get_weather"], {"type": "function", "function": {"name": "get_weather"}}),
    ((WEATHER, LOOSE), "required", ["get_weather", "note"], "required"),
    ((WEATHER, LOOSE), "none", ["get_weather", "note"], "none"),
])
def test_compatible_tool_choice_mapping(tools: tuple[ToolSpec, ...], choice: Any, names: list[str],
                                        wire: Any) -> None:
    request = ProviderRequest("m", (ChatMessage("user", "hi"),), tools=tools, tool_choice=choice)
    body = build_chat_body(request, official=False, stream=True)
    assert [t["function"]["name"] for t in body["tools"]] == names
    assert body["tool_choice"] == wire
    assert "parallel_tool_calls" not in body


# -- answers -------------------------------------------------------------------------------------------------


async def test_calls_are_read_back(chat: Harness, streaming: bool) -> None:
    harness = chat
    harness.server.enqueue(Reply("", tool_calls=[
        FakeToolCall("get_weather", {"city": "Paris"}, id="call_1"),
        FakeToolCall("note", '{"text": "unfinished', pieces=['{"text"', ': "unfin', 'ished']),
    ]))
    got = await answer(harness, streaming, harness.request(tools=(WEATHER, LOOSE)))
    assert got.content == ""
    assert got.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in got.tool_calls] == [
        ("get_weather", '{"city":"Paris"}'), ("note", '{"text": "unfinished')]  # invalid JSON passed as is
    assert got.tool_calls[0].id == "call_1" and got.tool_calls[1].id


async def test_stream_deltas_carry_id_and_name_once(chat: Harness) -> None:
    harness = chat
    harness.server.enqueue(Reply("Let me check.", tool_calls=[
        FakeToolCall("get_weather", {"city": "Oslo"}, id="c_0", pieces=['{"city"', ':"Oslo"}']),
        FakeToolCall("get_weather", {"city": "Rome"}, id="c_1", pieces=['{"city":"Rome"}']),
    ]))
    got, deltas = await stream_all(harness.make(), harness.request(tools=(WEATHER,)))
    pieces = [p for d in deltas for p in d.tool_calls]
    assert [(p.index, p.id, p.name, p.arguments_delta) for p in pieces] == [
        (0, "c_0", "get_weather", ""), (0, None, None, '{"city"'), (0, None, None, ':"Oslo"}'),
        (1, "c_1", "get_weather", ""), (1, None, None, '{"city":"Rome"}'),
    ]
    assert all(d.content == "" for d in deltas if d.tool_calls)
    text_at = max(i for i, d in enumerate(deltas) if d.content)
    assert text_at < min(i for i, d in enumerate(deltas) if d.tool_calls)  # the text came first
    assert got.content == "Let me check." and got.finish_reason == "tool_calls"


def _sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def test_a_forced_call_that_says_stop_finishes_with_tool_calls(openai: Harness, streaming: bool) -> None:
    """With tool_choice required or named the API reports finish_reason "stop"."""
    call = {"id": "call_f", "type": "function", "function": {"name": "note", "arguments": '{"text":"x"}'}}
    if streaming:
        body = _sse(_choice({"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}),
                    _choice({}, "stop"))
        openai.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    else:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        body = orjson.dumps({"id": "x", "model": "m", "choices": [
            {"index": 0, "message": message, "finish_reason": "stop"}]})
        openai.server.enqueue(Raw(body=body, content_type="application/json"))
    got = await answer(openai, streaming, openai.request(tools=(LOOSE,), tool_choice=NamedTool("note")))
    assert got.finish_reason == "tool_calls"
    assert got.tool_calls == (ToolCall("call_f", "note", '{"text":"x"}'),)


async def test_llama_cpp_python_stream_repeats_heads_and_sends_null_calls(llamacpp: Harness) -> None:
    """llama-cpp-python's chatml-function-calling stream: ``tool_calls: null`` in the role
    chunk, then every piece repeating id, type and name, and the legacy function_call."""
    def piece(text: str) -> dict[str, Any]:
        return _choice({"role": None, "content": None, "function_call": {"name": "note", "arguments": text},
                        "tool_calls": [{"index": 0, "id": "call__0_note_cmpl-1", "type": "function",
                                        "function": {"name": "note", "arguments": text}}]})
    body = _sse(_choice({"role": "assistant", "content": None, "function_call": None, "tool_calls": None}),
                piece('{"text":'), piece(' "hi"}'),
                _choice({"role": None, "content": None, "function_call": None, "tool_calls": None}, "tool_calls"))
    llamacpp.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    got, deltas = await stream_all(llamacpp.make(), llamacpp.request(tools=(LOOSE,)))
    pieces = [p for d in deltas for p in d.tool_calls]
    assert [(p.index, p.id, p.name) for p in pieces] == [(0, "call__0_note_cmpl-1", "note"), (0, None, None)]
    assert got.tool_calls == (ToolCall("call__0_note_cmpl-1", "note", '{"text": "hi"}'),)


async def test_pieces_without_index_are_told_apart_by_id(llamacpp: Harness) -> None:
    def piece(call_id: str | None, name: str | None, text: str) -> dict[str, Any]:
        function = {"arguments": text, **({"name": name} if name else {})}
        return _choice({"tool_calls": [{**({"id": call_id} if call_id else {}), "function": function}]})
    body = _sse(piece("a", "note", '{"text"'), piece(None, None, ':"1"}'), piece("b", "note", "{}"),
                _choice({}, "tool_calls"))
    llamacpp.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    got, _ = await stream_all(llamacpp.make(), llamacpp.request(tools=(LOOSE,)))
    assert got.tool_calls == (ToolCall("a", "note", '{"text":"1"}'), ToolCall("b", "note", "{}"))


async def test_object_arguments_and_the_legacy_function_call(llamacpp: Harness) -> None:
    """A server that sends the arguments as an object, or only ``function_call``."""
    for message in ({"role": "assistant", "content": None, "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "note", "arguments": {"text": "é"}}}]},
                    {"role": "assistant", "content": None,
                     "function_call": {"name": "note", "arguments": '{"text":"é"}'}}):
        body = orjson.dumps({"id": "x", "model": "m", "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls"}]})
        llamacpp.server.enqueue(Raw(body=body, content_type="application/json"))
        got = await llamacpp.make().generate(llamacpp.request(tools=(LOOSE,)))
        assert [(c.name, c.arguments) for c in got.tool_calls] == [("note", '{"text":"é"}')]
        assert got.finish_reason == "tool_calls"


async def test_streamed_arguments_count_towards_the_answer_bound(openai: Harness) -> None:
    big = '{"text":"' + "x" * 3000 + '"}'
    openai.server.enqueue(Reply("", tool_calls=[FakeToolCall("note", big, pieces=[big[:1500], big[1500:]])]))
    with pytest.raises(ModelError, match="oversized"):
        await stream_all(openai.make(), openai.request(tools=(LOOSE,), max_response_bytes=2048))


async def test_llamacpp_receives_the_compatible_form(llamacpp: Harness, streaming: bool) -> None:
    llamacpp.server.enqueue(Reply("", tool_calls=[FakeToolCall("note", {"text": "x"})]))
    request = llamacpp.request(messages=(*HISTORY, IMAGE_TURN), tools=(WEATHER, LOOSE), tool_choice=NamedTool("note"),
                               parallel_tool_calls=False)
    got = await answer(llamacpp, streaming, request)
    assert got.tool_calls[0].name == "note" and len(got.tool_calls[0].id) == 32
    [recorded] = llamacpp.server.requests
    body = recorded.json
    assert body["tools"] == [{"type": "function", "function": {"name": "note",
                                                               "parameters": lower_for_grammar(LOOSE.parameters).schema}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "note"}}
    assert body["parallel_tool_calls"] is False
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_b", "content": "Error: timeout"}
    assert body["messages"][-1]["content"][1] == {"type": "image_url",
                                                  "image_url": {"url": "data:image/png;base64," + PNG_B64}}


async def test_llamacpp_refusals_are_provider_errors(llamacpp: Harness) -> None:
    """Without --jinja tools are refused, without a projector images are: a clear error."""
    renderer: Any = llamacpp.server.renderer
    try:
        renderer.jinja = False
        with pytest.raises(ValidationError, match="--jinja"):
            await llamacpp.make().generate(llamacpp.request(tools=(LOOSE,)))
        renderer.jinja, renderer.mmproj = True, False
        with pytest.raises(ValidationError, match="mmproj"):
            await llamacpp.make().generate(llamacpp.request(messages=(IMAGE_TURN,)))
    finally:
        renderer.jinja, renderer.mmproj = True, True


async def test_the_key_is_scrubbed_from_call_arguments(openai: Harness, streaming: bool) -> None:
    """A server echoing the key in a call's arguments, split across pieces in a stream."""
    text = '{"text": "' + API_KEY + '"}'
    cut = text.index(API_KEY) + 7
    openai.server.enqueue(Reply("", tool_calls=[FakeToolCall("note", text, pieces=[text[:cut], text[cut:]])]))
    provider = openai.make()
    request = openai.request(tools=(LOOSE,))
    if streaming:
        got, deltas = await stream_all(provider, request)
        assert all(API_KEY[:7] not in p.arguments_delta for d in deltas for p in d.tool_calls)
    else:
        got = await provider.generate(request)
    assert got.tool_calls[0].arguments == '{"text": "[redacted]"}'


async def test_a_call_cut_by_the_length_limit_says_length(chat: Harness, streaming: bool) -> None:
    chat.server.enqueue(Reply("", finish_reason="length", tool_calls=[FakeToolCall("note", '{"text": "abc')]))
    got = await answer(chat, streaming, chat.request(tools=(LOOSE,), max_tokens=5))
    assert got.finish_reason == "length"
    assert got.tool_calls[0].arguments == '{"text": "abc'


async def test_tool_fields_without_tools_never_reach_the_api(openai: Harness, streaming: bool) -> None:
    """The fake refuses them as the API does (400); the provider leaves them out."""
    got = await answer(openai, streaming, openai.request(tool_choice="required", parallel_tool_calls=False))
    assert got.content
    assert not {"tool_choice", "parallel_tool_calls"} & openai.server.requests[0].json.keys()


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "r"}], "messages.[1].role"),
    ([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "user", "content": "x"}], "messages"),
    ([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "content": "r"}], "messages.[1].tool_call_id"),
])
def test_the_openai_fake_refuses_malformed_tool_turns(openai: Harness, messages: list[Any], param: str) -> None:
    response = httpx.post(openai.server.chat_url, json={"model": "gpt-4o-mini", "messages": messages},
                          headers={"authorization": f"Bearer {API_KEY}"}, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert openai.server.pending == 0 and not openai.server.served


async def test_a_stream_of_the_deprecated_function_call(llamacpp: Harness, streaming: bool) -> None:
    """A server that only speaks the deprecated ``function_call``: the same call either way."""
    if streaming:
        body = _sse(_choice({"role": "assistant", "content": None, "function_call": {"name": "note", "arguments": ""}}),
                    _choice({"function_call": {"name": "note", "arguments": '{"text":'}}),
                    _choice({"function_call": {"arguments": '"x"}'}}), _choice({}, "function_call"))
        llamacpp.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    else:
        message = {"role": "assistant", "content": None, "function_call": {"name": "note", "arguments": '{"text":"x"}'}}
        llamacpp.server.enqueue(Raw(body=orjson.dumps({"id": "x", "model": "m", "choices": [
            {"index": 0, "message": message, "finish_reason": "function_call"}]}), content_type="application/json"))
    got = await answer(llamacpp, streaming, llamacpp.request(tools=(LOOSE,)))
    assert got.tool_calls == (ToolCall("", "note", '{"text":"x"}'),)
    assert got.finish_reason == "tool_calls"
