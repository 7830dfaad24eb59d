"""Ollama ``/api/chat``: tools, tool turns and images on the wire, tool calls back.

Each test talks to the loopback Ollama fake, which renders ``message.tool_calls`` as the
server does (arguments as an object, each streamed call whole in one line, maybe on the
``done`` line, no ``id`` unless asked), answers 400 to images that are not bare base64
and to call arguments that are not an object, and "<model> does not support tools" for a
model without tools. Image URLs are fetched from a loopback image host.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from sidecar.errors import ModelError, ValidationError
from sidecar.providers import images
from sidecar.providers.base import (
    TOOL_ERROR_PREFIX,
    ChatMessage,
    ImageInput,
    NamedTool,
    Provider,
    ProviderRequest,
    StreamDelta,
    ToolCall,
    ToolSpec,
)
from sidecar.providers.http import HttpClientFactory
from sidecar.providers.images import MAX_IMAGE_BYTES
from tests.fakes import FakeToolCall, Raw, Reply
from tests.fakes.image_host import ImageHost, image_host
from tests.providers.conftest import Harness, run
from tests.support.images import png

pytestmark = pytest.mark.timeout(30)

WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]}, "The weather in a city.")
CLOCK = ToolSpec("now", {"type": "object", "properties": {}})
PNG = png(3, 2)
PNG_B64 = base64.b64encode(PNG).decode()
MADE_ID = re.compile(r"call_(\d+)_[0-9a-f]{8}")


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with image_host() as started:
        started.files["/cat.png"] = ("image/png", PNG)
        yield started


async def _sent(ollama: Harness, streaming: bool, **fields: Any) -> dict[str, Any]:
    await run(ollama.make(), ollama.request(**fields), streaming)
    (recorded,) = ollama.server.requests
    assert recorded.json is not None
    return recorded.json


async def _deltas(provider: Provider, request: ProviderRequest) -> list[StreamDelta]:
    return [delta async for delta in provider.stream(request)]


# -- the request --------------------------------------------------------------------------


async def test_tools_go_in_openais_shape_without_a_choice_field(ollama: Harness, streaming: bool) -> None:
    body = await _sent(ollama, streaming, tools=(WEATHER, CLOCK), tool_choice="auto", parallel_tool_calls=False)
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                          "parameters": WEATHER.parameters}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
    ]
    # Ollama reads neither; the router checks the answer against both.
    assert "tool_choice" not in body and "parallel_tool_calls" not in body


@pytest.mark.parametrize(("choice", "names"), [
    (None, ["get_weather", "now"]),
    ("required", ["get_weather", "now"]),
    (NamedTool("now"), ["now"]),
    ("none", None),
])
async def test_tool_choice_decides_which_tools_go(ollama: Harness, streaming: bool, choice: Any,
                                                  names: list[str] | None) -> None:
    body = await _sent(ollama, streaming, tools=(WEATHER, CLOCK), tool_choice=choice)
    sent = [tool["function"]["name"] for tool in body["tools"]] if "tools" in body else None
    assert sent == names


async def test_tool_loop_history_maps_to_tool_calls_and_tool_name(ollama: Harness, streaming: bool) -> None:
    turns = (
        ChatMessage("user", "Weather in Paris and Oslo?"),
        ChatMessage("assistant", "Checking.", tool_calls=(
            ToolCall("call_0_aaaa", "get_weather", '{"city":"Paris"}'),
            ToolCall("call_1_bbbb", "get_weather", '{"city":"Oslo"}'),
        )),
        ChatMessage("tool", "18 C", tool_call_id="call_0_aaaa", tool_name="get_weather"),
        ChatMessage("tool", "timeout", tool_call_id="call_1_bbbb", tool_name="get_weather", is_error=True),
    )
    body = await _sent(ollama, streaming, system="Be brief.", messages=turns, tools=(WEATHER,))
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_0_aaaa", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_1_bbbb", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        ]},
        {"role": "tool", "content": "18 C", "tool_name": "get_weather", "tool_call_id": "call_0_aaaa"},
        # No error field on the wire: a failed tool's result says so in its text.
        {"role": "tool", "content": TOOL_ERROR_PREFIX + "timeout", "tool_name": "get_weather",
         "tool_call_id": "call_1_bbbb"},
    ]


async def test_inline_images_go_bare_in_images_with_the_text_joined(ollama: Harness, streaming: bool) -> None:
    parts = ("What is this?", ImageInput(media_type="image/png", data=PNG_B64), "Be brief.")
    body = await _sent(ollama, streaming, messages=(ChatMessage("user", "What is this?\nBe brief.", parts=parts),))
    assert body["messages"] == [{"role": "user", "content": "What is this?\nBe brief.", "images": [PNG_B64]}]


async def test_an_image_url_is_fetched_and_sent_inline(ollama: Harness, streaming: bool, host: ImageHost) -> None:
    host.redirects["/moved"] = "/cat.png"
    parts = ("Two?", ImageInput(url=host.url("/cat.png")), ImageInput(url=host.url("/moved")))
    body = await _sent(ollama, streaming, messages=(ChatMessage("user", "Two?", parts=parts),))
    assert body["messages"] == [{"role": "user", "content": "Two?", "images": [PNG_B64, PNG_B64]}]
    assert [path for path, _ in host.seen] == ["/cat.png", "/moved", "/cat.png"]


async def test_the_image_fetch_carries_no_provider_header(ollama: Harness, host: ImageHost) -> None:
    provider = ollama.make(api_key="sk-ollama-proxy-SECRET", headers={"X-Team": "desk"})
    turn = ChatMessage("user", "", parts=(ImageInput(url=host.url("/cat.png")),))
    await provider.generate(ollama.request(messages=(turn,)))
    ((_, headers),) = host.seen
    assert "authorization" not in headers and "x-team" not in headers
    assert ollama.server.requests[0].headers.get("authorization") == "Bearer sk-ollama-proxy-SECRET"


@pytest.mark.parametrize(("path", "setup", "expected"), [
    ("/page", lambda h: h.files.update({"/page": ("text/html", b"<html>not an image</html>")}),
     "not a PNG, JPEG, GIF or WebP image"),
    ("/missing", lambda h: None, "HTTP 404"),
    ("/huge", lambda h: h.files.update({"/huge": ("image/png", PNG + b"\0" * MAX_IMAGE_BYTES)}),
     f"larger than 20 MiB ({len(PNG) + MAX_IMAGE_BYTES} bytes)"),
    ("/huge-unsized", lambda h: (h.files.update({"/huge-unsized": ("image/png", PNG + b"\0" * MAX_IMAGE_BYTES)}),
                                 h.unsized.add("/huge-unsized")), "larger than 20 MiB"),
])
async def test_an_unusable_image_url_is_a_clear_error_and_nothing_is_sent(
    ollama: Harness, streaming: bool, host: ImageHost, path: str, setup: Any, expected: str
) -> None:
    setup(host)
    turn = ChatMessage("user", "What is it?", parts=(ImageInput(url=host.url(path) + "?sig=SIGNED"),))
    with pytest.raises(ValidationError) as info:
        await run(ollama.make(), ollama.request(messages=(turn,)), streaming)
    assert info.value.message.startswith("ollama: cannot use the image at http://127.0.0.1: ")
    assert expected in info.value.message
    assert "SIGNED" not in info.value.message  # a signed URL's query is a credential
    assert not info.value.retryable
    assert ollama.server.requests == []


async def test_image_urls_obey_deny_remote_and_other_schemes_are_refused(ollama: Harness, streaming: bool) -> None:
    provider = ollama.make()
    provider.client = HttpClientFactory(deny_remote=True).build(provider.settings)
    for url, expected in (("http://192.0.2.7/a.png", "MODEL_SIDECAR_DENY_REMOTE"),
                          ("file:///etc/passwd", "only http and https image URLs can be fetched")):
        turn = ChatMessage("user", "?", parts=(ImageInput(url=url),))
        with pytest.raises(ValidationError) as info:
            await run(provider, ollama.request(messages=(turn,)), streaming)
        assert expected in info.value.message
    assert ollama.server.requests == []


async def test_a_model_without_tools_is_a_clear_error(ollama: Harness, streaming: bool) -> None:
    with pytest.raises(ValidationError) as info:
        await run(ollama.make(), ollama.request(model="llava:7b", tools=(WEATHER,)), streaming)
    assert info.value.message == "ollama: llava:7b does not support tools"
    assert info.value.status == 400


# -- the answer ---------------------------------------------------------------------------


TWO_CALLS = Reply(text="", tool_calls=[
    FakeToolCall("get_weather", {"city": "Paris"}),
    FakeToolCall("get_weather", {"city": "Oslo", "days": [1, 2]}),
])


async def test_tool_calls_come_back_with_made_ids(ollama: Harness) -> None:
    ollama.server.enqueue(TWO_CALLS)
    result = await ollama.make().generate(ollama.request(tools=(WEATHER,)))
    assert result.content == "" and result.finish_reason == "tool_calls"  # done_reason said "stop"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Oslo","days":[1,2]}')]
    ids = [c.id for c in result.tool_calls]
    assert [MADE_ID.fullmatch(i)[1] for i in ids] == ["0", "1"]  # type: ignore[index]
    assert len(set(ids)) == 2


async def test_server_ids_are_kept_and_a_repeated_one_replaced(ollama: Harness) -> None:
    ollama.server.enqueue(Reply(text="", tool_calls=[
        FakeToolCall("now", {}, id="call_k3x9a0qz"), FakeToolCall("now", {}, id="call_k3x9a0qz")]))
    result = await ollama.make().generate(ollama.request(tools=(CLOCK,)))
    first, second = result.tool_calls
    assert first.id == "call_k3x9a0qz" and MADE_ID.fullmatch(second.id)


async def test_a_text_answer_keeps_its_done_reason(ollama: Harness, streaming: bool) -> None:
    ollama.server.enqueue(Reply(text="Sunny.", finish_reason="length"))
    result = await run(ollama.make(), ollama.request(tools=(WEATHER,)), streaming)
    assert (result.content, result.finish_reason, result.tool_calls) == ("Sunny.", "length", ())


@pytest.mark.parametrize("on_final", [False, True], ids=["own-lines", "done-line"])
async def test_streamed_calls_come_whole_one_delta_each(ollama: Harness, on_final: bool) -> None:
    renderer = ollama.server.renderer
    renderer.calls_on_final = on_final  # type: ignore[attr-defined]
    try:
        ollama.server.enqueue(Reply(text="Let me check.", tool_calls=[*TWO_CALLS.tool_calls]))
        deltas = await _deltas(ollama.make(), ollama.request(tools=(WEATHER,)))
    finally:
        renderer.calls_on_final = False  # type: ignore[attr-defined]
    assert "".join(d.content for d in deltas) == "Let me check."
    pieces = [piece for d in deltas for piece in d.tool_calls]
    assert [(p.index, p.name, p.arguments_delta) for p in pieces] == [
        (0, "get_weather", '{"city":"Paris"}'), (1, "get_weather", '{"city":"Oslo","days":[1,2]}')]
    assert [MADE_ID.fullmatch(p.id or "")[1] for p in pieces] == ["0", "1"]  # type: ignore[index]
    assert deltas[-1].finish_reason == "tool_calls" and deltas[-1].usage is not None


async def test_streamed_server_ids_are_kept(ollama: Harness) -> None:
    renderer = ollama.server.renderer
    renderer.send_call_ids = True  # type: ignore[attr-defined]
    try:
        ollama.server.enqueue(Reply(text="", tool_calls=[FakeToolCall("now", {})]))
        deltas = await _deltas(ollama.make(), ollama.request(tools=(CLOCK,)))
    finally:
        renderer.send_call_ids = False  # type: ignore[attr-defined]
    (piece,) = [piece for d in deltas for piece in d.tool_calls]
    assert piece.id is not None and re.fullmatch(r"call_[a-z0-9]{8}", piece.id)
    assert (piece.index, piece.name, piece.arguments_delta) == (0, "now", "{}")


async def test_a_redirect_to_a_remote_host_obeys_deny_remote(ollama: Harness, host: ImageHost) -> None:
    host.redirects["/away"] = "http://192.0.2.7/cat.png"
    provider = ollama.make()
    provider.client = HttpClientFactory(deny_remote=True).build(provider.settings)
    turn = ChatMessage("user", "?", parts=(ImageInput(url=host.url("/away")),))
    with pytest.raises(ValidationError) as info:
        await provider.generate(ollama.request(messages=(turn,)))
    assert "MODEL_SIDECAR_DENY_REMOTE" in info.value.message
    assert [path for path, _ in host.seen] == ["/away"] and ollama.server.requests == []


async def test_an_image_fetch_is_bounded_in_time(ollama: Harness, host: ImageHost,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "FETCH_TIMEOUT_S", 0.5)
    host.stalled.add("/cat.png")  # headers and half the body, then nothing
    turn = ChatMessage("user", "?", parts=(ImageInput(url=host.url("/cat.png")),))
    with pytest.raises(ValidationError) as info:
        await asyncio.wait_for(ollama.make().generate(ollama.request(messages=(turn,))), 10)
    assert info.value.message == "ollama: cannot use the image at http://127.0.0.1: the fetch took longer than 0.5 s"
    assert info.value.retryable and ollama.server.requests == []


def _raw_answer(arguments: bytes, streaming: bool) -> Raw:
    """An answer calling ``now`` with ``arguments`` (raw JSON bytes), as one NDJSON line
    with its done line, or as one body."""
    call = b'{"role":"assistant","content":"","tool_calls":[{"function":{"name":"now","arguments":' + arguments + b"}}]}"
    if not streaming:
        return Raw(body=b'{"model":"llama3.2","message":' + call + b',"done":true,"done_reason":"stop"}',
                   content_type="application/json")
    return Raw(body=b'{"model":"llama3.2","message":' + call + b',"done":false}\n'
               b'{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n',
               content_type="application/x-ndjson")


async def _calls(ollama: Harness, streaming: bool) -> list[ToolCall]:
    request = ollama.request(tools=(CLOCK,))
    if not streaming:
        return list((await ollama.make().generate(request)).tool_calls)
    pieces = [piece for d in await _deltas(ollama.make(), request) for piece in d.tool_calls]
    return [ToolCall(p.id or "", p.name or "", p.arguments_delta) for p in pieces]


async def test_arguments_with_half_an_emoji_come_through_mended(ollama: Harness, streaming: bool) -> None:
    """A lone surrogate escape is valid JSON orjson cannot write back (half an emoji)."""
    ollama.server.enqueue(_raw_answer(b'{"note":"ok \\ud83d","n":1}', streaming))
    (call,) = await _calls(ollama, streaming)
    assert (call.name, orjson.loads(call.arguments)) == ("now", {"note": "ok ?", "n": 1})


async def test_arguments_nested_past_orjsons_limit_still_come_through(ollama: Harness, streaming: bool) -> None:
    ollama.server.enqueue(_raw_answer(b'{"a":' * 300 + b"1" + b"}" * 300, streaming))
    (call,) = await _calls(ollama, streaming)
    assert call.arguments == '{"a":' * 300 + "1" + "}" * 300


async def test_arguments_nested_past_what_json_can_write_are_a_model_error(ollama: Harness, streaming: bool) -> None:
    ollama.server.enqueue(_raw_answer(b'{"a":' * 1010 + b"1" + b"}" * 1010, streaming))
    with pytest.raises(ModelError) as info:
        await _calls(ollama, streaming)
    assert info.value.message == "ollama: tool call arguments nested too deeply"
