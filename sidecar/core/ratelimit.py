"""Client-side rate limiting, per provider and per provider+model, without polling.

A :class:`RateLimiter` admits calls in strict FIFO order when all of these allow a start:

* **Request window**: a start at time ``s`` counts until ``s + windowMs``; at most
  ``maxRequests`` starts count at once, so no half-open interval of ``windowMs`` ever
  holds more than ``maxRequests`` starts (0 = no request limit).
* **Token window**: the tokens of the counted starts plus the new call's stay within
  ``maxTokens``. A call asking for more than ``maxTokens`` by itself is admitted alone,
  once the window holds no tokens, instead of blocking forever.
* **Concurrency**: fewer than ``maxConcurrent`` permits are unreleased.
* **Pauses**: the provider's ``retry-after`` (:meth:`RateLimiter.pause_for`) and exhausted
  ``x-ratelimit-*`` / ``anthropic-ratelimit-*`` budgets (:meth:`RateLimiter.observe`) stop
  every start until they end. Pauses only ever extend.

Nothing polls: one pump admits from the head of the queue on every release, cancel,
reconfiguration and pause, and from one loop timer armed for the earliest moment the head
could go (oldest window entry expiring, pause ending); a head blocked by concurrency alone
waits for a release with no timer. A full queue, or an estimated wait beyond the caller's
``max_wait_s``, is an immediate :class:`~sidecar.errors.RateLimitError` whose
``retry_after_ms`` is the estimated wait, so the router can switch provider instead
(``data.reason``: ``queueFull`` / ``waitTooLong``; a wait that outlasts ``max_wait_s``
anyway, since concurrency waits are only estimated, ends as ``waitTimedOut``).
With an injected clock, call :meth:`RateLimiter.wake` after moving it.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.errors import RateLimitError
from sidecar.providers.base import RateLimitSnapshot
from sidecar.wire.config import RateLimitConfig

__all__ = ["DEFAULT_HOLD_S", "DEFAULT_MAX_QUEUE", "LimiterBook", "Permit", "Permits", "RateLimiter",
           "acquire_all", "retry_delay_ms"]

DEFAULT_MAX_QUEUE = 256
#: Assumed duration of a call until one has been released (concurrency estimates only).
DEFAULT_HOLD_S = 1.0
_HOLD_WEIGHT = 0.2  # moving average weight of the newest permit's hold time
BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 8_000

Clock = Callable[[], float]


def retry_delay_ms(retry_index: int, strategy: str, rand: float, retry_after_ms: int | None = None) -> float:
    """Wait before retry ``retry_index`` (0-based): the router's backoff (0.5 s base, x2 or
    +0.5 s per retry, 8 s cap, up to 25 % jitter off, never 0), never below ``retry_after_ms``."""
    steps = 2 ** min(retry_index, 16) if strategy == "exponential" else retry_index + 1
    return max(min(BACKOFF_BASE_MS * steps, BACKOFF_CAP_MS) * (0.75 + 0.25 * rand), retry_after_ms or 0)


@dataclass(slots=True, eq=False)  # identity: entries are removed by identity
class _Entry:
    """One start counted in the window (``tokens`` may be corrected on release)."""

    at: float
    tokens: int
    live: bool = True


@dataclass(slots=True, eq=False)
class _Waiter:
    tokens: int
    future: asyncio.Future[Permit]
    deadline: float | None


class Permit:
    """The right to run one call. :meth:`release` it when the call ends (idempotent), or
    use it as ``async with await limiter.acquire(...):``."""

    __slots__ = ("_entry", "_limiter", "admitted_at", "released")

    def __init__(self, limiter: RateLimiter, entry: _Entry | None, at: float) -> None:
        self._limiter = limiter
        self._entry = entry
        self.admitted_at = at
        self.released = False

    def release(self, actual_tokens: int | None = None) -> None:
        """Free the concurrency slot; ``actual_tokens`` replaces the estimate counted in
        the window (when the start is still in it)."""
        if not self.released:
            self.released = True
            self._limiter._release(self, actual_tokens)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class RateLimiter:
    """One provider's (or one provider+model's) limits: sliding windows, concurrency,
    a FIFO queue, pauses."""

    def __init__(
        self,
        name: str,
        config: RateLimitConfig | None,
        *,
        clock: Clock = time.monotonic,
        max_queue: int = DEFAULT_MAX_QUEUE,
        provider: str | None = None,
        model_id: str | None = None,
    ) -> None:
        self.name = name
        self.provider = provider or name
        self.model_id = model_id
        self.clock = clock
        self.max_queue = max_queue
        self._waiters: deque[_Waiter] = deque()
        self._entries: deque[_Entry] = deque()
        self._window_tokens = 0
        self._in_flight = 0
        self._held: set[Permit] = set()
        self._hold_s = DEFAULT_HOLD_S
        self._pause_until = 0.0
        self._pause_reason: str | None = None
        self._last_snapshot: RateLimitSnapshot | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.config: RateLimitConfig | None = None
        self.reconfigure(config)

    def reconfigure(self, config: RateLimitConfig | None) -> None:
        """Apply new limits in place: queue, window history, in-flight calls and pause carry
        over, so a config change never lets a burst through."""
        self.config = config
        self._max_requests = config.max_requests if config else 0
        self._max_tokens = (config.max_tokens or 0) if config else 0
        self._max_concurrent = (config.max_concurrent or 0) if config else 0
        self._window_s = config.window_ms / 1000 if config else 0.0
        self._tracking = bool(self._max_requests or self._max_tokens)
        if not self._tracking:
            for entry in self._entries:
                entry.live = False
            self._entries.clear()
            self._window_tokens = 0
        if self._waiters:
            self._pump()

    async def acquire(self, tokens: int = 0, *, max_wait_s: float | None = None) -> Permit:
        """Wait (FIFO) for a start. Raises :class:`RateLimitError` at once when the queue
        holds ``max_queue`` waiters or the estimated wait exceeds ``max_wait_s``; a wait
        that turns out longer than ``max_wait_s`` anyway ends with the same error."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        now = self.clock()
        if not self._waiters and not self._wait_until(tokens, now):
            return self._admit(tokens, now)
        if len(self._waiters) >= self.max_queue:
            wait = self.estimated_wait_s(tokens)
            raise self._error(f"local rate limit queue is full ({len(self._waiters)} waiting)", wait, "queueFull")
        if max_wait_s is not None:
            wait = self.estimated_wait_s(tokens)
            if wait > max_wait_s:
                raise self._error(f"local rate limit would wait {wait * 1000:.0f} ms", wait, "waitTooLong")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tokens, loop.create_future(), None if max_wait_s is None else now + max_wait_s)
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._pump()  # arms the timer for the new head
        expiry = None if max_wait_s is None else loop.call_later(max_wait_s, self._expire, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    def estimated_wait_s(self, tokens: int = 0) -> float:
        """How long a new :meth:`acquire` would wait now (0 if immediate), queue included.
        Windows and pauses are exact; concurrency assumes calls last as long as the
        moving average of released ones (:data:`DEFAULT_HOLD_S` before the first)."""
        now = self.clock()
        if not self._waiters and not self._wait_until(tokens, now):
            return 0.0
        return max(0.0, self._simulate([*(w.tokens for w in self._waiters), tokens], now) - now)

    def wake(self) -> None:
        """Re-check the queue now (needed only after an injected clock moved)."""
        self._pump()
        now = self.clock()
        for waiter in [w for w in self._waiters if w.deadline is not None and w.deadline <= now]:
            self._expire(waiter)

    def pause_for(self, ms: float, *, reason: str) -> None:
        """Nobody starts for ``ms`` from now; an existing longer pause is kept."""
        if ms <= 0:
            return
        until = self.clock() + ms / 1000
        if until > self._pause_until:
            self._pause_until = until
            self._pause_reason = reason
            if self._waiters:
                self._pump()

    def observe(self, snapshot: RateLimitSnapshot | None) -> None:
        """Pause until the provider's reset when its headers said a budget is exhausted.
        The same snapshot object is applied once (providers keep the last one around)."""
        if snapshot is None or snapshot is self._last_snapshot:
            return
        self._last_snapshot = snapshot
        if snapshot.remaining_requests == 0 and snapshot.reset_requests_ms:
            self.pause_for(snapshot.reset_requests_ms, reason="provider request budget exhausted")
        if snapshot.remaining_tokens == 0 and snapshot.reset_tokens_ms:
            self.pause_for(snapshot.reset_tokens_ms, reason="provider token budget exhausted")

    def state(self) -> dict[str, Any]:
        """camelCase, JSON-ready view for ``model:health``."""
        now = self.clock()
        if self._tracking:
            self._prune(now)
        paused = max(0.0, self._pause_until - now)
        return {
            "inFlight": self._in_flight,
            "queued": len(self._waiters),
            "windowRequests": len(self._entries),
            "windowTokens": self._window_tokens,
            "maxRequests": self._max_requests,
            "maxTokens": self._max_tokens or None,
            "maxConcurrent": self._max_concurrent or None,
            "windowMs": self.config.window_ms if self.config else None,
            "pausedForMs": math.ceil(round(paused * 1000, 6)),
            "pauseReason": self._pause_reason if paused else None,
            "estimatedWaitMs": math.ceil(round(self.estimated_wait_s() * 1000, 6)),
        }

    def _wait_until(self, tokens: int, now: float) -> float:
        """0.0 when a call of ``tokens`` may start now, else the earliest time worth a
        re-check (``inf``: only a release can help)."""
        if self._pause_until:
            if now < self._pause_until:
                return self._pause_until
            self._pause_until = 0.0
        if self._tracking:
            self._prune(now)
            entries = self._entries
            if self._max_requests and len(entries) >= self._max_requests:
                return entries[0].at + self._window_s
            if (self._max_tokens and tokens and self._window_tokens > 0
                    and self._window_tokens + tokens > self._max_tokens):
                return entries[0].at + self._window_s
        if self._max_concurrent and self._in_flight >= self._max_concurrent:
            return math.inf
        return 0.0

    def _prune(self, now: float) -> None:
        entries, window = self._entries, self._window_s
        while entries and entries[0].at + window <= now:
            entry = entries.popleft()
            entry.live = False
            self._window_tokens -= entry.tokens

    def _admit(self, tokens: int, now: float) -> Permit:
        entry = None
        if self._tracking:
            entry = _Entry(now, tokens)
            self._entries.append(entry)
            self._window_tokens += tokens
        self._in_flight += 1
        permit = Permit(self, entry, now)
        self._held.add(permit)
        return permit

    def _release(self, permit: Permit, actual_tokens: int | None, *, undo: bool = False) -> None:
        """Free the slot; with ``undo`` (the call never started) its window start goes too."""
        self._in_flight -= 1
        self._held.discard(permit)
        entry = permit._entry
        if undo:
            if entry is not None and entry.live:
                entry.live = False
                self._window_tokens -= entry.tokens
                self._entries.remove(entry)
        else:
            if self._max_concurrent:
                self._hold_s += _HOLD_WEIGHT * (self.clock() - permit.admitted_at - self._hold_s)
            if actual_tokens is not None and entry is not None and entry.live:
                self._window_tokens += max(0, actual_tokens) - entry.tokens
                entry.tokens = max(0, actual_tokens)
        if self._waiters:
            self._pump()

    def _undo(self, permit: Permit) -> None:
        if not permit.released:
            permit.released = True
            self._release(permit, None, undo=True)

    def _pump(self) -> None:
        """Admit waiters from the head while they fit; arm the timer for the next chance."""
        now = self.clock()
        waiters = self._waiters
        while waiters:
            head = waiters[0]
            if head.future.done():  # cancelled; its task removes nothing more
                waiters.popleft()
                continue
            until = self._wait_until(head.tokens, now)
            if until:
                self._arm(until, now)
                return
            waiters.popleft()
            head.future.set_result(self._admit(head.tokens, now))
        self._disarm()

    def _arm(self, until: float, now: float) -> None:
        if until == self._timer_at and self._timer is not None:
            return
        self._disarm()
        if until != math.inf:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, until - now), self._on_timer)
            self._timer_at = until

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._pump()

    def _abandon(self, waiter: _Waiter) -> None:
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._undo(fut.result())  # admitted, but cancelled before it could run
            return
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        self._pump()

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done() or waiter.deadline is None:
            return
        now = self.clock()
        if now < waiter.deadline:  # an injected clock lags the loop's
            asyncio.get_running_loop().call_later(waiter.deadline - now, self._expire, waiter)
            return
        self._pump()
        if waiter.future.done():
            return
        self._waiters.remove(waiter)
        wait = self.estimated_wait_s(waiter.tokens)
        waiter.future.set_exception(self._error("local rate limit wait exceeded its bound", wait, "waitTimedOut"))
        self._pump()

    def _simulate(self, demands: list[int], now: float) -> float:
        """Start time of the last of ``demands`` admitted in order from the current state."""
        t = max(now, self._pause_until)
        window = deque((e.at, e.tokens) for e in self._entries)
        wtokens, span = self._window_tokens, self._window_s
        heap: list[float] | None = None
        if self._max_concurrent:
            frees = sorted(max(now, p.admitted_at + self._hold_s) for p in self._held)
            n, m = len(frees), self._max_concurrent
            heap = frees[n - m:] if n >= m else [now] * (m - n) + frees  # sorted: a valid heap
        for tokens in demands:
            if heap is not None:
                t = max(t, heap[0])
            while self._tracking:
                while window and window[0][0] + span <= t:
                    wtokens -= window.popleft()[1]
                if (self._max_requests and len(window) >= self._max_requests) or (
                        self._max_tokens and tokens and wtokens > 0 and wtokens + tokens > self._max_tokens):
                    t = window[0][0] + span
                    continue
                window.append((t, tokens))
                wtokens += tokens
                break
            if heap is not None:
                heapq.heapreplace(heap, t + self._hold_s)
        return t

    def _error(self, why: str, wait_s: float, reason: str) -> RateLimitError:
        return RateLimitError(
            f"{self.name}: {why}",
            provider=self.provider,
            model_id=self.model_id,
            retry_after_ms=max(1, math.ceil(round(wait_s * 1000, 6))),
            limiter=self.name,
            extra={"reason": reason},
        )


class Permits:
    """The permits one call holds across its limiters, released together."""

    __slots__ = ("permits",)

    def __init__(self, permits: Sequence[Permit]) -> None:
        self.permits = tuple(permits)

    def release(self, actual_tokens: int | None = None) -> None:
        for permit in self.permits:
            permit.release(actual_tokens)

    async def __aenter__(self) -> Permits:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


async def acquire_all(limiters: Sequence[RateLimiter], tokens: int = 0, *,
                      max_wait_s: float | None = None) -> Permits:
    """Pass every limiter in order (as :meth:`LimiterBook.for_call` lists them, narrowest
    first). If any would wait beyond ``max_wait_s``, none is queued; the bound covers the
    whole sequence; on any failure or cancellation the permits already taken are undone."""
    if max_wait_s is not None:
        for limiter in limiters:
            wait = limiter.estimated_wait_s(tokens)
            if wait > max_wait_s:
                raise limiter._error(f"local rate limit would wait {wait * 1000:.0f} ms", wait, "waitTooLong")
    got: list[Permit] = []
    start = limiters[0].clock() if limiters else 0.0
    try:
        for limiter in limiters:
            left = None if max_wait_s is None else max(0.0, max_wait_s - (limiter.clock() - start))
            got.append(await limiter.acquire(tokens, max_wait_s=left))
    except BaseException:
        for permit in got:
            permit._limiter._undo(permit)
        raise
    return Permits(got)


class LimiterBook:
    """All limiters, keyed by provider (and provider/model where a per-model config exists)."""

    def __init__(self, *, clock: Clock = time.monotonic, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self._clock = clock
        self._max_queue = max_queue
        self._providers: dict[str, RateLimiter] = {}
        self._models: dict[tuple[str, str], RateLimiter] = {}

    def configure(self, provider_limits: dict[str, RateLimitConfig | None],
                  model_limits: dict[tuple[str, str], RateLimitConfig] | None = None) -> None:
        """Match the config: unchanged limiters are kept as they are, changed ones take the
        new limits in place (state carries over), removed ones are dropped after being
        opened up so their waiters are not stranded."""
        self._sync(self._providers, dict(provider_limits), lambda name: (name, None))
        self._sync(self._models, dict(model_limits or {}), lambda key: key)

    def _sync(self, book: dict[Any, RateLimiter], wanted: dict[Any, RateLimitConfig | None],
              names: Callable[[Any], tuple[str, str | None]]) -> None:
        for key in [k for k in book if k not in wanted]:
            book.pop(key).reconfigure(None)
        for key, config in wanted.items():
            limiter = book.get(key)
            if limiter is None:
                provider, model = names(key)
                book[key] = self._new(provider, model, config)
            elif limiter.config != config:
                limiter.reconfigure(config)

    def _new(self, provider: str, model: str | None, config: RateLimitConfig | None) -> RateLimiter:
        name = provider if model is None else f"{provider}/{model}"
        return RateLimiter(name, config, clock=self._clock, max_queue=self._max_queue,
                           provider=provider, model_id=model)

    def for_call(self, provider: str, model: str) -> list[RateLimiter]:
        """The limiters a call must pass, in acquisition order: the model's (when
        configured) before the provider's, so a call waiting for the shared provider
        limiter holds only its own model's slot."""
        limiter = self._providers.get(provider)
        if limiter is None:  # unconfigured provider: no limits, but pauses still apply
            limiter = self._providers[provider] = self._new(provider, None, None)
        per_model = self._models.get((provider, model))
        return [per_model, limiter] if per_model is not None else [limiter]

    def pause_for(self, provider: str, model: str, ms: float, *, reason: str) -> None:
        """Apply a provider's retry-after to the narrowest limiter of the call."""
        self.for_call(provider, model)[0].pause_for(ms, reason=reason)

    def observe(self, provider: str, model: str, snapshot: RateLimitSnapshot | None) -> None:
        """Apply a provider's rate-limit headers to the narrowest limiter of the call."""
        self.for_call(provider, model)[0].observe(snapshot)

    def states(self) -> dict[str, dict[str, Any]]:
        """``{"openai": {...}, "openai/gpt-4o": {...}}``."""
        limiters = [*self._providers.values(), *self._models.values()]
        return {limiter.name: limiter.state() for limiter in limiters}
