"""Tools and images of a request, checked and resolved before anything is sent.

:func:`prepare` runs once per request, before selection: every tool's ``parameters``
must be a valid JSON Schema of an object, every tool result must answer a call an
earlier assistant turn made, and every image is read and checked. An image given by
``path`` is read here (in a worker thread) and travels on inline; the media type of
inline bytes is read from the bytes themselves (a PNG named ``.jpg`` is a PNG), and
anything that is not a PNG, JPEG, GIF or WebP, or is larger than 20 MiB, is
``InvalidParams`` with the part's path. Nothing reaches a provider before this passed.

:func:`image_tokens` is the prompt-token allowance of one image, for the estimate and
the budget's bound. :func:`prepare` works it out while it reads an image (a
:class:`SniffedImage` carries it), so routing never decodes an image again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import stat
from pathlib import Path
from typing import Any

import orjson
from pydantic import PrivateAttr

from sidecar.errors import InvalidParams
from sidecar.providers.base import ChatMessage, ContentPart, ImageInput, NamedTool, ToolCall, ToolSpec
from sidecar.providers.images import MAX_IMAGE_BYTES, ImageFacts, sniff_image
from sidecar.wire.model import (
    AssistantTurn,
    ImagePart,
    ModelRequest,
    NamedToolChoice,
    TextPart,
    ToolTurn,
    UserTurn,
)

__all__ = [
    "MAX_IMAGE_BYTES",
    "ImageFacts",
    "SniffedImage",
    "check",
    "check_or_raise",
    "image_parts",
    "image_tokens",
    "images_tokens",
    "prepare",
    "provider_messages",
    "provider_tools",
    "sniff_image",
]

#: Tokens allowed for an image whose size is unknown (a URL): the most any provider's
#: published rule gives one image (Anthropic resizes past ~1,600 tokens).
UNKNOWN_IMAGE_TOKENS = 1_600
#: The allowance reads an inline image's size from its first bytes only (the base64
#: characters of at most 64 KiB, a multiple of 4): a header past them counts as unknown.
_SIZED_CHARS = 65536 * 4 // 3 // 4 * 4
_SIZED_BYTES = _SIZED_CHARS // 4 * 3


class SniffedImage(ImagePart):
    """An inline image part :func:`prepare` read, with its prompt-token allowance."""

    _tokens: int = PrivateAttr(default=UNKNOWN_IMAGE_TOKENS)

    @property
    def tokens(self) -> int:
        return self._tokens


def image_tokens(width: int, height: int) -> int:
    """Prompt tokens one image may cost, the larger of the published rules.

    OpenAI (https://platform.openai.com/docs/guides/images-vision, high detail): fit in
    2048x2048, shortest side scaled to 768, 170 per 512-px tile plus 85. Anthropic
    (https://docs.anthropic.com/en/docs/build-with-claude/vision): about width*height/750,
    images past 1568 px on the long edge are scaled down first (~1,600 tokens at most).
    Ollama does not publish a rule (its truncation assumes 768).
    """
    if width <= 0 or height <= 0:
        return UNKNOWN_IMAGE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    openai = 170 * math.ceil(w / 512) * math.ceil(h / 512) + 85
    scale = min(1.0, 1568 / max(width, height))
    anthropic = math.ceil(width * scale * height * scale / 750)
    return max(openai, min(anthropic, UNKNOWN_IMAGE_TOKENS), 768)


def check(request: ModelRequest) -> list[dict[str, str]]:
    """What is wrong with the request's tools and tool turns (no file is read)."""
    errors: list[dict[str, str]] = []
    _check_tools(request, errors)
    _check_tool_turns(request, errors)
    return errors


def check_or_raise(request: ModelRequest) -> None:
    """``InvalidParams`` listing what :func:`check` found, if anything."""
    errors = check(request)
    if errors:
        raise _invalid(errors)


async def prepare(request: ModelRequest) -> ModelRequest:
    """``request`` with its tools checked and its images resolved, or ``InvalidParams``
    listing every problem found."""
    errors = check(request)
    if not request.has_images:
        if errors:
            raise _invalid(errors)
        return request
    turns = list(request.messages or ())
    for i, turn in enumerate(turns):
        if isinstance(turn, UserTurn) and not isinstance(turn.content, str):
            parts = [await _resolve(part, f"/request/messages/{i}/content/{j}", errors)
                     if isinstance(part, ImagePart) else part for j, part in enumerate(turn.content)]
            turns[i] = turn.model_copy(update={"content": parts})
    if errors:
        raise _invalid(errors)
    return request.model_copy(update={"messages": turns})


def _invalid(errors: list[dict[str, str]]) -> InvalidParams:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidParams(f"invalid params: {first['path']}: {first['message']}{more}", errors=errors)


def _check_tools(request: ModelRequest, errors: list[dict[str, str]]) -> None:
    choice = request.tool_choice
    names = [tool.name for tool in request.tools or ()]
    if choice is not None and choice != "none" and not names:
        errors.append({"path": "/request/toolChoice", "message": "a toolChoice needs tools"})
    if isinstance(choice, NamedToolChoice) and choice.name not in names:
        errors.append({"path": "/request/toolChoice/name", "message": f"no tool named {choice.name!r} in tools"})
    errors.extend({"path": f"/request/tools/{i}/name", "message": f"the tool name {name!r} is used twice"}
                  for i, name in enumerate(names) if name in names[:i])
    if not request.tools:
        return
    from sidecar.structured.validate import compile_schema

    for i, tool in enumerate(request.tools):
        path = f"/request/tools/{i}/parameters"
        if tool.parameters.get("type") != "object":
            errors.append({"path": f"{path}/type", "message": 'a tool\'s parameters must be a schema of "type": "object"'})
            continue
        try:
            compile_schema(dict(tool.parameters))
        except InvalidParams as exc:
            errors.extend({"path": path + e["path"].removeprefix("/responseFormat/schema"), "message": e["message"]}
                          for e in exc.errors)


def _check_tool_turns(request: ModelRequest, errors: list[dict[str, str]]) -> None:
    """Every tool result answers a call an earlier assistant turn made; call ids are
    unique within their turn."""
    called: set[str] = set()
    for i, turn in enumerate(request.messages or ()):
        if isinstance(turn, AssistantTurn):
            ids = [call.id for call in turn.tool_calls or ()]
            if len(set(ids)) != len(ids):
                errors.append({"path": f"/request/messages/{i}/toolCalls", "message": "tool call ids must be unique"})
            called.update(ids)
        elif isinstance(turn, ToolTurn) and turn.tool_call_id not in called:
            errors.append({"path": f"/request/messages/{i}/toolCallId",
                           "message": "answers no tool call of an earlier assistant turn"})


async def _resolve(part: ImagePart, path: str, errors: list[dict[str, str]]) -> ImagePart:
    """An image part with inline bytes of a known media type, or a URL part as given."""
    if part.url is not None:
        return part
    if part.path is not None:
        data, problem = await asyncio.to_thread(_read_image_file, part.path)
        where = f"{path}/path"
    else:
        data, problem = _decode(part.data or "")
        where = f"{path}/data"
    if data is None:
        errors.append({"path": where, "message": problem})
        return part
    facts = sniff_image(data)
    if facts is None:
        errors.append({"path": where, "message": "not a PNG, JPEG, GIF or WebP image"})
        return part
    encoded = part.data if part.data is not None else base64.b64encode(data).decode("ascii")
    sniffed = SniffedImage.model_validate({"type": "image", "data": encoded, "mediaType": facts.media_type})
    # The same number images_tokens gives an unread part (its size from the first bytes).
    sniffed._tokens = _facts_tokens(facts if len(data) <= _SIZED_BYTES else sniff_image(data[:_SIZED_BYTES]))
    return sniffed


def _decode(data: str) -> tuple[bytes | None, str]:
    if len(data) > math.ceil(MAX_IMAGE_BYTES / 3) * 4 + 4:
        return None, f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None, "not valid base64 (give the bytes only, without a data: prefix)"
    if len(raw) > MAX_IMAGE_BYTES:
        return None, f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB"
    return raw, ""


def _read_image_file(name: str) -> tuple[bytes | None, str]:
    path = Path(name)
    if not path.is_absolute():
        return None, "the path must be absolute"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            return None, "not a regular file"
        if info.st_size > MAX_IMAGE_BYTES:
            return None, f"the file is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB ({info.st_size} bytes)"
        with path.open("rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror or type(exc).__name__})"
    if len(data) > MAX_IMAGE_BYTES:
        return None, f"the file is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB"
    return data, ""


def provider_messages(request: ModelRequest) -> list[ChatMessage]:
    """The request's turns in the provider-neutral form (images already resolved)."""
    out: list[ChatMessage] = []
    names: dict[str, str] = {}
    for turn in request.messages or ():
        if isinstance(turn, AssistantTurn):
            calls = tuple(ToolCall(c.id, c.name, orjson.dumps(c.arguments).decode()) for c in turn.tool_calls or ())
            names.update((c.id, c.name) for c in calls)
            out.append(ChatMessage("assistant", turn.content, tool_calls=calls))
        elif isinstance(turn, ToolTurn):
            out.append(ChatMessage("tool", turn.content, tool_call_id=turn.tool_call_id,
                                   tool_name=names.get(turn.tool_call_id), is_error=bool(turn.is_error)))
        elif isinstance(turn, UserTurn) and not isinstance(turn.content, str):
            parts = tuple(_part(p) for p in turn.content)
            text = "\n".join(p for p in parts if isinstance(p, str))
            out.append(ChatMessage("user", text, parts=parts))
        else:
            out.append(ChatMessage(turn.role, turn.content))  # type: ignore[arg-type]
    return out


def _part(part: TextPart | ImagePart) -> ContentPart:
    if isinstance(part, TextPart):
        return part.text
    if part.url is not None:
        return ImageInput(url=part.url)
    return ImageInput(media_type=part.media_type, data=part.data)


def provider_tools(request: ModelRequest) -> dict[str, Any]:
    """The ``tools``/``tool_choice``/``parallel_tool_calls`` fields of the provider request."""
    if not request.tools:
        return {}
    choice = request.tool_choice
    return {
        "tools": tuple(ToolSpec(t.name, dict(t.parameters), t.description) for t in request.tools),
        "tool_choice": NamedTool(choice.name) if isinstance(choice, NamedToolChoice) else choice,
        "parallel_tool_calls": request.parallel_tool_calls,
    }


def image_parts(request: ModelRequest) -> list[ImagePart]:
    """Every image part of the request, in order."""
    return [part for turn in request.messages or () if isinstance(turn, UserTurn) and not isinstance(turn.content, str)
            for part in turn.content if isinstance(part, ImagePart)]


def images_tokens(request: ModelRequest) -> int:
    """The prompt-token allowance of all the request's images (see :func:`image_tokens`):
    carried by the parts :func:`prepare` read, else from the first bytes of inline data."""
    total = 0
    for part in image_parts(request):
        if isinstance(part, SniffedImage):
            total += part.tokens
            continue
        facts = None
        if part.data is not None:
            try:
                facts = sniff_image(base64.b64decode(part.data[:_SIZED_CHARS]))
            except (binascii.Error, ValueError):
                facts = None
        total += _facts_tokens(facts)
    return total


def _facts_tokens(facts: ImageFacts | None) -> int:
    return image_tokens(facts.width, facts.height) if facts else UNKNOWN_IMAGE_TOKENS
