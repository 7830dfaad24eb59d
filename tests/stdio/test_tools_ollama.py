"""Tools and images through stdio against the Ollama fake: a whole two-turn tool loop
with the ids the sidecar makes, an invalid call retried, streamed calls as deltas (on
their own line and on the done line), images from a path, base64 and a URL the sidecar
fetches, and the clear errors of an unusable image URL and of a model without tools."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer, FakeToolCall, Reply
from tests.fakes.image_host import ImageHost, image_host
from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid
from tests.support.images import png

pytestmark = pytest.mark.stdio

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "minLength": 2}},
                          "required": ["city"], "additionalProperties": False}}
MADE_ID = re.compile(r"call_\d+_[0-9a-f]{8}")
PNG = png(4, 3)
PNG_B64 = base64.b64encode(PNG).decode()
VISION_MODEL = "llava:7b"  # the fake's /api/show lists vision (and no tools) for it


@pytest.fixture
def ollama(fakes: dict[str, Any]) -> Iterator[FakeServer]:
    """The Ollama fake, listing a vision model beside its defaults."""
    server = FakeServer("ollama", models=["llama3.2:latest", VISION_MODEL]).start()
    fakes["ollama"].stop()
    fakes["ollama"] = server
    yield server


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with image_host() as started:
        started.files["/cat.png"] = ("image/png", PNG)
        started.files["/page"] = ("text/html", b"<html>no image here</html>")
        yield started


def ask(*, messages: list[dict[str, Any]] | None = None, model: str | None = None, **request: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "" if messages else "What is the weather in Paris and Oslo?", **request}
    if messages:
        body["messages"] = messages
    selection: dict[str, Any] = {"provider": "ollama", "fallback": False}
    if model:
        selection["modelId"] = model
    return {"request": body, "selection": selection}


def test_a_two_turn_tool_loop(spawn: Spawn, fakes: dict[str, Any], ollama: FakeServer) -> None:
    ollama.enqueue(Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}),
                                         FakeToolCall("get_weather", {"city": "Oslo"})]),
                   Reply("Paris is at 18 C; Oslo did not answer."))
    sidecar = spawn(fake_config(fakes))
    first = sidecar.call("model:generate", ask(tools=[WEATHER]))
    assert_wire_valid(first, "model:generate")
    calls = first["result"]["toolCalls"]
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                            ("get_weather", {"city": "Oslo"})]
    assert all(MADE_ID.fullmatch(c["id"]) for c in calls) and calls[0]["id"] != calls[1]["id"]
    assert first["result"]["finishReason"] == "tool_calls"

    turns = [
        {"role": "user", "content": "What is the weather in Paris and Oslo?"},
        {"role": "assistant", "content": "", "toolCalls": calls},
        {"role": "tool", "toolCallId": calls[0]["id"], "content": "18 C"},
        {"role": "tool", "toolCallId": calls[1]["id"], "content": "station offline", "isError": True},
    ]
    second = sidecar.result("model:generate", ask(messages=turns, tools=[WEATHER]))
    assert second["content"] == "Paris is at 18 C; Oslo did not answer." and "toolCalls" not in second
    sent = ollama.requests[1].json["messages"]
    assert sent[1:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": calls[0]["id"], "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": calls[1]["id"], "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "18 C", "tool_name": "get_weather", "tool_call_id": calls[0]["id"]},
        {"role": "tool", "content": "Error: station offline", "tool_name": "get_weather",
         "tool_call_id": calls[1]["id"]},
    ]


def test_an_invalid_call_is_retried_and_both_attempts_are_listed(spawn: Spawn, fakes: dict[str, Any],
                                                                 ollama: FakeServer) -> None:
    ollama.enqueue(Reply("", tool_calls=[FakeToolCall("get_weather", {"city": 5})]),
                   Reply("", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"})]))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask(tools=[WEATHER], toolChoice={"name": "get_weather"}))
    assert result["toolCalls"][0]["arguments"] == {"city": "Paris"}
    attempts = result["metadata"]["attempts"]
    assert [(a["provider"], a.get("structuredAttempt")) for a in attempts] == [("ollama", 0), ("ollama", 1)]
    first, second = ollama.requests
    # A named choice cannot be forced on Ollama's wire: only that tool goes, both times.
    assert [t["function"]["name"] for t in first.json["tools"]] == ["get_weather"] == [
        t["function"]["name"] for t in second.json["tools"]]
    assert "/toolCalls/0/arguments/city" in second.json["messages"][-1]["content"]


@pytest.mark.parametrize("on_final", [False, True], ids=["own-line", "done-line"])
def test_streamed_calls_arrive_as_deltas_with_seq_unbroken(spawn: Spawn, fakes: dict[str, Any],
                                                           ollama: FakeServer, on_final: bool) -> None:
    ollama.renderer.calls_on_final = on_final  # type: ignore[attr-defined]
    ollama.enqueue(Reply("Checking.", tool_calls=[FakeToolCall("get_weather", {"city": "Paris"}),
                                                  FakeToolCall("get_weather", {"city": "Oslo"})]))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask(tools=[WEATHER]))
    response = sidecar.response(request_id)
    assert_wire_valid(response, "model:stream")
    chunks = [m["params"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    deltas = [d for c in chunks for d in c["chunk"].get("toolCalls", ())]
    assert [(d["index"], d["name"], json.loads(d["argumentsDelta"])) for d in deltas] == [
        (0, "get_weather", {"city": "Paris"}), (1, "get_weather", {"city": "Oslo"})]
    assert "".join(c["chunk"]["content"] for c in chunks) == "Checking."
    assert chunks[-1]["chunk"]["done"] is True
    result = response["result"]
    assert [c["id"] for c in result["toolCalls"]] == [d["id"] for d in deltas]
    assert all(MADE_ID.fullmatch(d["id"]) for d in deltas)
    assert result["finishReason"] == "tool_calls"


def test_images_from_a_path_base64_and_a_url_reach_ollama_inline(
    spawn: Spawn, fakes: dict[str, Any], ollama: FakeServer, host: ImageHost, tmp_path: Path
) -> None:
    picture = tmp_path / "photo.jpg"  # the name lies: the bytes say PNG
    picture.write_bytes(PNG)
    content = [{"type": "text", "text": "Compare these."},
               {"type": "image", "path": str(picture)},
               {"type": "image", "data": PNG_B64, "mediaType": "image/png"},
               {"type": "image", "url": host.url("/cat.png")},
               {"type": "text", "text": "Be brief."}]
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask(messages=[{"role": "user", "content": content}],
                                                  model=VISION_MODEL))
    assert result["content"] and result["model"] == VISION_MODEL
    (sent,) = ollama.requests
    assert sent.json["messages"] == [
        {"role": "user", "content": "Compare these.\nBe brief.", "images": [PNG_B64, PNG_B64, PNG_B64]}]
    assert [path for path, _ in host.seen] == ["/cat.png"]


@pytest.mark.parametrize(("url", "expected"), [
    ("/page", "not a PNG, JPEG, GIF or WebP image"),
    ("/gone.png", "HTTP 404"),
    ("http://192.0.2.7/remote.png", "MODEL_SIDECAR_DENY_REMOTE"),
])
def test_an_unusable_image_url_is_a_clear_error(spawn: Spawn, fakes: dict[str, Any], ollama: FakeServer,
                                                host: ImageHost, url: str, expected: str) -> None:
    target = host.url(url) if url.startswith("/") else url
    content = [{"type": "text", "text": "What is it?"}, {"type": "image", "url": target}]
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(messages=[{"role": "user", "content": content}],
                                                  model=VISION_MODEL))
    assert_wire_valid(response, "model:generate")
    error = response["error"]
    assert error["code"] == -32005 and error["data"]["type"] == "ValidationError", error
    assert "cannot use the image at http://" in error["message"] and expected in error["message"], error
    assert ollama.requests == []
    assert sidecar.result("model:get-config", {})  # still serving


def test_a_model_without_tools_is_refused_clearly(spawn: Spawn, fakes: dict[str, Any], ollama: FakeServer) -> None:
    # Not in the fake's listing, so the sidecar knows nothing of it and tries it: Ollama's 400.
    ollama.renderer.no_tools.add("phi:2.7b")  # type: ignore[attr-defined]
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(tools=[WEATHER], model="phi:2.7b"))
    assert_wire_valid(response, "model:generate")
    error = response["error"]
    assert (error["code"], error["message"], error["data"]["status"]) == (
        -32005, "ollama: phi:2.7b does not support tools", 400), error
    (sent,) = ollama.requests
    assert sent.json["tools"][0]["function"]["name"] == "get_weather"
    assert sidecar.result("model:get-config", {})  # still serving
