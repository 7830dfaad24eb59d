"""The router: a request and a selection in, provider attempts with retries and fallback.

Rules, in the order they apply:

* ``select_provider`` makes the :class:`Decision`: the first candidate and the ordered
  fallback candidates, each with the reason it is there. ``localOnly`` filters every
  candidate to local providers, so a non-local provider is never even contacted.
* Each candidate gets ``1 + maxRetries`` attempts (its ``rateLimit`` config, default 2
  retries) while its errors allow a retry on the same provider. Waits grow linearly or
  exponentially with jitter and are never shorter than the provider's ``Retry-After``;
  a provider that asks for a longer pause than :data:`MAX_RETRY_WAIT_MS` is left for the
  next candidate instead of being waited for.
* ``AuthenticationError`` is never retried on the same provider; a ``ValidationError``
  ends the request unless the context was too long (then a larger window may help).
* Streams fall back only before the first chunk went out, unless
  ``selection.fallbackMidStream`` is set: then the host is told to restart its display.
* Every attempt has a timeout (the provider's ``timeoutMs``: the whole call when not
  streaming, time to first chunk and silence between chunks when streaming), and the
  request as a whole has the config's ``deadlineMs``.

The router knows nothing of HTTP: it sees providers and typed errors only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog

from sidecar.core.pool import ProviderPool
from sidecar.core.registry import Catalog
from sidecar.core.stats import StatsBook
from sidecar.errors import (
    AllProvidersFailedError,
    InvalidParams,
    NetworkError,
    ProviderError,
)
from sidecar.providers.base import ChatMessage, Completion, Provider, ProviderRequest, ProviderSettings
from sidecar.providers.http import DEFAULT_TIMEOUT_MS
from sidecar.wire.config import ModelConfig
from sidecar.wire.model import ModelRequest, ModelSelection

__all__ = [
    "BACKOFF_BASE_MS",
    "BACKOFF_CAP_MS",
    "MAX_RETRY_WAIT_MS",
    "Candidate",
    "Decision",
    "Outcome",
    "Router",
    "StreamSink",
    "backoff_ms",
    "effective_selection",
    "to_provider_request",
]

log = structlog.get_logger("sidecar.router")

BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 8_000
#: A provider asking to be left alone longer than this is skipped for the next candidate.
MAX_RETRY_WAIT_MS = 30_000
DEFAULT_MAX_RETRIES = 2
_KEYED_KINDS = {"openai", "anthropic"}


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    kind: str
    model: str
    local: bool


@dataclass(frozen=True, slots=True)
class Decision:
    candidates: tuple[Candidate, ...]
    reasons: tuple[str, ...]
    task_type: str | None
    fallback_mid_stream: bool = False


@dataclass(slots=True)
class Outcome:
    """A successful routed call, with everything the response metadata needs."""

    completion: Completion
    candidate: Candidate
    attempts: list[dict[str, Any]]
    latency_ms: float
    ttft_ms: float | None
    cost_usd: float
    decision: Decision


class StreamSink(Protocol):
    async def __call__(self, content: str, model: str | None, *, restart: bool = False) -> None: ...


def effective_selection(selection: ModelSelection | None, cfg: ModelConfig) -> ModelSelection:
    """The request's selection, with the config's ``selection`` defaults for every field
    the request left out (a request that sets only ``priority`` keeps ``localOnly``)."""
    defaults = cfg.selection
    fallbacks = {
        "priority": defaults.priority,
        "fallback": defaults.fallback,
        "fallback_mid_stream": defaults.fallback_mid_stream,
        "local_only": defaults.local_only,
        "max_cost_usd": defaults.max_cost_usd,
    }
    if selection is None:
        return ModelSelection.model_validate(
            {k: v for k, v in fallbacks.items() if v is not None}, strict=False
        )
    given = selection.model_fields_set
    return selection.model_copy(update={k: v for k, v in fallbacks.items() if k not in given})


def backoff_ms(retry_index: int, strategy: str, rand: float) -> float:
    """Wait before retry number ``retry_index`` (0-based), with up to 25 % jitter off."""
    steps = 2**retry_index if strategy == "exponential" else retry_index + 1
    return min(BACKOFF_BASE_MS * steps, BACKOFF_CAP_MS) * (0.75 + 0.25 * rand)


def _context_text(context: Any) -> str:
    if isinstance(context, str):
        return context
    return orjson.dumps(context, option=orjson.OPT_INDENT_2).decode("utf-8")


def to_provider_request(request: ModelRequest, model: str) -> ProviderRequest:
    """The provider-neutral request for one model.

    ``context`` travels ahead of the prompt in the last user turn, so every provider
    sees it and it counts towards the context size.
    """
    messages = [ChatMessage(turn.role, turn.content) for turn in request.messages or ()]
    prompt = request.prompt
    if request.context is not None:
        prompt = f"Context:\n{_context_text(request.context)}\n\n{prompt}" if prompt else _context_text(
            request.context
        )
    if prompt:
        messages.append(ChatMessage("user", prompt))
    chars = sum(len(m.content) for m in messages) + len(request.system_prompt or "")
    # ~3 characters per token errs high for code and English; Ollama needs num_ctx set
    # explicitly or it silently truncates the prompt at its default window.
    needed = chars // 3 + (request.max_tokens or 1024) + 64
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
        context_window=1 << (needed - 1).bit_length() if needed > 4096 else None,
    )


@dataclass(slots=True)
class _StreamState:
    sink: StreamSink
    sent_any: bool = False
    started: float = 0.0
    first_chunk_at: float | None = None
    needs_restart: bool = False


class Router:
    """Runs decisions: attempts, retries, backoff and fallback."""

    def __init__(
        self,
        pool: ProviderPool,
        config: Callable[[], ModelConfig],
        stats: StatsBook,
        catalog: Catalog,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.pool = pool
        self._config = config
        self.stats = stats
        self.catalog = catalog
        self._clock = clock
        self._sleep = sleep
        self._rand = rand

    # -- selection ---------------------------------------------------------------------

    def select_provider(self, request: ModelRequest, selection: ModelSelection | None) -> Decision:
        """Choose the first candidate and its fallbacks (no model is called)."""
        cfg = self._config()
        sel = effective_selection(selection, cfg)
        local_only = sel.local_only
        enabled = self.pool.settings()
        model_id = sel.model_id or request.model_id
        reasons: list[str] = []
        skipped: list[str] = []

        def usable(name: str, *, explicit: bool) -> bool:
            item = enabled.get(name)
            if item is None:
                skipped.append(f"{name}: disabled")
                return False
            if local_only and not item.local:
                skipped.append(f"{name}: not local (localOnly)")
                return False
            if not explicit and item.kind in _KEYED_KINDS and not item.api_key:
                skipped.append(f"{name}: no API key configured")
                return False
            return True

        if sel.provider != "auto":
            name = sel.provider
            if name not in cfg.provider_names():
                raise InvalidParams(
                    f"unknown provider {name!r}",
                    errors=[{"path": "/selection/provider", "message": f"unknown provider {name!r}"}],
                )
            if not usable(name, explicit=True):
                raise InvalidParams(
                    f"provider {name!r} cannot be used: {skipped[-1].split(': ', 1)[1]}",
                    errors=[{"path": "/selection/provider", "message": skipped[-1]}],
                )
            first = name
            reasons.append(f"{name}: requested by selection.provider")
        else:
            order = self._auto_order(cfg, enabled, model_id)
            usable_order = [n for n in order if usable(n, explicit=False)]
            if not usable_order:
                raise AllProvidersFailedError(
                    "no usable provider: " + "; ".join(skipped)
                    + " (set OPENAI_API_KEY or ANTHROPIC_API_KEY, start Ollama, or add a custom provider)",
                    attempts=[],
                )
            first = usable_order[0]
            reasons.append(
                f"{first}: owns model {model_id}" if model_id and self._owns(enabled[first], model_id)
                else f"{first}: default provider" if first == cfg.default_provider
                else f"{first}: first usable provider of the fallback chain"
            )
        first_settings = enabled[first]
        candidates = [self._candidate(first_settings, model_id or first_settings.default_model)]
        if model_id:
            reasons.append(f"model {model_id}: requested")
        else:
            reasons.append(f"model {first_settings.default_model}: default model of {first}")
        if sel.fallback:
            for name in self._auto_order(cfg, enabled, None):
                if name != first and usable(name, explicit=False):
                    candidates.append(self._candidate(enabled[name], enabled[name].default_model))
            if len(candidates) > 1:
                reasons.append("fallback: " + ", ".join(f"{c.provider}/{c.model}" for c in candidates[1:]))
        else:
            reasons.append("fallback: disabled by selection.fallback")
        if local_only:
            reasons.append("localOnly: only local providers may be contacted")
        reasons.extend(f"skipped {s}" for s in dict.fromkeys(skipped))
        task_type = request.task_type.value if request.task_type else None
        return Decision(tuple(candidates), tuple(reasons), task_type, sel.fallback_mid_stream)

    @staticmethod
    def _candidate(settings: ProviderSettings, model: str) -> Candidate:
        return Candidate(settings.name, settings.kind, model, settings.local)

    def _owns(self, settings: ProviderSettings, model_id: str) -> bool:
        if model_id in settings.models or model_id == settings.default_model:
            return True
        return self.catalog.lookup(settings.kind, model_id) is not None

    def _auto_order(self, cfg: ModelConfig, enabled: dict[str, ProviderSettings], model_id: str | None) -> list[str]:
        order = [cfg.default_provider, *cfg.fallback_chain]
        if not cfg.fallback_chain:  # no chain configured: every provider may serve
            order.extend(cfg.provider_names())
        order = list(dict.fromkeys(order))
        if model_id:
            owners = [n for n in order if n in enabled and self._owns(enabled[n], model_id)]
            order = owners + [n for n in order if n not in owners]
        return order

    # -- execution ---------------------------------------------------------------------

    async def generate(self, request: ModelRequest, decision: Decision) -> Outcome:
        """Run ``decision`` without streaming."""
        return await self._route(request, decision, None)

    async def stream(self, request: ModelRequest, decision: Decision, sink: StreamSink) -> Outcome:
        """Run ``decision``, passing every text delta to ``sink`` as it arrives."""
        return await self._route(request, decision, _StreamState(sink))

    async def _route(self, request: ModelRequest, decision: Decision, stream: _StreamState | None) -> Outcome:
        cfg = self._config()
        started = self._clock()
        deadline = started + cfg.deadline_ms / 1000
        attempts: list[dict[str, Any]] = []
        errors: list[ProviderError] = []
        tried: set[str] = set()
        if stream is not None:
            stream.started = started
        try:
            async with asyncio.timeout(cfg.deadline_ms / 1000):
                for candidate in decision.candidates:
                    strategy, max_retries = self._retry_policy(candidate.provider, cfg)
                    for retry in range(max_retries + 1):
                        # Looked up per attempt: a config change during a backoff replaces
                        # (and closes) the provider object the previous attempt used.
                        provider = self.pool.get(candidate.provider)
                        if provider is None:
                            break  # disabled or removed meanwhile
                        tried.add(candidate.provider)
                        try:
                            completion = await self._attempt(provider, request, candidate, stream)
                        except ProviderError as exc:
                            errors.append(exc)
                            attempts.append(_attempt_record(candidate, exc))
                            self.stats.failure(candidate.provider, exc.type, exc.message)
                            log.info("attempt_failed", provider=candidate.provider, model=candidate.model,
                                     error_type=exc.type, error=exc.message, retry=retry)
                            if stream is not None and stream.sent_any:
                                if not decision.fallback_mid_stream:
                                    raise self._final_error(exc, attempts, errors, tried) from exc
                                # The host hears "restart" only when a new attempt
                                # actually sends text (see _stream_attempt).
                                stream.needs_restart = True
                                stream.sent_any = False
                            if not exc.may_retry_same or retry == max_retries:
                                break
                            wait = max(backoff_ms(retry, strategy, self._rand()), exc.retry_after_ms or 0)
                            if wait > MAX_RETRY_WAIT_MS or self._clock() + wait / 1000 > deadline:
                                log.info("retry_skipped", provider=candidate.provider, wait_ms=round(wait))
                                break
                            await self._sleep(wait / 1000)
                            continue
                        attempts.append(_attempt_record(candidate, None))
                        latency = (self._clock() - started) * 1000
                        self.stats.success(candidate.provider, latency)
                        ttft = None
                        if stream is not None and stream.first_chunk_at is not None:
                            ttft = (stream.first_chunk_at - started) * 1000
                        return Outcome(
                            completion=completion,
                            candidate=candidate,
                            attempts=attempts,
                            latency_ms=latency,
                            ttft_ms=ttft,
                            cost_usd=self.catalog.cost_usd(
                                candidate.kind, completion.model, completion.usage, local=candidate.local
                            ),
                            decision=decision,
                        )
                    if errors and not errors[-1].may_fall_back:
                        raise self._final_error(errors[-1], attempts, errors, tried)
        except TimeoutError as exc:
            timeout = NetworkError(f"request deadline of {cfg.deadline_ms} ms exceeded", retryable=True)
            attempts.append({"provider": "router", "modelId": "", "error": {"type": timeout.type,
                                                                             "message": timeout.message}})
            raise self._final_error(timeout, attempts, [*errors, timeout], tried) from exc
        if not errors:
            raise AllProvidersFailedError("no configured provider could be reached", attempts=attempts)
        raise self._final_error(errors[-1], attempts, errors, tried)

    def _retry_policy(self, name: str, cfg: ModelConfig) -> tuple[str, int]:
        entry = cfg.providers.custom.get(name) if name not in ("openai", "anthropic", "ollama") else getattr(
            cfg.providers, name
        )
        if entry is not None and entry.rate_limit is not None:
            return entry.rate_limit.strategy, entry.rate_limit.max_retries
        return "exponential", DEFAULT_MAX_RETRIES

    @staticmethod
    def _final_error(
        last: ProviderError, attempts: list[dict[str, Any]], errors: list[ProviderError], tried: set[str]
    ) -> ProviderError | AllProvidersFailedError:
        if len(tried) <= 1:
            last.attempts = attempts
            return last
        summary = "; ".join(f"{a['provider']}: {a['error']['message']}" for a in attempts if a.get("error"))
        return AllProvidersFailedError(
            f"all providers failed ({summary})",
            attempts=attempts,
            retryable=any(e.retryable for e in errors),
        )

    async def _attempt(
        self, provider: Provider, request: ModelRequest, candidate: Candidate, stream: _StreamState | None
    ) -> Completion:
        preq = to_provider_request(request, candidate.model)
        timeout_s = (provider.settings.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        async with self.pool.use(provider):
            if stream is None:
                try:
                    async with asyncio.timeout(timeout_s):
                        return await provider.generate(preq)
                except TimeoutError as exc:
                    raise NetworkError(
                        f"{provider.name}: no answer within {timeout_s * 1000:.0f} ms",
                        provider=provider.name, model_id=candidate.model,
                    ) from exc
            return await self._stream_attempt(provider, preq, stream, timeout_s)

    async def _stream_attempt(
        self, provider: Provider, preq: ProviderRequest, state: _StreamState, timeout_s: float
    ) -> Completion:
        parts: list[str] = []
        model, finish, usage = preq.model, None, None
        deltas = provider.stream(preq)
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout_s):
                        delta = await anext(deltas)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise NetworkError(
                        f"{provider.name}: stream silent for {timeout_s * 1000:.0f} ms",
                        provider=provider.name, model_id=preq.model,
                    ) from exc
                model = delta.model or model
                finish = delta.finish_reason or finish
                usage = delta.usage or usage
                if delta.content:
                    if state.needs_restart:
                        state.needs_restart = False
                        await state.sink("", model, restart=True)
                    parts.append(delta.content)
                    if state.first_chunk_at is None:
                        state.first_chunk_at = self._clock()
                    state.sent_any = True
                    await state.sink(delta.content, model)
        finally:
            await deltas.aclose()
        return Completion(content="".join(parts), model=model, finish_reason=finish, usage=usage)


def _attempt_record(candidate: Candidate, error: ProviderError | None) -> dict[str, Any]:
    record: dict[str, Any] = {"provider": candidate.provider, "modelId": candidate.model}
    if error is not None:
        record["error"] = {"type": error.type, "message": error.message}
    return record
