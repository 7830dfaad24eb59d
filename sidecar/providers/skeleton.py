"""The skeleton every HTTP provider shares; a provider keeps only its wire mapping.

A call passes through the same steps whatever the wire protocol: keys scrubbed from any
error (:func:`~sidecar.providers.failures.redact_errors`), transport failures mapped to typed
errors (:func:`~sidecar.providers.failures.map_http_errors`), rate-limit headers observed, an
error status raised with the provider's own message, the body read within
``maxResponseBytes``, and for a stream: frames read one by one, the answer guarded
(size, output-token ceiling, secrets split across chunks), the terminator required, and
the rest of the body read so the connection goes back to the pool.

A subclass says only what differs: its path, its headers and body, how one answer or
one stream frame reads, and how a stream ends.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import orjson

from sidecar.providers.answer import Answer
from sidecar.providers.base import Completion, Provider, ProviderRequest, StreamDelta, ToolCallDelta
from sidecar.providers.failures import map_http_errors, redact_errors
from sidecar.providers.framing import aiter_ndjson, aiter_sse, finish_body
from sidecar.providers.guard import AnswerGuard, oversized
from sidecar.providers.headers import parse_rate_limit
from sidecar.providers.http import fetch_json, open_response, raise_for_error
from sidecar.secrets import StreamScrubber

__all__ = ["HttpProvider", "StreamState"]


#: The names of OpenAI's and Anthropic's rate-limit headers start with one of these.
_RATE_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")

class StreamState(Protocol):
    """What the skeleton reads of a provider's per-stream state."""

    model: str
    #: The protocol's terminator arrived (``[DONE]``, ``message_stop``, ``done: true``).
    done: bool
    # A provider that streams tool calls also keeps ``pending_calls: list[ToolCallDelta]``:
    # ``read_frame`` appends the pieces of calls a frame carried, and the skeleton yields
    # them as one ``StreamDelta(tool_calls=...)`` after the frame's text, then clears it.


S = TypeVar("S", bound=StreamState)


class _CallScrubber:
    """The provider's secrets replaced in tool-call argument text, per call (the pieces of
    several calls may interleave), also when a secret is split across pieces."""

    def __init__(self, secrets: tuple[str | None, ...]) -> None:
        self._secrets = secrets
        self._calls: dict[int, StreamScrubber] = {}

    def whole(self, text: str) -> str:
        scrubber = StreamScrubber(self._secrets)
        return scrubber.feed(text) + scrubber.flush()

    def feed(self, calls: tuple[ToolCallDelta, ...]) -> tuple[ToolCallDelta, ...]:
        out = []
        for call in calls:
            scrubber = self._calls.setdefault(call.index, StreamScrubber(self._secrets))
            call = dataclasses.replace(call, arguments_delta=scrubber.feed(call.arguments_delta))
            if call.arguments_delta or call.id is not None or call.name is not None:
                out.append(call)
        return tuple(out)

    def flush(self) -> tuple[ToolCallDelta, ...]:
        """What each call still holds back, once the stream ended."""
        return tuple(ToolCallDelta(index, tail) for index, scrubber in self._calls.items() if (tail := scrubber.flush()))


class HttpProvider(Provider, Generic[S]):
    """A provider over HTTP: the shared steps of :meth:`generate` and :meth:`stream`."""

    #: Where chat requests go, relative to the base URL.
    chat_path: ClassVar[str]
    #: How a stream is framed: server-sent events or one JSON object per line.
    framing: ClassVar[Literal["sse", "ndjson"]]

    # -- what each provider says ----------------------------------------------------

    @abc.abstractmethod
    def headers(self, model: str | None) -> dict[str, str]:
        """The request headers (the key, the configured extra headers)."""

    @abc.abstractmethod
    def chat_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        """The wire body of one chat request."""

    @abc.abstractmethod
    def completion(self, data: Any, request: ProviderRequest) -> Completion:
        """One non-streamed answer, from its parsed body (raises on an error envelope)."""

    @abc.abstractmethod
    def stream_state(self, request: ProviderRequest) -> S:
        """A fresh state for one stream."""

    @abc.abstractmethod
    def read_frame(self, frame: Any, state: S, model: str) -> str | None:
        """Read one SSE event or NDJSON line into ``state``; its text, if any."""

    @abc.abstractmethod
    def stream_end(self, state: S, guard: AnswerGuard, model: str) -> StreamDelta:
        """The last delta (held-back text, finish reason, usage), or the error of a stream
        that ended without its terminator."""

    def output_limit(self, body: dict[str, Any]) -> int | None:
        """The output-token limit the body really carries, when it differs from the
        request's (a default the API requires)."""
        return None

    # -- the shared steps -------------------------------------------------------------

    def observe(self, response: Answer) -> None:
        # One pass over the names first: most answers (local servers) carry no rate limits.
        if any(name.startswith(_RATE_LIMIT_PREFIXES) for name in response.headers):
            self.last_rate_limit = parse_rate_limit(response.headers)
        else:
            self.last_rate_limit = None

    async def fetch(self, method: str, path: str, model: str | None, max_bytes: int, *, content: bytes | None = None,
                    params: Mapping[str, Any] | None = None) -> Any:
        """One non-streamed request: its parsed JSON body, or the typed error."""
        return await fetch_json(
            self.client, method, path, provider=self.name, model=model, max_bytes=max_bytes,
            local_url=self.local_url, seen=self.observe, headers=self.headers(model), content=content, params=params,
        )

    async def generate(self, request: ProviderRequest) -> Completion:
        with redact_errors(*self.secrets):
            body = self.chat_body(request, stream=False)
            data = await self.fetch("POST", self.chat_path, request.model, request.max_response_bytes,
                                    content=orjson.dumps(body))
            answer = self.guarded(self.completion(data, request), self.answer_guard(request, self.output_limit(body)))
            if not answer.tool_calls:
                return answer
            scrub = _CallScrubber(self.secrets)
            calls = tuple(dataclasses.replace(call, arguments=scrub.whole(call.arguments)) for call in answer.tool_calls)
            return dataclasses.replace(answer, tool_calls=calls)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamDelta, None]:
        with redact_errors(*self.secrets):
            headers = self.headers(request.model)
            body = self.chat_body(request, stream=True)
            state = self.stream_state(request)
            guard = self.answer_guard(request, self.output_limit(body))
            scrub = _CallScrubber(self.secrets)
            with map_http_errors(self.name, request.model, local_url=self.local_url):
                # Opened inside the generator: aclose() or cancelling the consumer exits
                # this block, which closes the upstream connection.
                async with open_response(
                    self.client, "POST", self.chat_path, content=orjson.dumps(body), headers=headers
                ) as response:
                    self.observe(response)
                    await raise_for_error(response, provider=self.name, model=request.model)
                    frames = self._frames(response, request.max_response_bytes)
                    async for frame in frames:
                        text = self.read_frame(frame, state, request.model)
                        piece = guard.feed(text) if text and not state.done else ""
                        if piece:
                            yield StreamDelta(content=piece, model=state.model)
                        calls = scrub.feed(self._pending_calls(state, guard, request))
                        if calls:
                            yield StreamDelta(tool_calls=calls, model=state.model)
                        if state.done or guard.cut:
                            break  # past the output limit: leaving the block closes upstream
                    if state.done:
                        await finish_body(frames)  # the connection goes back to the pool
            tails = scrub.flush()
            if tails:
                yield StreamDelta(tool_calls=tails, model=state.model)
            if guard.cut:
                # The server ignored the output limit; its usage never came: the router
                # bills the text that arrived.
                yield StreamDelta(content=guard.flush(), model=state.model, finish_reason="length")
                return
            yield self.stream_end(state, guard, request.model)

    def _pending_calls(self, state: S, guard: AnswerGuard, request: ProviderRequest) -> tuple[ToolCallDelta, ...]:
        """The tool-call pieces ``read_frame`` left in ``state.pending_calls`` (a provider
        that streams tool calls keeps that list), taken out of it. Their argument text
        counts towards the answer's size bound like its text."""
        pending: list[ToolCallDelta] | None = getattr(state, "pending_calls", None)
        if not pending:
            return ()
        calls = tuple(pending)
        pending.clear()
        guard.received_bytes += sum(len(call.arguments_delta.encode("utf-8")) for call in calls)
        if guard.received_bytes > request.max_response_bytes:
            raise oversized(self.name, request.model, "answer text", request.max_response_bytes)
        return calls

    def _frames(self, response: Answer, max_bytes: int) -> AsyncIterator[Any]:
        if self.framing == "sse":
            return aiter_sse(response, max_bytes)
        # Split on the byte \n only: U+2028/U+2029 stay inside a line.
        return aiter_ndjson(response, max_bytes)
