"""The retry layer: every attempt on one candidate, and whether to go on to the next.

Each candidate gets ``1 + maxRetries`` attempts while its errors allow a retry on the
same provider (:attr:`~sidecar.errors.ProviderError.may_retry_same`). Waits grow
linearly or exponentially with jitter and are never shorter than the provider's
``Retry-After``; a provider asking for more than :data:`MAX_RETRY_WAIT_MS`, or a wait
past the request's deadline, leaves the candidate for the next one. A refusal by the
sidecar's own limiter or by the budget moves on at once without blaming the provider.
A stream that already sent text never falls back, unless ``fallbackMidStream`` is set:
then the host is told to restart its display when the next attempt sends text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from sidecar.core.pool import ProviderPool
from sidecar.core.ratelimit import retry_delay_ms
from sidecar.core.registry import ModelProfile
from sidecar.core.routing.admission import MAX_RETRY_WAIT_MS
from sidecar.core.routing.state import Call, Outcome, Run, Try
from sidecar.core.stats import StatsBook
from sidecar.errors import (
    AttemptRecord,
    AuthenticationError,
    BudgetExceededError,
    ModelError,
    ProviderError,
    RateLimitError,
)
from sidecar.providers.base import Completion
from sidecar.wire.config import ModelConfig

__all__ = ["DEFAULT_MAX_RETRIES", "NoFallback", "Retrying"]

log = structlog.get_logger("sidecar.router")

DEFAULT_MAX_RETRIES = 2


class NoFallback(Exception):
    """An error after which no other candidate may be tried (a stream that already sent
    text, a request the provider refused): the request ends with it."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


class Retrying:
    """Runs the attempts on one candidate through ``inner`` (admission → billing → call)."""

    def __init__(self, inner: Call, pool: ProviderPool, stats: StatsBook, *, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]], rand: Callable[[], float]) -> None:
        self.inner = inner
        self.pool = pool
        self.stats = stats
        self._clock = clock
        self._sleep = sleep
        self._rand = rand

    async def candidate(self, run: Run, candidate: ModelProfile, cfg: ModelConfig, started: float,
                        *, last: bool) -> Outcome | None:
        """The outcome, or None to go on to the next candidate."""
        strategy, max_retries = _retry_policy(candidate.provider, cfg)
        for retry in range(max_retries + 1):
            # Looked up per attempt: a config change during a backoff replaces (and
            # closes) the provider object the previous attempt used.
            provider = self.pool.get(candidate.provider)
            if provider is None:
                return None  # disabled or removed meanwhile
            run.tried.add(candidate.provider)
            attempt = Try(candidate, provider, last=last)
            try:
                completion = await self.inner(run, attempt)
            except BudgetExceededError as exc:
                run.budget_error = exc
                run.attempts.append(AttemptRecord.failed(candidate.provider, candidate.model, exc))
                log.info("budget_skipped", provider=candidate.provider, model=candidate.model, error=exc.message)
                return None  # a cheaper candidate may fit
            except ProviderError as exc:
                wait = self._after_failure(run, candidate, exc, retry, max_retries, strategy)
                if wait is None:
                    return None
                await self._sleep(wait / 1000)
                continue
            return self._success(run, attempt, completion, started)
        return None

    def _after_failure(self, run: Run, candidate: ModelProfile, exc: ProviderError, retry: int,
                       max_retries: int, strategy: str) -> float | None:
        """Record the failure; the wait before the next attempt, or None to move on."""
        local_limit = isinstance(exc, RateLimitError) and exc.from_local_limiter
        self._record(run, candidate, exc, retry, measured=not local_limit)
        if local_limit:
            return None  # admission would take too long here: try the next candidate
        stream = run.stream
        if stream is not None and stream.sent_any:
            if not run.decision.fallback_mid_stream:
                raise NoFallback(exc)
            # The host hears "restart" only when a new attempt sends text.
            stream.needs_restart = True
            stream.sent_any = False
        if not exc.may_retry_same or retry == max_retries or candidate.provider in run.failed_wide:
            if exc.provider_wide:
                run.failed_wide.add(candidate.provider)  # its other models would fail alike
            return None
        wait = retry_delay_ms(retry, strategy, self._rand(), exc.retry_after_ms)
        if wait > MAX_RETRY_WAIT_MS or self._clock() + wait / 1000 > run.deadline:
            log.info("retry_skipped", provider=candidate.provider, wait_ms=round(wait))
            return None
        return wait

    def _record(self, run: Run, candidate: ModelProfile, exc: ProviderError, retry: int, *, measured: bool) -> None:
        run.errors.append(exc)
        run.attempts.append(AttemptRecord.failed(candidate.provider, candidate.model, exc))
        if measured:
            wide = exc.provider_wide or (isinstance(exc, ModelError) and exc.retryable)
            self.stats.failure(candidate.provider, exc.type, exc.message, candidate.model, provider_wide=wide)
        if isinstance(exc, AuthenticationError) or (isinstance(exc, RateLimitError) and not exc.retryable):
            run.failed_wide.add(candidate.provider)
        log.info("attempt_failed", provider=candidate.provider, model=candidate.model,
                 error_type=exc.type, error=exc.message, retry=retry)

    def _success(self, run: Run, attempt: Try, completion: Completion, started: float) -> Outcome:
        candidate = attempt.candidate
        run.attempts.append(AttemptRecord(candidate.provider, candidate.model))
        now = self._clock()
        # The model's own speed: this attempt only, not earlier retries or queueing.
        attempt_started = attempt.started_at if attempt.started_at is not None else started
        self.stats.success(candidate.provider, (now - attempt_started) * 1000, candidate.model)
        ttft = None
        if run.stream is not None and run.stream.first_chunk_at is not None:
            ttft = (run.stream.first_chunk_at - started) * 1000
        return Outcome(completion, candidate, run.attempts, (now - started) * 1000, ttft,
                       attempt.cost_usd if attempt.cost_usd is not None else candidate.cost_usd(completion.usage),
                       run.decision)


def _retry_policy(name: str, cfg: ModelConfig) -> tuple[str, int]:
    entry = cfg.providers.entry(name)
    if entry is not None and entry.rate_limit is not None:
        return entry.rate_limit.strategy, entry.rate_limit.max_retries
    return "exponential", DEFAULT_MAX_RETRIES
