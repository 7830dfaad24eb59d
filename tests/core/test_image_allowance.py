"""The image token allowance: the same numbers as ever, worked out once per request.

``prepare()`` reads every inline image and keeps its allowance on the part, so the
planner's estimate and budget bound never decode an image again; a request nobody
prepared (``model:select``) has its images read once per decision, not once per use.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.core import agents, tokens
from sidecar.core.agents import UNKNOWN_IMAGE_TOKENS, image_parts, image_tokens, prepare
from sidecar.providers.images import sniff_image
from sidecar.wire.model import ModelRequest
from tests.core.test_planner import planner
from tests.support.images import gif, jpeg_header, png


def old_allowance(request: ModelRequest) -> int:
    """The allowance as it was computed before it was carried: each inline image's size
    read from its first 64 KiB, anything else the unknown-size allowance."""
    total = 0
    for part in image_parts(request):
        facts = None
        if part.data is not None:
            try:
                facts = sniff_image(base64.b64decode(part.data[:65536 * 4 // 3 // 4 * 4]))
            except (binascii.Error, ValueError):
                facts = None
        total += image_tokens(facts.width, facts.height) if facts else UNKNOWN_IMAGE_TOKENS
    return total


def late_jpeg(width: int, height: int) -> bytes:
    """A JPEG whose frame header (its size) comes after two full APP1 segments, past 64 KiB."""
    app1 = b"\xff\xe1" + struct.pack(">H", 65535) + os.urandom(65533)
    head = jpeg_header(width, height)
    return head[:2] + app1 + app1 + head[2:]


def inline(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "data": base64.b64encode(data).decode(), "mediaType": media_type}


def with_images(*parts: dict[str, Any]) -> ModelRequest:
    return ModelRequest.model_validate({"prompt": "Describe these.", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, *parts]}]})


IMAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "small png": lambda _: inline(png(4, 3)),
    "square png": lambda _: inline(png(1024, 1024)),
    "gif, mediaType wrong": lambda _: inline(gif(300, 200), "image/jpeg"),
    "jpeg, header first, 300 KiB": lambda _: inline(jpeg_header(4000, 3000) + os.urandom(300_000), "image/jpeg"),
    "jpeg, header past 64 KiB": lambda _: inline(late_jpeg(640, 480), "image/jpeg"),
    "path": lambda tmp: {"type": "image", "path": str(_write(tmp / "cat.png", png(2000, 600)))},
    "url": lambda _: {"type": "image", "url": "https://example.com/cat.png"},
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", list(IMAGES))
async def test_the_allowance_of_a_prepared_request_is_the_number_it_always_was(name: str, tmp_path: Path) -> None:
    request = with_images(IMAGES[name](tmp_path))
    prepared = await prepare(request)
    expected = old_allowance(prepared)
    assert tokens.image_allowance(prepared) == expected
    if name != "path":  # an unread path has no bytes yet: the unknown-size allowance
        assert tokens.image_allowance(request) == expected
    texts = tokens.request_texts(prepared)
    assert tokens.estimate(prepared) == sum(tokens.estimate_text(t) + 4 for t in texts) + expected
    decision = planner().decide(prepared, None)
    assert decision.prompt_tokens == tokens.estimate(prepared)
    assert decision.prompt_bound == tokens.upper_bound(texts) + expected


async def test_the_numbers_themselves(tmp_path: Path) -> None:
    parts = [IMAGES[name](tmp_path) for name in IMAGES]
    prepared = await prepare(with_images(*parts))
    # The late JPEG counts as unknown although prepare() read its size (640x480 is 768).
    each = [768, 1399, 768, 1600, UNKNOWN_IMAGE_TOKENS, 1445, UNKNOWN_IMAGE_TOKENS]
    assert [part.tokens for part in image_parts(prepared) if isinstance(part, agents.SniffedImage)] == each[:-1]
    assert tokens.image_allowance(prepared) == old_allowance(prepared) == sum(each)


class Counted:
    """A real function, called through and counted."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> tuple[Counted, Counted]:
    """(sniffs, base64 decodes) made by the image code from here on."""
    sniffs = Counted(agents.sniff_image)
    decodes = Counted(base64.b64decode)
    monkeypatch.setattr(agents, "sniff_image", sniffs)
    monkeypatch.setattr(agents.base64, "b64decode", decodes)
    return sniffs, decodes


async def test_routing_a_prepared_request_decodes_no_image_again(tmp_path: Path,
                                                                 counted: tuple[Counted, Counted]) -> None:
    sniffs, decodes = counted
    parts = [IMAGES[name](tmp_path) for name in IMAGES]
    prepared = await prepare(with_images(*parts))
    assert sniffs.calls >= 6  # prepare read every image that has bytes
    sniffs.calls = decodes.calls = 0
    decision = planner().decide(prepared, None)
    assert decision.prompt_bound > tokens.upper_bound(tokens.request_texts(prepared))
    assert (sniffs.calls, decodes.calls) == (0, 0)


def test_an_unprepared_request_has_its_images_read_once_per_decision(counted: tuple[Counted, Counted]) -> None:
    sniffs, decodes = counted
    request = with_images(inline(png(1024, 1024)), inline(gif(300, 200), "image/gif"),
                          {"type": "image", "url": "https://example.com/cat.png"})
    decision = planner().decide(request, None)
    assert (sniffs.calls, decodes.calls) == (2, 2)  # the two inline images, once each
    assert decision.prompt_bound == tokens.upper_bound(tokens.request_texts(request)) + old_allowance(request)
