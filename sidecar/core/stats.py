"""Measured outcomes: latency and error rate as moving windows, and availability.

Per provider and per provider/model. A provider-wide failure (connection refused, a
timeout, an overloaded or rate-limited answer) marks the provider down for a cool-down
that doubles with each consecutive failure (30 s, 60 s, … 5 min). When it has passed,
the next request is let through as a probe: a success brings the provider back at
once, another failure starts a longer cool-down. The selector ranks a down provider
last instead of dropping it, so it is still a fallback of last resort.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["COOLDOWN_BASE_S", "COOLDOWN_MAX_S", "ProviderStats", "StatsBook"]

WINDOW = 100
COOLDOWN_BASE_S = 30.0
COOLDOWN_MAX_S = 300.0
#: More doublings than the base needs to pass the cap (30 s x 2**4 > 300 s).
_MAX_DOUBLINGS = 16


@dataclass(slots=True)
class ProviderStats:
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    #: The same window, sorted (kept by :meth:`add_latency`): the median without a sort
    #: per routing decision.
    _sorted: list[float] = field(default_factory=list)
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_error: str | None = None
    last_error_type: str | None = None
    consecutive_failures: int = 0
    down_until: float = 0.0

    def add_latency(self, latency_ms: float) -> None:
        window = self.latencies_ms
        if window.maxlen is not None and len(window) == window.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, window[0])]
        window.append(latency_ms)
        bisect.insort(self._sorted, latency_ms)

    def latency_p50(self) -> float | None:
        """The median of the window (as ``statistics.median``: the mean of the two middle
        values of an even count)."""
        ordered, n = self._sorted, len(self._sorted)
        if not n:
            return None
        mid = n // 2
        return round(ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2, 2)

    def error_rate(self) -> float | None:
        if not self.outcomes:
            return None
        return round(1 - sum(self.outcomes) / len(self.outcomes), 4)


class StatsBook:
    """Stats per provider (``get``) and per provider/model (``model``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._providers: dict[str, ProviderStats] = {}
        self._models: dict[tuple[str, str], ProviderStats] = {}

    def get(self, provider: str) -> ProviderStats:
        stats = self._providers.get(provider)
        if stats is None:  # not setdefault: that builds a ProviderStats (two deques) every call
            stats = self._providers[provider] = ProviderStats()
        return stats

    def model(self, provider: str, model: str) -> ProviderStats:
        stats = self._models.get((provider, model))
        if stats is None:
            stats = self._models[(provider, model)] = ProviderStats()
        return stats

    def success(self, provider: str, latency_ms: float, model: str | None = None) -> None:
        for stats in self._both(provider, model):
            stats.add_latency(latency_ms)
            stats.outcomes.append(True)
            stats.consecutive_failures = 0
            stats.down_until = 0.0

    def failure(self, provider: str, error_type: str, message: str, model: str | None = None,
                *, provider_wide: bool) -> None:
        wide = provider_wide
        for stats in self._both(provider, model):
            stats.outcomes.append(False)
            stats.last_error = message
            stats.last_error_type = error_type
        if wide:
            stats = self.get(provider)
            stats.consecutive_failures += 1
            # The doubling stops once past the cap: 2 ** n of a long outage (over 1,024
            # failures in a row) does not fit a float.
            doublings = min(stats.consecutive_failures - 1, _MAX_DOUBLINGS)
            cooldown = min(COOLDOWN_BASE_S * 2 ** doublings, COOLDOWN_MAX_S)
            stats.down_until = self._clock() + cooldown

    def available(self, provider: str) -> bool:
        """False while the provider is in its cool-down; the first request after it probes."""
        return self._clock() >= self.get(provider).down_until

    def down_for_ms(self, provider: str) -> int:
        return max(0, int((self.get(provider).down_until - self._clock()) * 1000))

    def _both(self, provider: str, model: str | None) -> list[ProviderStats]:
        return [self.get(provider)] + ([self.model(provider, model)] if model else [])
