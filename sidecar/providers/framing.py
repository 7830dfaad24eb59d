"""Reading provider bodies: stream framing and JSON payloads, all bounded.

Stream bodies are split as bytes, on ``\\n`` only (NDJSON) or on ``\\r\\n``, ``\\r``,
``\\n`` (SSE): never by ``str.splitlines``, which would also split on U+2028/U+2029 that
JSON leaves raw. Every line, event and body is bounded (see
:mod:`sidecar.providers.guard`), so no server can make the sidecar buffer without end.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx_sse
import orjson

from sidecar.errors import (
    ModelError,
    SidecarError,
)
from sidecar.providers.answer import Answer
from sidecar.providers.failures import ResponseTooLarge

__all__ = [
    "FINISH_BODY_TIMEOUT_S",
    "MAX_TOKEN_COUNT",
    "SSEEvent",
    "aiter_ndjson",
    "aiter_sse",
    "as_count",
    "finish_body",
    "json_text",
    "loads_body",
    "text_or",
]


#: Token counts above this are nonsense from a broken server; clamping keeps sums exact
#: for JavaScript hosts and inside JSON's safe integer range.
MAX_TOKEN_COUNT = 2**40


def as_count(value: object) -> int:
    """A token count from a provider body: an int clamped to 0..2^40; anything else is 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, 0), MAX_TOKEN_COUNT)
    return 0


def text_or(value: object, default: str) -> str:
    """``value`` when it is a non-empty string, else ``default``."""
    return value if isinstance(value, str) and value else default


#: A ``\\uD800``-``\\uDFFF`` escape: half of a surrogate pair, which orjson refuses alone.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def loads_body(body: bytes | str, *, provider: str, model: str | None) -> Any:
    """Parse a JSON body or stream payload; garbage becomes a retryable :class:`ModelError`.

    A payload with a lone surrogate escape (half an emoji, from a server that cut its text
    by UTF-16 units) is valid JSON that orjson refuses: the standard library parses it,
    and :class:`~sidecar.providers.guard.SurrogateJoiner` mends the text afterwards.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        if _SURROGATE_ESCAPE.search(raw):
            try:
                return json.loads(raw, parse_constant=_no_constant)
            except ValueError:
                pass
        snippet = raw[:80].decode("utf-8", "replace")
        raise ModelError(
            f"{provider}: malformed JSON from the provider ({snippet!r})",
            provider=provider,
            model_id=model,
        ) from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_SSE_EOL = re.compile(rb"\r\n|\r|\n")


_LF = re.compile(rb"\n")


async def _aiter_lines(response: Answer, max_bytes: int, *, sse: bool) -> AsyncIterator[bytes]:
    """The lines of a body as bytes, none longer than ``max_bytes`` (:class:`ResponseTooLarge`).

    Split on bytes, so a multi-byte UTF-8 character cut between two reads is whole again
    in its line; SSE lines end at ``\r\n``, ``\r`` or ``\n``, NDJSON lines at ``\n``
    only. A long line grows in one ``bytearray`` (amortised, one byte per byte: a server
    trickling one byte per read cannot multiply the memory a line takes).
    """
    eol = _SSE_EOL if sse else _LF
    pending = bytearray()
    skip_lf = False  # a \r ended the last read; a \n opening this one belongs to it
    async for chunk in response.aiter_bytes():
        if not chunk:
            continue
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        skip_lf = sse and chunk.endswith(b"\r")
        pos = 0
        for match in eol.finditer(chunk):
            if len(pending) + match.start() - pos > max_bytes:
                raise ResponseTooLarge("stream line", max_bytes)
            if pending:
                pending += chunk[pos:match.start()]
                yield bytes(pending)
                pending.clear()
            else:
                yield chunk[pos:match.start()]
            pos = match.end()
        if pos < len(chunk):
            if len(pending) + len(chunk) - pos > max_bytes:
                raise ResponseTooLarge("stream line", max_bytes)
            pending += chunk[pos:]
    if pending:
        yield bytes(pending)


async def aiter_ndjson(response: Answer, max_bytes: int) -> AsyncIterator[bytes]:
    """Yield the non-empty lines of an NDJSON body, split on the byte ``\n`` only."""
    async for line in _aiter_lines(response, max_bytes, sse=False):
        line = line.rstrip(b"\r")
        if line.strip():
            yield line


#: How long the end of a body may take to arrive after the stream's terminator.
FINISH_BODY_TIMEOUT_S = 0.1


async def finish_body(rest: AsyncIterator[object], *, limit: int = 64) -> None:
    """Read what follows a stream's terminator (``[DONE]``, ``message_stop``, ``done``).

    Breaking out at the terminator leaves the end of the chunked body unread, and httpx
    then closes the connection instead of pooling it: every stream would pay a new TCP
    (and TLS) handshake. A server that does not end the body promptly, or keeps sending,
    just loses the connection; nothing here fails the answer already received.
    """
    try:
        async with asyncio.timeout(FINISH_BODY_TIMEOUT_S):
            count = 0
            async for _ in rest:
                count += 1
                if count >= limit:
                    return
    except (TimeoutError, httpx.HTTPError, ResponseTooLarge, SidecarError):
        # Whatever follows the terminator (an oversized or garbled line included) costs
        # the connection, never the answer.
        return


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched Server-Sent Event: its type (``message`` when unnamed) and data."""

    event: str
    data: bytes


async def aiter_sse(response: Answer, max_bytes: int) -> AsyncIterator[SSEEvent]:
    """Yield the events of an SSE body (WHATWG HTML, "Parsing an event stream").

    An event's data may not pass ``max_bytes`` (:class:`ResponseTooLarge`); an event left
    without its closing blank line at the end of the body is dropped, as the spec says.
    """
    content_type = response.headers.get("content-type", "").partition(";")[0]
    if "text/event-stream" not in content_type:
        raise httpx_sse.SSEError(f"got Content-Type {content_type[:60]!r}")
    name = b""
    data: list[bytes] = []
    size = 0
    async for line in _aiter_lines(response, max_bytes, sse=True):
        if not line:
            if data or name:
                yield SSEEvent(name.decode("utf-8", "replace") or "message", b"\n".join(data))
            name, data, size = b"", [], 0
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            size += len(value) + 1
            if size > max_bytes:
                raise ResponseTooLarge("stream event", max_bytes)
            data.append(value)
        elif field == b"event":
            name = value


def json_text(value: object, *, provider: str, model: str) -> str:
    """``value`` (parsed from an answer) as compact JSON text again, e.g. a tool call's
    arguments object. orjson cannot write back two things a parsed answer may hold: a
    lone surrogate (half an emoji, which :func:`loads_body` lets through) and nesting past
    254 levels; the standard library writes both, a lone surrogate as "?", up to its
    recursion limit (about 1,000 levels; orjson reads up to 1,024)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        pass
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise ModelError(f"{provider}: tool call arguments nested too deeply", provider=provider,
                         model_id=model) from None
    return text.encode("utf-8", "replace").decode("utf-8")
