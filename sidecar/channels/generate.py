"""``model:generate`` and ``model:stream``: one decision, one routed call, one response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

from sidecar.core.agents import prepare
from sidecar.core.router import Outcome, Router, StreamSink
from sidecar.errors import SidecarError
from sidecar.providers.base import ToolCallDelta
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.base import dump
from sidecar.wire.config import FormatTemplate
from sidecar.wire.methods import GenerateParams
from sidecar.wire.model import Attempt, ModelResponse, ResponseMetadata, ToolCall, UsageInfo

__all__ = ["build_response", "channels", "wire_response"]

if TYPE_CHECKING:
    from sidecar.structured.enforcer import FormatSpec, ToolRules

log = structlog.get_logger("sidecar.requests")

STREAM_CHUNK = "model:stream-chunk"
#: The most text one ``model:stream-chunk`` carries (a longer delta is split).
MAX_CHUNK_CHARS = 64 * 1024
#: JSON previews (``chunk.partial``): on every chunk up to this much text...
PREVIEW_ALL_CHARS = 4 * 1024
#: ...then as the text grows by a quarter, and never past this.
PREVIEW_MAX_CHARS = 1024 * 1024


def wire_response(response: ModelResponse) -> dict[str, Any]:
    """The response as sent: absent optionals are left out, but ``metadata.taskType``
    is part of every response (``null`` until a task type is known)."""
    payload = dump(response)
    payload["metadata"].setdefault("taskType", None)
    return payload


def build_response(outcome: Outcome, parsed: Any = None) -> ModelResponse:
    """The wire response of a successful routed call."""
    completion = outcome.completion
    usage = completion.usage
    return ModelResponse(
        content=completion.content,
        model=completion.model,
        usage=UsageInfo(
            promptTokens=usage.prompt_tokens,
            completionTokens=usage.completion_tokens,
            totalTokens=usage.total_tokens,
        ) if usage else None,
        finishReason=completion.finish_reason,
        parsed=parsed,
        metadata=ResponseMetadata(
            provider=outcome.candidate.provider,
            latencyMs=round(outcome.latency_ms, 2),
            timeToFirstTokenMs=None if outcome.ttft_ms is None else round(outcome.ttft_ms, 2),
            costUsd=round(outcome.cost_usd, 8),
            attempts=[Attempt.model_validate(a.wire()) for a in outcome.attempts],
            taskType=outcome.decision.task_type,
            selectionReasons=list(outcome.decision.reasons),
        ),
    )


@contextmanager
def _request_log(method: str, ctx: RequestContext, started: float) -> Iterator[list[Outcome]]:
    """Log one event per request: provider, model, latency, attempts and outcome."""
    done: list[Outcome] = []
    fields: dict[str, Any] = {"method": method, "request_id": ctx.request_id}
    try:
        yield done
    except SidecarError as exc:
        log.info("request", **fields, outcome=exc.type, provider=exc.provider, model=exc.model_id,
                 attempts=len(exc.attempts or []), latency_ms=_ms_since(started), error=exc.message)
        raise
    except asyncio.CancelledError:
        log.info("request", **fields, outcome="cancelled", latency_ms=_ms_since(started))
        raise
    if done:
        outcome = done[0]
        log.info("request", **fields, outcome="ok", provider=outcome.candidate.provider,
                 model=outcome.completion.model, latency_ms=round(outcome.latency_ms, 2),
                 attempts=len(outcome.attempts))


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def channels(router: Router, templates: Callable[[], Mapping[str, FormatTemplate]]) -> list[Channel]:
    """``templates()``: the config's ``formatTemplates``, read per request."""

    async def run(params: GenerateParams, ctx: RequestContext,
                  sink: StreamSink | None) -> tuple[dict[str, Any], Outcome]:
        """One routed call, or the enforcer's attempts, all within one ``deadlineMs``."""
        with router.one_deadline():
            return await _routed(router, templates, params, ctx, sink)

    async def generate(params: GenerateParams, ctx: RequestContext) -> dict[str, Any]:
        with _request_log("model:generate", ctx, time.monotonic()) as done:
            payload, outcome = await run(params, ctx, None)
            done.append(outcome)
        return payload

    async def stream(params: GenerateParams, ctx: RequestContext) -> dict[str, Any]:
        started = time.monotonic()
        json_format = params.response_format is not None and params.response_format.type != "xml"
        relay = _Relay(ctx, json_format)
        ctx.error_data = relay.error_data
        with _request_log("model:stream", ctx, started) as done:
            payload, outcome = await run(params, ctx, relay.sink)
            done.append(outcome)
        await relay.done(payload["model"])
        return payload

    return [
        Channel("model:generate", GenerateParams, generate),
        Channel("model:stream", GenerateParams, stream),
    ]


async def _routed(router: Router, templates: Callable[[], Mapping[str, FormatTemplate]], params: GenerateParams,
                  ctx: RequestContext, sink: StreamSink | None) -> tuple[dict[str, Any], Outcome]:
    """One routed call, or the enforcer's attempts when a responseFormat or tools are given
    (``toolChoice`` "none" included: a call made anyway is refused and retried, never
    dropped from a success)."""
    request = await prepare(params.request)  # tools checked, images read: before anything is sent
    spec: FormatSpec | None = None
    tools: ToolRules | None = None
    if params.response_format is not None or request.tools:
        # Imported on first use (~0.3 s, ~15 MB: jsonschema, xmlschema, json_repair):
        # a sidecar that never sees a responseFormat or tools never pays for them.
        from sidecar.structured.enforcer import Enforcer, ToolRules, resolve

        if params.response_format is not None:
            spec = resolve(params.response_format, dict(templates()))
        tools = ToolRules.of(request)  # rules for every request with tools, "none" included
    decision = router.select_provider(request, params.selection)
    tag = str(ctx.request_id)
    if spec is None and tools is None:
        if sink is None:
            outcome = await router.generate(request, decision, tag=tag)
        else:
            outcome = await router.stream(request, decision, sink, tag=tag)
        return wire_response(build_response(outcome)), outcome
    enforced = await Enforcer(router).run(request, decision, spec, tag=tag, sink=sink, tools=tools)
    response = build_response(enforced.outcome, enforced.parsed)
    if spec is not None:
        response.metadata.repaired = enforced.repaired
        response.metadata.structured_mechanism = enforced.mechanism
    if enforced.tool_calls is not None:
        response.tool_calls = [ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in enforced.tool_calls]
        response.finish_reason = "tool_calls"
        response.parsed = None
    payload = wire_response(response)
    if spec is not None and spec.kind == "json" and enforced.tool_calls is None:
        payload["parsed"] = enforced.parsed  # present even when the JSON value is null
    return payload, enforced.outcome


class _Relay:
    """A stream's chunks to the host: ``seq`` unbroken, large deltas split, JSON partials
    previewed, and what was sent kept for ``data.partialContent``."""

    def __init__(self, ctx: RequestContext, json_format: bool) -> None:
        self.ctx = ctx
        self.json_format = json_format
        self.seq = 0
        self.sent: list[str] = []
        #: Characters of the text so far, and at the last JSON preview.
        self.size = 0
        self.previewed = 0

    def _preview_due(self, adding: int) -> bool:
        """Whether this chunk carries a JSON preview. Each preview parses the whole text so
        far: every chunk while the answer is short, then each time it grew by a quarter,
        and none past :data:`PREVIEW_MAX_CHARS`, so a long answer costs O(n log n), not
        O(n^2), and no chunk line grows with the answer."""
        size = self.size + adding
        self.size = size
        if size <= PREVIEW_ALL_CHARS or (size <= PREVIEW_MAX_CHARS and size - self.previewed >= self.previewed // 4):
            self.previewed = size
            return True
        return False

    def error_data(self) -> dict[str, Any]:
        return {"partialContent": "".join(self.sent)}

    async def sink(self, content: str, model: str | None, *, restart: bool = False,
                   tool_calls: tuple[ToolCallDelta, ...] = ()) -> None:
        # A provider's delta can be megabytes long: it goes out in pieces, so no
        # stdout line outgrows what a host reads comfortably.
        if restart:
            await self._send(content, model, restart=True)
            return
        first = self.seq == 0
        if tool_calls:
            await self._send_calls(tool_calls, model)
        if content:
            for start in range(0, len(content), MAX_CHUNK_CHARS):
                await self._send(content[start:start + MAX_CHUNK_CHARS], model)
        if first:
            # Let the writer put the first chunk on the pipe before the relay reads on:
            # the next chunks are often already buffered, and relaying them first held the
            # first one back by their whole processing (~50 µs measured per stream).
            await asyncio.sleep(0)

    async def done(self, model: str) -> None:
        await self.ctx.notify(STREAM_CHUNK, {"requestId": self.ctx.request_id, "seq": self.seq,
                                             "chunk": {"content": "", "done": True, "model": model}})

    async def _send_calls(self, deltas: tuple[ToolCallDelta, ...], model: str | None) -> None:
        """Tool-call pieces, as they arrive (a long argument text split like content)."""
        for delta in deltas:
            text = delta.arguments_delta
            for start in range(0, max(len(text), 1), MAX_CHUNK_CHARS):
                wire: dict[str, Any] = {"index": delta.index, "argumentsDelta": text[start:start + MAX_CHUNK_CHARS]}
                if start == 0 and delta.id:
                    wire["id"] = delta.id
                if start == 0 and delta.name:
                    wire["name"] = delta.name
                chunk: dict[str, Any] = {"content": "", "done": False, "toolCalls": [wire]}
                if model:
                    chunk["model"] = model
                await self.ctx.notify(STREAM_CHUNK, {"requestId": self.ctx.request_id, "seq": self.seq, "chunk": chunk})
                self.seq += 1

    async def _send(self, content: str, model: str | None, *, restart: bool = False) -> None:
        chunk: dict[str, Any] = {"content": content, "done": False}
        if model:
            chunk["model"] = model
        if restart:
            chunk["restart"] = True
        elif self.json_format and self._preview_due(len(content)):
            from sidecar.structured.partial import parse_partial

            partial = parse_partial("".join(self.sent) + content)
            if partial is not None:
                chunk["partial"] = partial
        # partialContent is exactly what was sent: the text counts once its chunk is
        # queued for stdout (a cancel while a slow host keeps the queue full stops the
        # chunk, and must not leave it in partialContent). Nothing awaits after the
        # notify, so a cancel cannot fall between the two.
        await self.ctx.notify(STREAM_CHUNK, {"requestId": self.ctx.request_id, "seq": self.seq, "chunk": chunk})
        if restart:
            self.sent = []
            self.size = self.previewed = 0
        else:
            self.sent.append(content)
        self.seq += 1
