"""Scripted behaviours for the fake provider servers.

A behaviour says *what* the next chat request gets; the per-provider renderers
(`render_openai`, `render_anthropic`, `render_ollama`, `render_llamacpp`) decide
*how* it looks on the wire, and `server.FakeServer` executes it. Behaviours are
frozen dataclasses so a script can be built once and enqueued many times.

Finish reasons use the portable vocabulary ``stop | length | tool_calls |
content_filter``; each renderer maps them to the provider's own words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_TEXT",
    "Behaviour",
    "CutStream",
    "Cycle",
    "Drip",
    "Error",
    "FakeToolCall",
    "Flood",
    "Hang",
    "Malformed",
    "MidStreamError",
    "Raw",
    "Reply",
]

DEFAULT_TEXT = "Hello from the fake."


@dataclass(frozen=True)
class FakeToolCall:
    """A tool call in a scripted answer.

    ``arguments`` is sent as given: a dict is the arguments object (JSON-encoded where the
    provider sends a string), a str is sent as the raw argument text (OpenAI-style
    providers), which lets a script send invalid or truncated JSON. ``id`` defaults to a
    provider-style id (none for Ollama unless given). ``pieces``: the argument text split
    into these stream deltas (default: a few pieces).
    """

    name: str
    arguments: Mapping[str, object] | str = field(default_factory=dict)
    id: str | None = None
    pieces: Sequence[str] | None = None


@dataclass(frozen=True)
class Reply:
    """A normal answer, streamed or not depending on the request's ``stream`` field.

    Attributes:
        text: the full answer text (ignored for streaming when ``chunks`` is given).
        chunks: the content pieces of a stream; default splits ``text`` into words
            with their leading whitespace (``"Hello", " from", ...``).
        model: model name reported back; default echoes the request's model
            (llama.cpp reports its loaded model instead, as the real server does).
        finish_reason: ``stop | length | tool_calls | content_filter``, mapped per provider;
            any other string is passed through unchanged.
        usage: ``(prompt_tokens, completion_tokens)``; default is (whitespace words of
            all messages and the system prompt, min 1; number of chunks).
        delay_s: delay before the status line and headers are sent.
        chunk_delay_s: delay before each streamed content chunk.
        headers: extra response headers; they override the provider defaults.
        tool_calls: tool calls the answer makes (after its text, if any); with them the
            finish reason defaults to the provider's tool-call reason.
    """

    text: str = DEFAULT_TEXT
    chunks: Sequence[str] | None = None
    model: str | None = None
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    headers: Mapping[str, str] | None = None
    tool_calls: Sequence[FakeToolCall] = ()


@dataclass(frozen=True)
class Error:
    """An HTTP error in the provider's exact error envelope.

    ``message``, ``error_type`` and ``code`` default per status from the wire reference
    tables. ``code`` is a string for OpenAI; for llama.cpp it is the numeric status
    unless given. ``body`` replaces the whole envelope (sent as ``application/json``).
    ``param`` is only used by the OpenAI envelope.
    """

    status: int
    message: str | None = None
    error_type: str | None = None
    code: str | int | None = None
    headers: Mapping[str, str] | None = None
    body: bytes | None = None
    param: str | None = None


@dataclass(frozen=True)
class Hang:
    """Read the request body, then never answer.

    The handler ends when the client disconnects (``disconnected`` is set) or the
    server stops; it never blocks shutdown.
    """


@dataclass(frozen=True)
class CutStream:
    """A 200 stream that sends ``after_chunks`` content chunks, then aborts the TCP connection.

    The chunked body is never terminated, so the client sees a broken stream. For a
    non-streaming request, the headers promise the full JSON length and only half of
    the body is sent before the abort.
    """

    after_chunks: int = 2
    text: str = DEFAULT_TEXT


@dataclass(frozen=True)
class Drip:
    """A 200 response whose body goes out ``chunk_size`` bytes at a time, ``interval_s`` apart.

    The body is exactly what ``Reply(text=text)`` would send (a stream or a JSON body,
    following the request). Headers go out at once; a sleep of ``interval_s`` precedes
    every body write, including the first.
    """

    interval_s: float = 1.0
    text: str = "slow"
    chunk_size: int = 1


@dataclass(frozen=True)
class MidStreamError:
    """A 200 stream that sends ``after_chunks`` chunks, then the provider's in-stream error.

    OpenAI/llama.cpp: a ``data: {"error": {...}}`` event and the end of the stream (no
    ``[DONE]``); Anthropic: ``event: error`` with an ``overloaded_error``; Ollama: an
    ``{"error": "..."}`` NDJSON line. For a non-streaming request this becomes the
    provider's plain HTTP error (500; Anthropic 529 ``overloaded_error``).
    """

    after_chunks: int = 1
    message: str | None = None
    text: str = DEFAULT_TEXT


@dataclass(frozen=True)
class Raw:
    """Arbitrary bytes with any status and content type, whatever the request asked for."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] | None = None
    content_type: str = "text/html"


@dataclass(frozen=True)
class Malformed:
    """A 200 stream with ``after_chunks`` good chunks, a garbage line, then the normal rest.

    The garbage is ``data: {not json`` (SSE kinds) or ``{not json`` (Ollama NDJSON).
    For a non-streaming request the body is ``{not json`` with a JSON content type.
    """

    after_chunks: int = 1
    text: str = DEFAULT_TEXT


@dataclass(frozen=True)
class Flood:
    """A 200 answer whose text never ends: one content string that keeps growing.

    The response opens like a normal answer (the stream head, then a content chunk; or
    the start of the JSON body) and then writes ``chunk_size`` bytes of ``fill`` every
    ``interval_s`` inside that one JSON string, so the SSE line, NDJSON line or body never
    ends. With ``total_bytes`` the string is closed after that many fill bytes and the
    answer ends normally (a valid, huge answer); otherwise it ends only when the client
    disconnects or the server stops.
    """

    chunk_size: int = 64 * 1024
    interval_s: float = 0.0
    total_bytes: int | None = None
    fill: bytes = b"x"


@dataclass(frozen=True, init=False)
class Cycle:
    """A flapping provider: each use plays the next of ``behaviours``, round and round.

    ``set_default(Cycle(Error(503), Reply()))`` alternates failure and success for every
    request that finds the script empty; the position is kept per server and per
    ``Cycle`` object (so the same object enqueued twice shares one rotation). Nesting a
    ``Cycle`` inside another is not allowed.
    """

    behaviours: tuple[Reply | Error | Hang | CutStream | Drip | MidStreamError | Raw | Malformed | Flood, ...]

    def __init__(self, *behaviours: Reply | Error | Hang | CutStream | Drip | MidStreamError | Raw | Malformed | Flood) -> None:
        if not behaviours:
            raise ValueError("Cycle needs at least one behaviour")
        if any(isinstance(b, Cycle) for b in behaviours):
            raise TypeError("a Cycle cannot contain another Cycle")
        object.__setattr__(self, "behaviours", tuple(behaviours))


Behaviour = Reply | Error | Hang | CutStream | Drip | MidStreamError | Raw | Malformed | Flood | Cycle
