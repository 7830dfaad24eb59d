"""The router: runs a :class:`~sidecar.core.planner.Decision` as provider attempts.

Rules, in the order they apply to each candidate of the decision:

* A provider that already failed provider-wide in this request (connection, key, rate
  limit) is not tried again with another of its models.
* **Rate limits**: the provider's limiters admit the call (FIFO, windows, concurrency,
  pauses). When admission would take longer than :data:`MAX_RETRY_WAIT_MS` and another
  candidate exists, the router switches instead of waiting.
* **Budget**: the attempt's worst-case cost is reserved first; a candidate the budget
  cannot cover is skipped for a cheaper one (local models cost nothing). After the call
  the reservation is settled to the real cost; a failed or cancelled call settles what
  was really used (a stream is billed for the text that arrived) or releases it.
* **Retries**: each candidate gets ``1 + maxRetries`` attempts while its errors allow a
  retry on the same provider; waits grow linearly or exponentially with jitter and are
  never shorter than the provider's ``Retry-After``, which also pauses its limiter. A
  provider asking for more than :data:`MAX_RETRY_WAIT_MS` is left for the next candidate.
* ``AuthenticationError`` is never retried on the same provider; a ``ValidationError``
  ends the request unless the context was too long.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from sidecar.core import tokens
from sidecar.core.planner import Decision, Planner
from sidecar.core.pool import ProviderPool
from sidecar.core.ratelimit import RateLimiter, acquire_all, retry_delay_ms
from sidecar.core.registry import ModelProfile
from sidecar.core.stats import StatsBook
from sidecar.errors import (
    AllProvidersFailedError,
    AuthenticationError,
    BudgetExceededError,
    ModelError,
    NetworkError,
    ProviderError,
    RateLimitError,
)
from sidecar.providers.base import (
    ChatMessage,
    Completion,
    Provider,
    ProviderRequest,
    RateLimitSnapshot,
    Usage,
)
from sidecar.providers.http import DEFAULT_TIMEOUT_MS
from sidecar.wire.config import ModelConfig
from sidecar.wire.kinds import kind_of
from sidecar.wire.model import ModelRequest, ModelSelection

__all__ = [
    "MAX_RETRY_WAIT_MS",
    "Budget",
    "Limits",
    "Outcome",
    "Router",
    "StreamSink",
    "to_provider_request",
]

log = structlog.get_logger("sidecar.router")

#: A provider asking to be left alone longer than this is skipped for the next candidate.
MAX_RETRY_WAIT_MS = 30_000
DEFAULT_MAX_RETRIES = 2


class Budget(Protocol):
    """What the router needs from the budget manager."""

    async def reserve(self, *, request_id: str, provider: str, model: str, amount_usd: float) -> Any: ...

    async def settle(self, reservation: Any, *, cost_usd: float, prompt_tokens: int, completion_tokens: int,
                     outcome: str = "ok", estimated: bool = False) -> None: ...

    async def release(self, reservation: Any) -> None: ...


class Limits(Protocol):
    """What the router needs from the rate limiters (:class:`~sidecar.core.ratelimit.LimiterBook`)."""

    def for_call(self, provider: str, model: str) -> list[RateLimiter]: ...

    def pause_for(self, provider: str, model: str, ms: float, *, reason: str) -> None: ...

    def observe(self, provider: str, model: str, snapshot: RateLimitSnapshot | None) -> None: ...


@dataclass(slots=True)
class Outcome:
    """A successful routed call, with everything the response metadata needs."""

    completion: Completion
    candidate: ModelProfile
    attempts: list[dict[str, Any]]
    latency_ms: float
    ttft_ms: float | None
    cost_usd: float
    decision: Decision


#: ``shape(candidate, request) -> request``: per-candidate changes to the provider request.
Shape = Callable[[ModelProfile, ProviderRequest], ProviderRequest]


class StreamSink(Protocol):
    async def __call__(self, content: str, model: str | None, *, restart: bool = False) -> None: ...


def to_provider_request(request: ModelRequest, model: str, prompt_tokens: int | None = None) -> ProviderRequest:
    """The provider-neutral request for one model.

    ``context`` travels ahead of the prompt in the last user turn, so every provider
    sees it and it counts towards the context size. ``prompt_tokens`` is the planner's
    estimate (computed here when not given); it sizes the window a server is asked for.
    """
    messages = [ChatMessage(turn.role, turn.content) for turn in request.messages or ()]
    prompt = request.prompt
    if request.context is not None:
        prompt = f"Context:\n{tokens.context_text(request.context)}\n\n{prompt}" if prompt else tokens.context_text(
            request.context
        )
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
    )


@dataclass(slots=True)
class _StreamState:
    sink: StreamSink
    sent_any: bool = False
    started: float = 0.0
    first_chunk_at: float | None = None
    needs_restart: bool = False


@dataclass(slots=True)
class _Run:
    """The bookkeeping of one routed request."""

    request: ModelRequest
    decision: Decision
    stream: _StreamState | None
    tag: str
    deadline: float
    attempts: list[dict[str, Any]]
    errors: list[ProviderError]
    tried: set[str]
    failed_wide: set[str]
    #: Text the current attempt has produced (for billing a cut stream).
    produced: list[str]
    #: Tokens the last successful attempt really used (corrects the limiter's window).
    used_tokens: int | None = None
    #: The budget's refusal, if a candidate was skipped for it.
    budget_error: BudgetExceededError | None = None
    #: Adapts the provider request to the candidate (structured output's native params).
    shape: Shape | None = None


class Router:
    """Runs decisions: admission, budget, attempts, retries, backoff and fallback."""

    def __init__(
        self,
        pool: ProviderPool,
        config: Callable[[], ModelConfig],
        stats: StatsBook,
        planner: Planner,
        *,
        budget: Budget | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.pool = pool
        self._config = config
        self.stats = stats
        self.planner = planner
        self.budget = budget
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._rand = rand

    def select_provider(self, request: ModelRequest, selection: ModelSelection | None) -> Decision:
        """The decision for ``request``: first candidate, fallbacks, reasons (no call made)."""
        return self.planner.decide(request, selection)

    async def generate(self, request: ModelRequest, decision: Decision, *, tag: str = "",
                       shape: Shape | None = None) -> Outcome:
        """Run ``decision`` without streaming (``shape`` adapts each attempt's request)."""
        return await self._route(request, decision, None, tag, shape)

    async def stream(self, request: ModelRequest, decision: Decision, sink: StreamSink, *, tag: str = "",
                     shape: Shape | None = None) -> Outcome:
        """Run ``decision``, passing every text delta to ``sink`` as it arrives."""
        return await self._route(request, decision, _StreamState(sink), tag, shape)

    async def _route(self, request: ModelRequest, decision: Decision, stream: _StreamState | None,
                     tag: str, shape: Shape | None = None) -> Outcome:
        cfg = self._config()
        started = self._clock()
        run = _Run(request, decision, stream, tag, started + cfg.deadline_ms / 1000, [], [], set(), set(), [],
                   shape=shape)
        if stream is not None:
            stream.started = started
        try:
            async with asyncio.timeout(cfg.deadline_ms / 1000):
                for index, candidate in enumerate(decision.candidates):
                    if candidate.provider in run.failed_wide:
                        continue  # that provider already failed as a whole in this request
                    last = index == len(decision.candidates) - 1
                    outcome = await self._candidate(run, candidate, cfg, started, last=last)
                    if outcome is not None:
                        return outcome
                    if run.errors and not run.errors[-1].may_fall_back:
                        raise self._final_error(run, run.errors[-1])
        except TimeoutError as exc:
            timeout = NetworkError(f"request deadline of {cfg.deadline_ms} ms exceeded", retryable=True)
            run.attempts.append({"provider": "router", "modelId": "",
                                 "error": {"type": timeout.type, "message": timeout.message}})
            run.errors.append(timeout)
            raise self._final_error(run, timeout) from exc
        if run.budget_error is not None and not run.errors:
            # Every candidate was refused by the budget: say so, with data.usage.
            run.budget_error.attempts = run.attempts
            raise run.budget_error
        if not run.errors:
            raise AllProvidersFailedError("no configured provider could be reached", attempts=run.attempts)
        raise self._final_error(run, run.errors[-1])

    async def _candidate(self, run: _Run, candidate: ModelProfile, cfg: ModelConfig, started: float,
                         *, last: bool) -> Outcome | None:
        """Every attempt on one candidate; the outcome, or None to go on to the next."""
        strategy, max_retries = self._retry_policy(candidate.provider, cfg)
        for retry in range(max_retries + 1):
            # Looked up per attempt: a config change during a backoff replaces (and
            # closes) the provider object the previous attempt used.
            provider = self.pool.get(candidate.provider)
            if provider is None:
                return None  # disabled or removed meanwhile
            run.tried.add(candidate.provider)
            try:
                async with self._admitted(run, candidate, last=last):
                    attempt_started = self._clock()
                    completion = await self._billed_attempt(run, provider, candidate)
            except BudgetExceededError as exc:
                run.budget_error = exc
                run.attempts.append(_attempt_record(candidate, exc))
                log.info("budget_skipped", provider=candidate.provider, model=candidate.model, error=exc.message)
                return None  # a cheaper candidate may fit
            except ProviderError as exc:
                local_limit = isinstance(exc, RateLimitError) and exc.from_local_limiter
                self._record_failure(run, candidate, exc, retry, measured=not local_limit)
                if local_limit:
                    return None  # admission would take too long here: try the next candidate
                if run.stream is not None and run.stream.sent_any:
                    if not run.decision.fallback_mid_stream:
                        raise self._final_error(run, exc) from exc
                    # The host hears "restart" only when a new attempt sends text.
                    run.stream.needs_restart = True
                    run.stream.sent_any = False
                if not exc.may_retry_same or retry == max_retries or candidate.provider in run.failed_wide:
                    if exc.provider_wide:
                        run.failed_wide.add(candidate.provider)  # its other models would fail alike
                    return None
                wait = retry_delay_ms(retry, strategy, self._rand(), exc.retry_after_ms)
                if wait > MAX_RETRY_WAIT_MS or self._clock() + wait / 1000 > run.deadline:
                    log.info("retry_skipped", provider=candidate.provider, wait_ms=round(wait))
                    return None
                await self._sleep(wait / 1000)
                continue
            run.attempts.append(_attempt_record(candidate, None))
            now = self._clock()
            latency = (now - started) * 1000
            # The model's own speed: this attempt only, not earlier retries or queueing.
            self.stats.success(candidate.provider, (now - attempt_started) * 1000, candidate.model)
            self.planner.registry.note_served(candidate.provider, candidate.model, completion.model)
            ttft = None
            if run.stream is not None and run.stream.first_chunk_at is not None:
                ttft = (run.stream.first_chunk_at - started) * 1000
            return Outcome(completion, candidate, run.attempts, latency, ttft,
                           candidate.cost_usd(completion.usage), run.decision)
        return None

    def _record_failure(self, run: _Run, candidate: ModelProfile, exc: ProviderError, retry: int,
                        *, measured: bool) -> None:
        run.errors.append(exc)
        run.attempts.append(_attempt_record(candidate, exc))
        if measured:
            wide = exc.provider_wide or (isinstance(exc, ModelError) and exc.retryable)
            self.stats.failure(candidate.provider, exc.type, exc.message, candidate.model, provider_wide=wide)
        if isinstance(exc, AuthenticationError) or (isinstance(exc, RateLimitError) and not exc.retryable):
            run.failed_wide.add(candidate.provider)
        log.info("attempt_failed", provider=candidate.provider, model=candidate.model,
                 error_type=exc.type, error=exc.message, retry=retry)

    @asynccontextmanager
    async def _admitted(self, run: _Run, candidate: ModelProfile, *, last: bool) -> AsyncIterator[None]:
        """Hold the provider's (and model's) rate-limit permits for one attempt."""
        if self.limits is None:
            yield
            return
        limits = self.limits
        remaining = max(0.0, run.deadline - self._clock())
        # Switch provider instead of waiting long, unless this is the last candidate.
        max_wait = remaining if last else min(remaining, MAX_RETRY_WAIT_MS / 1000)
        tokens = run.decision.prompt_tokens + run.decision.output_tokens
        # Raises RateLimitError with data.limiter set when our own queue is full or the
        # wait would be too long: the caller moves on without blaming the provider.
        permits = await acquire_all(limits.for_call(candidate.provider, candidate.model), tokens,
                                    max_wait_s=max_wait)
        used: int | None = None
        try:
            yield
            used = run.used_tokens
        except RateLimitError as exc:
            if exc.retry_after_ms:
                # Every concurrent call to this provider/model waits, not just this one.
                limits.pause_for(candidate.provider, candidate.model, exc.retry_after_ms, reason=exc.message)
            raise
        finally:
            permits.release(actual_tokens=used)
            provider = self.pool.get(candidate.provider)
            limits.observe(candidate.provider, candidate.model,
                           provider.last_rate_limit if provider is not None else None)

    async def _billed_attempt(self, run: _Run, provider: Provider, candidate: ModelProfile) -> Completion:
        """One attempt inside a budget reservation, settled to what was really used."""
        if self.budget is None:
            completion = await self._attempt(run, provider, candidate)
            run.used_tokens = completion.usage.total_tokens if completion.usage else None
            return completion
        reservation = await self.budget.reserve(
            request_id=run.tag, provider=candidate.provider, model=candidate.model,
            amount_usd=run.decision.worst_case_cost(candidate))
        run.produced = []
        try:
            completion = await self._attempt(run, provider, candidate)
        except BaseException as exc:
            # Shielded: a cancelled request still writes what it used to the ledger.
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
            await asyncio.shield(self._settle_partial(run, candidate, reservation, outcome))
            raise
        usage = completion.usage
        run.used_tokens = usage.total_tokens if usage else None
        estimated = usage is None
        if usage is None:  # a server that reports no usage: bill the estimate
            usage = Usage(run.decision.prompt_tokens, tokens.estimate_text(completion.content))
        await asyncio.shield(self.budget.settle(
            reservation, cost_usd=candidate.cost_usd(usage), prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, outcome="ok", estimated=estimated))
        return completion

    async def _settle_partial(self, run: _Run, candidate: ModelProfile, reservation: Any, outcome: str) -> None:
        assert self.budget is not None
        text = "".join(run.produced)
        if not text:
            await self.budget.release(reservation)  # nothing generated: nothing billed
            return
        # A stream cut or cancelled after some text: the provider bills the prompt and
        # what it generated; count both from our (high) estimates.
        usage = Usage(run.decision.prompt_tokens, tokens.estimate_text(text))
        await self.budget.settle(reservation, cost_usd=candidate.cost_usd(usage), prompt_tokens=usage.prompt_tokens,
                                 completion_tokens=usage.completion_tokens, outcome="partial", estimated=True)
        log.info("billed_partial", provider=candidate.provider, model=candidate.model, outcome=outcome,
                 completion_tokens=usage.completion_tokens)

    def _retry_policy(self, name: str, cfg: ModelConfig) -> tuple[str, int]:
        entry = getattr(cfg.providers, name) if kind_of(name).builtin else cfg.providers.custom.get(name)
        if entry is not None and entry.rate_limit is not None:
            return entry.rate_limit.strategy, entry.rate_limit.max_retries
        return "exponential", DEFAULT_MAX_RETRIES

    @staticmethod
    def _final_error(run: _Run, last: ProviderError) -> ProviderError | AllProvidersFailedError:
        if len(run.tried) <= 1:
            last.attempts = run.attempts
            return last
        summary = "; ".join(f"{a['provider']}: {a['error']['message']}" for a in run.attempts if a.get("error"))
        return AllProvidersFailedError(
            f"all providers failed ({summary})",
            attempts=run.attempts,
            retryable=any(e.retryable for e in run.errors),
        )

    async def _attempt(self, run: _Run, provider: Provider, candidate: ModelProfile) -> Completion:
        preq = to_provider_request(run.request, candidate.model, run.decision.prompt_tokens)
        if run.shape is not None:
            preq = run.shape(candidate, preq)
        timeout_s = (provider.settings.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        async with self.pool.use(provider):
            if run.stream is None:
                try:
                    async with asyncio.timeout(timeout_s):
                        return await provider.generate(preq)
                except TimeoutError as exc:
                    raise NetworkError(
                        f"{provider.name}: no answer within {timeout_s * 1000:.0f} ms",
                        provider=provider.name, model_id=candidate.model,
                    ) from exc
            return await self._stream_attempt(provider, preq, run, timeout_s)

    async def _stream_attempt(self, provider: Provider, preq: ProviderRequest, run: _Run,
                              timeout_s: float) -> Completion:
        state = run.stream
        assert state is not None
        parts = run.produced = []
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


def _attempt_record(candidate: ModelProfile, error: Exception | None) -> dict[str, Any]:
    record: dict[str, Any] = {"provider": candidate.provider, "modelId": candidate.model}
    if error is not None:
        record["error"] = {"type": getattr(error, "type", type(error).__name__), "message": str(error)}
    return record
