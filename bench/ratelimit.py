"""Rate limiter figures: hot-path overhead and admission accuracy under a binding limit.

* Overhead: ``await acquire()`` + ``release()`` in a tight loop, on a limiter with no
  limits, on one whose limits are configured but never bind, and through the router's
  path (``LimiterBook.for_call`` + ``acquire_all`` over a provider and a model limiter).
  An empty ``await`` of a coroutine is measured alongside as the floor. Medians of rounds.
* Accuracy: many callers against ``maxRequests`` per ``windowMs``: the most starts seen
  in any window (must not exceed the limit), the sustained rate against maxRequests per
  windowMs, and how late each start came after the moment the window allowed it (timer
  latency: asyncio's epoll rounds timeouts up to whole milliseconds, so up to ~1 ms is the
  event loop's floor). Then a concurrency limit (how soon a release admits the next caller) and a pause.

    .venv/bin/python bench/ratelimit.py [--rounds 5] [--calls 200000]

Writes ``bench/results-ratelimit.json``. These 2-core machines are noisy: read medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.core.ratelimit import LimiterBook, RateLimiter, acquire_all
from sidecar.wire.config import RateLimitConfig

OUT = Path(__file__).resolve().parent / "results-ratelimit.json"


async def _noop() -> None:
    return None


async def per_call_us(kind: str, calls: int) -> float:
    if kind == "floor":
        began = time.perf_counter()
        for _ in range(calls):
            await _noop()
        return (time.perf_counter() - began) / calls * 1e6
    if kind == "book":
        book = LimiterBook()
        book.configure({"p": RateLimitConfig(max_requests=10**9, max_concurrent=64)},
                       {("p", "m"): RateLimitConfig(max_requests=10**9, max_tokens=10**12)})
        began = time.perf_counter()
        for _ in range(calls):
            (await acquire_all(book.for_call("p", "m"), 500)).release(400)
        return (time.perf_counter() - began) / calls * 1e6
    config = None if kind == "unlimited" else RateLimitConfig(
        max_requests=10**9, window_ms=60_000, max_tokens=10**12, max_concurrent=64)
    lim = RateLimiter("p", config)
    began = time.perf_counter()
    for _ in range(calls):
        (await lim.acquire(500)).release(400)
    return (time.perf_counter() - began) / calls * 1e6


async def window_accuracy(max_requests: int, window_ms: int, callers: int, seconds: float) -> dict[str, Any]:
    lim = RateLimiter("p", RateLimitConfig(max_requests=max_requests, window_ms=window_ms), max_queue=10**6)
    starts: list[float] = []
    stop = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < stop:
            permit = await lim.acquire()
            starts.append(permit.admitted_at)  # the limiter's clock: what its guarantee is about
            permit.release()
            await asyncio.sleep(0)

    await asyncio.gather(*(caller() for _ in range(callers)))
    starts.sort()
    span = window_ms / 1000
    most, j = 0, 0
    for i, t in enumerate(starts):  # sliding half-open window ending at each start
        while starts[j] <= t - span:
            j += 1
        most = max(most, i - j + 1)
    late = [(starts[k] - (starts[k - max_requests] + span)) * 1000 for k in range(max_requests, len(starts))]
    # Sustained rate while every caller was still busy (the drain after `stop` thins out).
    busy = [t for t in starts if t < stop]
    rate = (len(busy) - max_requests) / (busy[-1] - busy[0])
    return {
        "max_requests": max_requests, "window_ms": window_ms, "callers": callers,
        "starts": len(starts), "max_starts_in_any_window": most,
        "rate_vs_limit": round(rate / (max_requests / span), 4),
        "lateness_ms_p50": round(statistics.median(late), 3),
        "lateness_ms_p99": round(statistics.quantiles(late, n=100)[98], 3),
        "lateness_ms_max": round(max(late), 3),
    }


async def concurrency_accuracy(max_concurrent: int, hold_ms: float, callers: int, rounds: int) -> dict[str, Any]:
    lim = RateLimiter("p", RateLimitConfig(max_concurrent=max_concurrent), max_queue=10**6)
    in_flight, most = 0, 0
    handoff: list[float] = []
    last_release: list[float] = []

    async def caller() -> None:
        nonlocal in_flight, most
        for _ in range(rounds):
            permit = await lim.acquire()
            now = time.monotonic()
            if last_release:
                handoff.append((now - last_release[-1]) * 1000)
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(hold_ms / 1000)
            in_flight -= 1
            last_release.append(time.monotonic())
            permit.release()

    began = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.monotonic() - began
    ideal = callers * rounds * hold_ms / 1000 / max_concurrent
    return {
        "max_concurrent": max_concurrent, "hold_ms": hold_ms, "callers": callers,
        "max_in_flight_seen": most, "elapsed_vs_ideal": round(elapsed / ideal, 3),
        "release_to_next_start_ms_p50": round(statistics.median(handoff), 3),
    }


async def pause_accuracy(pause_ms: float, repeats: int) -> dict[str, Any]:
    late = []
    for _ in range(repeats):
        lim = RateLimiter("p", None)
        lim.pause_for(pause_ms, reason="bench")
        began = time.monotonic()
        (await lim.acquire()).release()
        late.append((time.monotonic() - began) * 1000 - pause_ms)
    return {"pause_ms": pause_ms, "early_starts": sum(x < 0 for x in late),
            "lateness_ms_p50": round(statistics.median(late), 3), "lateness_ms_max": round(max(late), 3)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    kinds = ["floor", "unlimited", "limited_not_binding", "book_provider_plus_model"]
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:  # interleaved so machine noise hits every kind alike
            samples[kind].append(await per_call_us(kind.split("_")[0] if kind.startswith("book") else kind,
                                                   args.calls))
    overhead = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "acquire_release_us_per_call": overhead,
        "window_accuracy": [await window_accuracy(20, 200, 50, 2.0), await window_accuracy(5, 50, 20, 1.5)],
        "concurrency_accuracy": await concurrency_accuracy(4, 10, 32, 10),
        "pause_accuracy": await pause_accuracy(50, 20),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
