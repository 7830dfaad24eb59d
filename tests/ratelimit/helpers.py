"""Shared helpers: an injected clock, config shorthand, and letting the loop settle."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.wire.config import RateLimitConfig


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cfg(**fields: Any) -> RateLimitConfig:
    return RateLimitConfig(**fields)


async def settle(rounds: int = 6) -> None:
    """Let every ready callback and task step run (no real time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
