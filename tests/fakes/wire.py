"""Shared building blocks for the per-provider renderers.

A `Renderer` turns a resolved `Plan` (a `Reply` plus what the request asked for)
into bytes: a JSON body, or stream frames split into *head*, one frame per
content *piece*, and *tail*. Keeping the pieces separate is what lets the server
cut, poison or interrupt a stream after exactly N content chunks. Everything here
is pure (no sockets); `server.py` does the I/O.

JSON is serialized with orjson, which writes non-ASCII characters (emoji, CJK,
U+2028/U+2029) as raw UTF-8 and escapes control characters such as ``\\r``, as
the real services do.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from .behaviours import Error, FakeToolCall, Reply
from .recording import RecordedRequest

__all__ = [
    "ChatContext",
    "Plan",
    "Renderer",
    "Route",
    "WireResponse",
    "arguments_pieces",
    "arguments_text",
    "count_words",
    "dumps",
    "random_token",
    "split_pieces",
    "sse",
]

_ALPHANUM = string.ascii_letters + string.digits


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    """Serialize like the services do: UTF-8, no ASCII escaping, optional 2-space indent."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else 0)


def sse(data: bytes, event: str | None = None) -> bytes:
    """One Server-Sent Events frame, terminated by a blank line."""
    head = b"event: " + event.encode() + b"\n" if event is not None else b""
    return head + b"data: " + data + b"\n\n"


def random_token(length: int, alphabet: str = _ALPHANUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def split_pieces(text: str, at_least: int = 0) -> list[str]:
    """Split text into word pieces that keep their leading whitespace.

    ``"Hello from the fake."`` → ``["Hello", " from", " the", " fake."]``; the pieces
    always concatenate back to ``text``. A text with a space yields at least two
    pieces. With ``at_least``, filler pieces (``" more"``) are appended until there
    are that many.
    """
    pieces: list[str] = re.findall(r"\s*\S+", text)
    joined = "".join(pieces)
    if len(joined) < len(text):
        # Only trailing whitespace can be left over.
        if pieces:
            pieces[-1] += text[len(joined) :]
        else:
            pieces = [text]
    if len(pieces) == 1 and " " in text and len(text) > 1:
        half = len(text) // 2
        pieces = [text[:half], text[half:]]
    while len(pieces) < at_least:
        pieces.append(" more")
    return pieces


def arguments_text(call: FakeToolCall) -> str:
    """A scripted call's argument text: a raw string as given, an object as compact JSON."""
    return call.arguments if isinstance(call.arguments, str) else dumps(dict(call.arguments)).decode()


def arguments_pieces(call: FakeToolCall) -> list[str]:
    """The stream deltas of a call's argument text: ``call.pieces``, or the text in up to
    three pieces (they always join back to :func:`arguments_text`)."""
    if call.pieces is not None:
        return list(call.pieces)
    text = arguments_text(call)
    step = max(1, -(-len(text) // 3))
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


def _text_of(content: Any) -> str:
    """Concatenate the text of a message ``content`` (string or list of parts/blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                for key in ("text", "content"):
                    value = part.get(key)
                    if isinstance(value, str | list):
                        parts.append(_text_of(value))
        return " ".join(parts)
    return ""


def count_words(body: Mapping[str, Any]) -> int:
    """Deterministic prompt-token stand-in: whitespace words of all messages and system, min 1."""
    texts = [_text_of(body.get("system"))]
    messages = body.get("messages")
    if isinstance(messages, list):
        texts.extend(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
    return max(1, sum(len(t.split()) for t in texts))


@dataclass(frozen=True)
class WireResponse:
    """A complete, non-streamed HTTP response."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatContext:
    """What the chat request asked for, as far as rendering cares."""

    body: dict[str, Any]
    headers: dict[str, str]
    model: str
    stream: bool
    is_object: bool = True  # False when the body was not a JSON object at all


@dataclass(frozen=True)
class Plan:
    """A `Reply` resolved against its request: everything a renderer needs."""

    model: str
    text: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    response_id: str
    created: int
    extra_headers: dict[str, str]
    #: The reply's tool calls, rendered after its text (each renderer in its own form).
    tool_calls: tuple[FakeToolCall, ...] = ()


@dataclass(frozen=True)
class Route:
    """A non-chat endpoint (model listing, health…); ``auth`` says whether the API key is checked."""

    method: str
    path: str
    handler: Callable[[RecordedRequest], WireResponse]
    auth: bool = True


class Renderer(ABC):
    """One provider's wire format. Subclasses fill in the abstract methods."""

    kind: ClassVar[str]
    chat_path: ClassVar[str]
    stream_by_default: ClassVar[bool] = False
    json_content_type: ClassVar[str] = "application/json"
    stream_content_type: ClassVar[str] = "text/event-stream; charset=utf-8"
    garbage_frame: ClassVar[bytes] = b"data: {not json\n\n"
    stream_extra_headers: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        *,
        models: Sequence[str],
        api_key: str | None,
        context_lengths: Mapping[str, int],
    ) -> None:
        self.models = list(models)
        self.api_key = api_key
        self.context_lengths = dict(context_lengths)

    # -- request side -------------------------------------------------------------

    def context(self, body: Any, headers: dict[str, str]) -> ChatContext:
        data: dict[str, Any] = body if isinstance(body, dict) else {}
        stream = data.get("stream", self.stream_by_default)
        model = data.get("model")
        return ChatContext(
            body=data,
            headers=headers,
            model=model if isinstance(model, str) else "",
            stream=bool(stream) if stream is not None else self.stream_by_default,
            is_object=isinstance(body, dict),
        )

    def plan(self, reply: Reply, ctx: ChatContext) -> Plan:
        pieces = list(reply.chunks) if reply.chunks is not None else split_pieces(reply.text)
        text = "".join(reply.chunks) if reply.chunks is not None else reply.text
        prompt, completion = reply.usage or (count_words(ctx.body), len(pieces))
        return Plan(
            model=reply.model if reply.model is not None else self.reported_model(ctx),
            text=text,
            pieces=pieces,
            # With tool calls, the default "stop" becomes the provider's tool-call reason.
            finish_reason="tool_calls" if reply.tool_calls and reply.finish_reason == "stop" else reply.finish_reason,
            prompt_tokens=prompt,
            completion_tokens=completion,
            response_id=self.new_id(),
            created=int(time.time()),
            extra_headers=dict(reply.headers or {}),
            tool_calls=tuple(reply.tool_calls),
        )

    def reported_model(self, ctx: ChatContext) -> str:
        """The model name a reply reports when `Reply.model` is not set."""
        return ctx.model

    def knows_model(self, model: str) -> bool:
        return model in self.models

    def context_length(self, model: str, default: int) -> int:
        return self.context_lengths.get(model, default)

    @abstractmethod
    def new_id(self) -> str: ...

    @abstractmethod
    def check_auth(self, headers: Mapping[str, str]) -> WireResponse | None:
        """The provider's auth failure for these headers, or None when they pass."""

    @abstractmethod
    def validate(self, ctx: ChatContext, raw_body: bytes) -> WireResponse | None:
        """The provider's 400 for an unusable chat body, or None."""

    def unknown_model(self, ctx: ChatContext) -> WireResponse:
        return self.error(Error(404), ctx)

    # -- response side ------------------------------------------------------------

    @abstractmethod
    def base_headers(self, status: int) -> dict[str, str]:
        """Headers every response of this provider carries (request ids, rate limits)."""

    @abstractmethod
    def render_json(self, plan: Plan, ctx: ChatContext) -> bytes: ...

    @abstractmethod
    def stream_head(self, plan: Plan, ctx: ChatContext) -> list[bytes]: ...

    @abstractmethod
    def stream_piece(self, plan: Plan, ctx: ChatContext, index: int, piece: str) -> bytes: ...

    @abstractmethod
    def stream_tail(self, plan: Plan, ctx: ChatContext) -> list[bytes]: ...

    @abstractmethod
    def stream_error(self, message: str | None, ctx: ChatContext) -> bytes: ...

    @abstractmethod
    def error(self, err: Error, ctx: ChatContext | None) -> WireResponse: ...

    def midstream_error_response(self, message: str | None, ctx: ChatContext) -> WireResponse:
        """What `MidStreamError` becomes for a non-streaming request."""
        return self.error(Error(500, message=message), ctx)

    def routes(self) -> list[Route]:
        """Model listing and health endpoints."""
        return []

    def not_found(self, method: str, path: str) -> WireResponse:
        """The provider's answer for an unknown path."""
        return WireResponse(404, b"404: Not Found", {"Content-Type": "text/plain; charset=utf-8"})

    # -- helpers --------------------------------------------------------------------

    def json_response(self, status: int, payload: Any, *, indent: bool = False) -> WireResponse:
        headers = self.base_headers(status)
        headers["Content-Type"] = self.json_content_type
        return WireResponse(status, dumps(payload, indent=indent), headers)
