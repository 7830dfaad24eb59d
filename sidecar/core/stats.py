"""Measured outcomes per provider: latency and error rate as moving windows, last error."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ProviderStats", "StatsBook"]

WINDOW = 100


@dataclass(slots=True)
class ProviderStats:
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_error: str | None = None
    last_error_type: str | None = None

    def latency_p50(self) -> float | None:
        return round(statistics.median(self.latencies_ms), 2) if self.latencies_ms else None

    def error_rate(self) -> float | None:
        if not self.outcomes:
            return None
        return round(1 - sum(self.outcomes) / len(self.outcomes), 4)


class StatsBook:
    """One :class:`ProviderStats` per provider name."""

    def __init__(self) -> None:
        self._stats: dict[str, ProviderStats] = {}

    def get(self, provider: str) -> ProviderStats:
        return self._stats.setdefault(provider, ProviderStats())

    def success(self, provider: str, latency_ms: float) -> None:
        stats = self.get(provider)
        stats.latencies_ms.append(latency_ms)
        stats.outcomes.append(True)

    def failure(self, provider: str, error_type: str, message: str) -> None:
        stats = self.get(provider)
        stats.outcomes.append(False)
        stats.last_error = message
        stats.last_error_type = error_type
