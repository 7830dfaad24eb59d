"""The innermost layer: one provider call, with its timeout, and the stream pump.

Not streaming, ``timeoutMs`` (plus ``firstTokenTimeoutMs`` where a model may have to
load: ``providers.timeouts``) bounds the whole call. Streaming, the first delta may
take ``firstTokenTimeoutMs`` and ``timeoutMs`` bounds the silence between deltas; every
text delta goes to the host's sink as it arrives (a restart chunk first, after a fallback mid-stream).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from sidecar.core import agents, tokens
from sidecar.core.local_fit import fit
from sidecar.core.pool import ProviderPool
from sidecar.core.routing.state import Run, StreamState, Try
from sidecar.core.routing.watchdog import Watchdog
from sidecar.errors import NetworkError
from sidecar.local.loaded import loading
from sidecar.providers.base import ChatMessage, Completion, Provider, ProviderRequest, ToolCall, ToolCallDelta
from sidecar.providers.timeouts import timeouts
from sidecar.wire.model import ModelRequest

__all__ = ["ProviderCall", "to_provider_request"]


def to_provider_request(request: ModelRequest, model: str, prompt_tokens: int | None = None) -> ProviderRequest:
    """The provider-neutral request for one model.

    ``context`` travels ahead of the prompt in the last user turn, so every provider
    sees it and it counts towards the context size. ``prompt_tokens`` is the planner's
    estimate (computed here when not given); it sizes the window a server is asked for.
    """
    messages = agents.provider_messages(request)
    prompt = request.prompt
    if request.context is not None:
        context = tokens.context_text(request.context)
        prompt = f"Context:\n{context}\n\n{prompt}" if prompt else context
    if prompt:
        messages.append(ChatMessage("user", prompt))
    if prompt_tokens is None:
        prompt_tokens = tokens.estimate(request)
    return ProviderRequest(
        model=model,
        messages=tuple(messages),
        system=request.system_prompt,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        top_p=request.top_p,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        stop=tuple(request.stop) if request.stop else None,
        context_window=tokens.context_window_for(prompt_tokens, request.max_tokens),
        **agents.provider_tools(request),
    )


class ProviderCall:
    """Calls the provider once for a :class:`Try` (the :class:`Call` at the bottom)."""

    def __init__(self, pool: ProviderPool, clock: Callable[[], float],
                 max_response_bytes: Callable[[], int] | None = None) -> None:
        self.pool = pool
        self._clock = clock
        #: The config's ``maxResponseBytes`` (read per attempt: it may change meanwhile).
        self._max_response_bytes = max_response_bytes

    async def __call__(self, run: Run, attempt: Try) -> Completion:
        provider, candidate = attempt.provider, attempt.candidate
        preq = to_provider_request(run.request, candidate.model, run.decision.prompt_tokens)
        if run.shape is not None:
            preq = run.shape(candidate, preq)
        if self._max_response_bytes is not None:
            preq = dataclasses.replace(preq, max_response_bytes=self._max_response_bytes())
        preq = await fit(provider, preq, run.decision.prompt_tokens)  # before anything is sent
        limits = timeouts(provider.settings)
        attempt.started_at = self._clock()
        async with self.pool.use(provider), loading(provider.name, preq.model):
            if run.stream is None:
                try:
                    async with asyncio.timeout(limits.whole):
                        return await provider.generate(preq)
                except TimeoutError as exc:
                    raise NetworkError(
                        f"{provider.name}: no answer within {limits.whole * 1000:.0f} ms",
                        provider=provider.name, model_id=candidate.model,
                    ) from exc
            return await self._pump(provider, preq, run.stream, attempt, limits.silence, limits.first)

    async def _pump(self, provider: Provider, preq: ProviderRequest, state: StreamState, attempt: Try,
                    timeout_s: float, first_s: float | None = None) -> Completion:
        """Relay the provider's deltas to the host; the whole completion when it ends.
        The first delta may take ``first_s`` (a model load), each next one ``timeout_s``."""
        text: list[str] = []
        calls = _CallBuilder()
        model, finish, usage = preq.model, None, None
        deltas = provider.stream(preq)
        silence = Watchdog()  # asyncio.timeout per chunk would set and cancel a timer each time
        try:
            while True:
                wait_s = timeout_s if first_s is None else first_s
                try:
                    async with silence.step(wait_s):
                        delta = await anext(deltas)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    before = " before the first chunk (firstTokenTimeoutMs)" if first_s is not None else ""
                    raise NetworkError(
                        f"{provider.name}: stream silent for {wait_s * 1000:.0f} ms{before}",
                        provider=provider.name, model_id=preq.model,
                    ) from exc
                first_s = None
                model = delta.model or model
                finish = delta.finish_reason or finish
                usage = delta.usage or usage
                if delta.content:
                    text.append(delta.content)
                if delta.content or delta.tool_calls:
                    calls.add(delta.tool_calls)
                    # Everything generated so far, text and call arguments: a cut stream is billed for it.
                    attempt.produced.append(delta.content + "".join(d.arguments_delta for d in delta.tool_calls))
                    await self._relay(state, delta.content, delta.tool_calls, model)
        finally:
            silence.close()
            await deltas.aclose()
        return Completion(content="".join(text), model=model, finish_reason=finish, usage=usage,
                          tool_calls=calls.calls())

    async def _relay(self, state: StreamState, content: str, tool_calls: tuple[ToolCallDelta, ...],
                     model: str | None) -> None:
        if state.needs_restart:
            state.needs_restart = False
            await state.sink("", model, restart=True)
        if state.first_chunk_at is None:
            state.first_chunk_at = self._clock()
        state.sent_any = True
        if tool_calls:
            await state.sink(content, model, tool_calls=tool_calls)
        else:
            await state.sink(content, model)


class _CallBuilder:
    """Tool calls put together from their streamed pieces, by index."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}
        self._heads: dict[int, tuple[str, str]] = {}

    def add(self, deltas: tuple[ToolCallDelta, ...]) -> None:
        for delta in deltas:
            head = self._heads.get(delta.index, ("", ""))
            self._heads[delta.index] = (delta.id or head[0], delta.name or head[1])
            self._calls.setdefault(delta.index, []).append(delta.arguments_delta)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(self._heads[i][0], self._heads[i][1], "".join(self._calls[i])) for i in sorted(self._calls))
