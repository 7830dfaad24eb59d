"""Tools and images checked and resolved before anything is sent (``core.agents.prepare``)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.core import tokens
from sidecar.core.agents import MAX_IMAGE_BYTES, image_tokens, prepare, provider_messages, provider_tools
from sidecar.errors import InvalidParams
from sidecar.providers.base import ImageInput, NamedTool
from sidecar.wire.model import ModelRequest
from tests.support.images import gif, jpeg_header, png

TOOL = {"name": "read_file", "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


def request(**fields: Any) -> ModelRequest:
    return ModelRequest.model_validate({"prompt": "", **fields})


def image_turn(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]}


async def errors_of(req: ModelRequest) -> list[dict[str, str]]:
    with pytest.raises(InvalidParams) as info:
        await prepare(req)
    return info.value.errors


async def test_a_path_image_is_read_and_typed_from_its_bytes(tmp_path: Path) -> None:
    lying = tmp_path / "photo.jpg"  # a PNG whatever the name says
    lying.write_bytes(png(4, 3))
    prepared = await prepare(request(messages=[image_turn({"type": "image", "path": str(lying)})]))
    part = prepared.messages[0].content[1]  # type: ignore[index,union-attr]
    assert part.media_type == "image/png" and part.path is None
    assert base64.b64decode(part.data) == png(4, 3)
    (message,) = provider_messages(prepared)
    assert message.parts == ("What is this?", ImageInput(media_type="image/png", data=part.data))


async def test_inline_bytes_get_the_media_type_of_the_bytes() -> None:
    data = base64.b64encode(gif()).decode()
    prepared = await prepare(request(messages=[image_turn({"type": "image", "data": data, "mediaType": "image/png"})]))
    assert prepared.messages[0].content[1].media_type == "image/gif"  # type: ignore[index,union-attr]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: str(p / "missing.png"), "no such file"),
    (lambda p: "relative/cat.png", "absolute"),
    (lambda p: str(p), "not a regular file"),
])
async def test_unusable_paths_are_invalid_params(tmp_path: Path, make: Any, message: str) -> None:
    errors = await errors_of(request(messages=[image_turn({"type": "image", "path": make(tmp_path)})]))
    assert errors == [{"path": "/request/messages/0/content/1/path", "message": errors[0]["message"]}]
    assert message in errors[0]["message"]


async def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    errors = await errors_of(request(messages=[image_turn({"type": "image", "path": str(fifo)})]))
    assert "not a regular file" in errors[0]["message"]


async def test_oversized_and_non_image_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # sparse: 20 MiB + 1 byte costs no disk
        handle.write(png())
        handle.truncate(MAX_IMAGE_BYTES + 1)
    text = tmp_path / "notes.png"
    text.write_text("just text")
    errors = await errors_of(request(messages=[
        image_turn({"type": "image", "path": str(big)}), image_turn({"type": "image", "path": str(text)})]))
    assert [e["path"] for e in errors] == ["/request/messages/0/content/1/path", "/request/messages/1/content/1/path"]
    assert "larger than 20 MiB" in errors[0]["message"]
    assert "not a PNG, JPEG, GIF or WebP" in errors[1]["message"]


async def test_bad_base64_and_data_urls_are_refused() -> None:
    errors = await errors_of(request(messages=[image_turn(
        {"type": "image", "data": "data:image/png;base64,AAAA", "mediaType": "image/png"},
        {"type": "image", "data": base64.b64encode(b"plain text, no image").decode(), "mediaType": "image/png"})]))
    assert [e["path"] for e in errors] == ["/request/messages/0/content/1/data", "/request/messages/0/content/2/data"]
    assert "base64" in errors[0]["message"]


async def test_a_url_image_passes_unread() -> None:
    prepared = await prepare(request(messages=[image_turn({"type": "image", "url": "https://example.com/cat.png"})]))
    (message,) = provider_messages(prepared)
    assert message.parts[1] == ImageInput(url="https://example.com/cat.png")


async def test_a_tool_schema_that_is_not_a_schema_names_its_path() -> None:
    bad = {**TOOL, "name": "write_file", "parameters": {"type": "object", "properties": {"path": {"type": "strin"}}}}
    errors = await errors_of(request(prompt="hi", tools=[TOOL, bad]))
    assert errors[0]["path"].startswith("/request/tools/1/parameters/properties/path")
    not_object = {**TOOL, "parameters": {"type": "array"}}
    errors = await errors_of(request(prompt="hi", tools=[not_object]))
    assert errors == [{"path": "/request/tools/0/parameters/type", "message": errors[0]["message"]}]


async def test_a_tool_result_must_answer_an_earlier_call() -> None:
    call = {"id": "call_1", "name": "read_file", "arguments": {"path": "README.md"}}
    ok = request(tools=[TOOL], messages=[
        {"role": "user", "content": "read it"}, {"role": "assistant", "content": "", "toolCalls": [call]},
        {"role": "tool", "toolCallId": "call_1", "content": "# model-sidecar"}])
    assert await prepare(ok) is ok
    (_, assistant, result) = provider_messages(ok)
    assert assistant.tool_calls[0].arguments == '{"path":"README.md"}'
    assert (result.role, result.tool_call_id, result.tool_name) == ("tool", "call_1", "read_file")
    orphan = request(tools=[TOOL], messages=[{"role": "user", "content": "x"},
                                             {"role": "tool", "toolCallId": "call_9", "content": "?"}])
    assert (await errors_of(orphan))[0]["path"] == "/request/messages/1/toolCallId"
    twice = request(messages=[{"role": "assistant", "content": "", "toolCalls": [call, call]}])
    assert (await errors_of(twice))[0]["path"] == "/request/messages/0/toolCalls"


async def test_tool_names_and_tool_choice_are_checked_with_their_paths() -> None:
    errors = await errors_of(request(prompt="x", tools=[TOOL, TOOL], toolChoice={"name": "write_file"}))
    assert [e["path"] for e in errors] == ["/request/toolChoice/name", "/request/tools/1/name"]
    assert (await errors_of(request(prompt="x", toolChoice="required")))[0]["path"] == "/request/toolChoice"
    assert await prepare(request(prompt="x", toolChoice="none")) is not None
    req = request(prompt="x", tools=[TOOL], toolChoice={"name": "read_file"}, parallelToolCalls=False)
    fields = provider_tools(req)
    assert fields["tool_choice"] == NamedTool("read_file") and fields["parallel_tool_calls"] is False


def test_images_and_tools_count_in_the_estimate_and_the_bound() -> None:
    plain = request(prompt="What is this?")
    with_image = request(messages=[image_turn({"type": "image", "data": base64.b64encode(jpeg_header(1024, 1024))
                                               .decode(), "mediaType": "image/jpeg"})])
    assert tokens.estimate(with_image) - tokens.estimate(plain) >= image_tokens(1024, 1024) - 10
    assert tokens.image_allowance(with_image) == image_tokens(1024, 1024)
    with_tools = request(prompt="What is this?", tools=[TOOL])
    assert tokens.estimate(with_tools) > tokens.estimate(plain) + 10


def test_image_token_rules() -> None:
    assert image_tokens(1024, 1024) >= 765  # OpenAI high detail: 4 tiles + 85
    assert image_tokens(8000, 8000) == 1600  # Anthropic's cap after resizing
    assert image_tokens(-1, -1) == 1600  # unknown size: the most any rule gives
