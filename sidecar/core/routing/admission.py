"""The admission layer: an attempt runs only once the rate limiters admit it.

The provider's and the model's limiters admit the call (FIFO, windows, concurrency,
pauses) for the request's estimated tokens. When admission would take longer than the
caller may wait (the request's deadline, or :data:`MAX_RETRY_WAIT_MS` when another
candidate exists), the limiter refuses with a :class:`~sidecar.errors.RateLimitError`
whose ``limiter`` is set: the retry layer then moves on without blaming the provider.
A provider's own 429 with ``Retry-After`` pauses every call to that provider/model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sidecar.core.ratelimit import RateLimiter, acquire_all
from sidecar.core.routing.state import Call, Run, Try
from sidecar.errors import RateLimitError
from sidecar.providers.base import Completion, RateLimitSnapshot

__all__ = ["MAX_RETRY_WAIT_MS", "Admitted", "Limits"]

#: A provider asking to be left alone longer than this is skipped for the next candidate.
MAX_RETRY_WAIT_MS = 30_000


class Limits(Protocol):
    """What admission needs from the rate limiters (:class:`~sidecar.core.ratelimit.LimiterBook`)."""

    def for_call(self, provider: str, model: str) -> list[RateLimiter]: ...

    def pause_for(self, provider: str, model: str, ms: float, *, reason: str) -> None: ...

    def observe(self, provider: str, model: str, snapshot: RateLimitSnapshot | None) -> None: ...


class Admitted:
    """Hold the rate-limit permits around ``inner`` (the :class:`Call` above billing)."""

    def __init__(self, inner: Call, limits: Limits | None, clock: Callable[[], float]) -> None:
        self.inner = inner
        self.limits = limits
        self._clock = clock

    async def __call__(self, run: Run, attempt: Try) -> Completion:
        if self.limits is None:
            return await self.inner(run, attempt)
        limits, candidate = self.limits, attempt.candidate
        remaining = max(0.0, run.deadline - self._clock())
        # Switch provider instead of waiting long, unless this is the last candidate.
        max_wait = remaining if attempt.last else min(remaining, MAX_RETRY_WAIT_MS / 1000)
        needed = run.decision.prompt_tokens + run.decision.output_tokens
        permits = await acquire_all(limits.for_call(candidate.provider, candidate.model), needed,
                                    max_wait_s=max_wait)
        try:
            return await self.inner(run, attempt)
        except RateLimitError as exc:
            if exc.retry_after_ms and not exc.from_local_limiter:
                # Every concurrent call to this provider/model waits, not just this one.
                limits.pause_for(candidate.provider, candidate.model, exc.retry_after_ms, reason=exc.message)
            raise
        finally:
            permits.release(actual_tokens=attempt.used_tokens)
            limits.observe(candidate.provider, candidate.model, attempt.provider.last_rate_limit)
