"""RateLimiter: windows, concurrency, FIFO, bounded queue, max_wait_s, cancellation, pauses.

Tests on an injected clock are exact; the few with real timing assert lower bounds from the
limiter's own admission times (exact by construction) and generous upper bounds only.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.ratelimit import DEFAULT_HOLD_S, Permit, RateLimiter, retry_delay_ms
from sidecar.errors import RateLimitError
from sidecar.providers.base import RateLimitSnapshot
from tests.ratelimit.helpers import FakeClock, cfg, settle


def start(limiter: RateLimiter, tokens: int = 0, **kw: float) -> asyncio.Task[Permit]:
    return asyncio.get_running_loop().create_task(limiter.acquire(tokens, **kw))


# -- request window ------------------------------------------------------------------------


async def test_request_window_admits_n_then_waits_for_the_oldest_to_expire() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_requests=3, window_ms=10_000), clock=clock)
    first = await lim.acquire()
    clock.advance(2)
    for _ in range(2):
        (await lim.acquire()).release()
    first.release()
    fourth = start(lim)
    await settle()
    assert not fourth.done()
    assert lim.estimated_wait_s() == pytest.approx(8.0 + 2.0)  # 4th at +8 s, a 5th at +10 s
    clock.advance(7.999)
    lim.wake()
    await settle()
    assert not fourth.done()
    clock.advance(0.001)
    lim.wake()
    await settle()
    assert fourth.done() and fourth.result().admitted_at == pytest.approx(first.admitted_at + 10)


async def test_request_window_real_timing() -> None:
    lim = RateLimiter("p", cfg(max_requests=2, window_ms=80))
    began = time.monotonic()
    permits = [await lim.acquire() for _ in range(2)]
    third = await lim.acquire()  # sleeps on the limiter's timer, not a poll loop
    assert third.admitted_at - permits[0].admitted_at >= 0.080
    assert time.monotonic() - began < 2.0
    for p in (*permits, third):
        p.release()


async def test_waiting_costs_one_timer_wakeup_not_a_poll_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    lim = RateLimiter("p", cfg(max_requests=1, window_ms=150))
    wakeups = 0
    original = lim._on_timer

    def counting() -> None:
        nonlocal wakeups
        wakeups += 1
        original()

    monkeypatch.setattr(lim, "_on_timer", counting)
    (await lim.acquire()).release()
    second = await lim.acquire()
    second.release()
    assert 1 <= wakeups <= 3  # 1 normally; an early-firing loop timer may add one re-arm


# -- token window --------------------------------------------------------------------------


async def test_token_window_and_release_correction() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_requests=0, max_tokens=100, window_ms=10_000), clock=clock)
    a = await lim.acquire(60)
    clock.advance(1)
    b = await lim.acquire(30)
    c = start(lim, 20)  # 60 + 30 + 20 > 100
    await settle()
    assert not c.done()
    assert lim.state()["windowTokens"] == 90
    assert lim.estimated_wait_s(0) == pytest.approx(9.0)  # a new call queues behind c
    a.release(actual_tokens=10)  # the call used less than estimated: budget freed at once
    await settle()
    assert c.done()
    assert lim.state()["windowTokens"] == 60
    b.release()
    c.result().release()


async def test_token_window_waits_until_enough_tokens_expire() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_tokens=100, window_ms=10_000), clock=clock)
    (await lim.acquire(70)).release()
    clock.advance(3)
    (await lim.acquire(30)).release()
    waiter = start(lim, 50)
    await settle()
    clock.advance(6.9)
    lim.wake()
    await settle()
    assert not waiter.done()
    clock.advance(0.1)  # the 70 expires at +10 s: 30 + 50 fits
    lim.wake()
    await settle()
    assert waiter.done()
    waiter.result().release()


async def test_oversized_request_is_admitted_alone_when_the_window_holds_no_tokens() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_tokens=100, window_ms=10_000), clock=clock)
    big = await lim.acquire(500)  # more than maxTokens, window empty: goes, rather than never
    small = start(lim, 1)
    await settle()
    assert not small.done()
    big.release()
    clock.advance(10)
    lim.wake()
    await settle()
    assert small.done()
    # Zero-token calls never consume the token budget.
    blocker = await lim.acquire(99)  # 1 + 99: the budget is now full
    assert lim.estimated_wait_s(1) > 0
    assert (await asyncio.wait_for(lim.acquire(0), timeout=1)) is not None
    blocker.release()


async def test_oversized_request_waits_for_tokens_in_the_window_to_expire() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_tokens=100, window_ms=10_000), clock=clock)
    (await lim.acquire(1)).release()
    big = start(lim, 500)
    await settle()
    assert not big.done()
    assert lim.estimated_wait_s(1) == pytest.approx(20.0)  # big at +10, then big's own window
    assert lim.estimated_wait_s(0) == pytest.approx(10.0)  # zero tokens: only FIFO behind big
    clock.advance(10)
    lim.wake()
    await settle()
    assert big.done()


# -- concurrency ---------------------------------------------------------------------------


async def test_max_concurrent_waits_for_a_release_without_any_timer() -> None:
    lim = RateLimiter("p", cfg(max_concurrent=2))
    a, b = await lim.acquire(), await lim.acquire()
    c = start(lim)
    await settle()
    assert not c.done()
    assert lim._timer is None  # only a release can help: nothing is scheduled
    assert lim.state()["inFlight"] == 2 and lim.state()["queued"] == 1
    a.release()
    a.release()  # idempotent
    await settle()
    assert c.done() and lim.state()["inFlight"] == 2
    async with c.result():
        pass
    b.release()
    assert lim.state()["inFlight"] == 0


async def test_fifo_order_under_contention() -> None:
    lim = RateLimiter("p", cfg(max_concurrent=1))
    order: list[int] = []

    async def worker(i: int) -> None:
        async with await lim.acquire():
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(30):
        tasks.append(asyncio.create_task(worker(i)))
        await asyncio.sleep(0)  # worker i calls acquire before worker i+1
    await asyncio.gather(*tasks)
    assert order == list(range(30))


async def test_fifo_is_strict_a_small_request_does_not_overtake_a_blocked_head() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_tokens=100, window_ms=10_000), clock=clock)
    await lim.acquire(80)
    head = start(lim, 50)
    await settle()
    behind = start(lim, 10)  # would fit now, but head came first
    await settle()
    assert not head.done() and not behind.done()
    head.cancel()
    await settle()
    assert behind.done()  # removing the blocking head lets the next one in at once


# -- bounded queue and max_wait_s ----------------------------------------------------------


async def test_full_queue_is_an_immediate_rate_limit_error_with_a_sensible_retry_after() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_requests=1, window_ms=10_000), clock=clock, max_queue=2)
    await lim.acquire()
    waiting = [start(lim), start(lim)]
    await settle()
    with pytest.raises(RateLimitError) as caught:
        await asyncio.wait_for(lim.acquire(), timeout=1)
    err = caught.value
    assert err.provider == "p" and err.retryable
    assert err.retry_after_ms == 30_000  # two ahead at +10 s and +20 s, this one at +30 s
    assert err.to_data()["reason"] == "queueFull"
    assert lim.state()["queued"] == 2
    for t in waiting:
        t.cancel()


async def test_full_queue_on_concurrency_uses_the_hold_time_estimate() -> None:
    lim = RateLimiter("p", cfg(max_concurrent=1), max_queue=1)
    held = await lim.acquire()
    queued = start(lim)
    await settle()
    with pytest.raises(RateLimitError) as caught:
        await lim.acquire()
    assert caught.value.retry_after_ms is not None
    assert caught.value.retry_after_ms >= DEFAULT_HOLD_S * 1000  # never "retry in 0 ms"
    held.release()
    await settle()
    queued.result().release()


async def test_max_wait_s_refuses_without_queueing() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_requests=1, window_ms=10_000), clock=clock)
    await lim.acquire()
    with pytest.raises(RateLimitError) as caught:
        await asyncio.wait_for(lim.acquire(max_wait_s=5), timeout=1)
    assert caught.value.retry_after_ms == 10_000
    assert caught.value.to_data()["reason"] == "waitTooLong"
    assert lim.state()["queued"] == 0
    ok = start(lim, max_wait_s=10)  # exactly the estimate: allowed to wait
    await settle()
    assert not ok.done() and lim.state()["queued"] == 1
    clock.advance(10)
    lim.wake()
    await settle()
    assert ok.done()


async def test_max_wait_s_also_bounds_a_wait_that_was_underestimated() -> None:
    lim = RateLimiter("p", cfg(max_concurrent=1))
    for _ in range(40):  # teach it that calls are short, so the estimate is ~0
        (await lim.acquire()).release()
    held = await lim.acquire()
    began = time.monotonic()
    with pytest.raises(RateLimitError) as caught:
        await lim.acquire(max_wait_s=0.05)
    assert time.monotonic() - began >= 0.045
    assert caught.value.to_data()["reason"] == "waitTimedOut"
    assert lim.state()["queued"] == 0 and lim.state()["inFlight"] == 1
    held.release()
    assert lim.state()["inFlight"] == 0


# -- cancellation --------------------------------------------------------------------------


async def test_cancelling_a_queued_waiter_keeps_the_others_in_order() -> None:
    lim = RateLimiter("p", cfg(max_concurrent=1))
    held = await lim.acquire()
    a, b, c = start(lim), start(lim), start(lim)
    await settle()
    b.cancel()
    await settle()
    assert b.cancelled() and lim.state()["queued"] == 2
    held.release()
    await settle()
    assert a.done() and not c.done()
    a.result().release()
    await settle()
    assert c.done()
    c.result().release()
    assert lim.state()["inFlight"] == 0 and lim.state()["queued"] == 0


async def test_cancelled_after_admission_but_before_running_gives_the_slot_back() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_concurrent=1, max_requests=5, window_ms=10_000), clock=clock)
    held = await lim.acquire(7)
    waiter = start(lim, 3)
    await settle()
    held.release()  # admits the waiter (its future has the permit) ...
    waiter.cancel()  # ... but it is cancelled before it could resume
    with pytest.raises(asyncio.CancelledError):
        await waiter
    state = lim.state()
    assert state["inFlight"] == 0 and state["queued"] == 0
    assert state["windowRequests"] == 1 and state["windowTokens"] == 7  # its start is undone


async def test_timeout_around_acquire_leaves_no_waiter_behind() -> None:
    lim = RateLimiter("p", cfg(max_concurrent=1))
    held = await lim.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await lim.acquire()
    assert lim.state()["queued"] == 0
    held.release()
    assert lim.state()["inFlight"] == 0


# -- pauses --------------------------------------------------------------------------------


async def test_pause_for_stops_starts_until_it_ends_and_only_extends() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", None, clock=clock)
    lim.pause_for(5_000, reason="retry-after")
    lim.pause_for(1_000, reason="shorter")  # never shortens
    lim.pause_for(0, reason="nothing")
    state = lim.state()
    assert state["pausedForMs"] == 5_000 and state["pauseReason"] == "retry-after"
    waiter = start(lim)
    await settle()
    assert lim.estimated_wait_s() == pytest.approx(5.0)
    with pytest.raises(RateLimitError):
        await lim.acquire(max_wait_s=1)
    clock.advance(4.999)
    lim.wake()
    await settle()
    assert not waiter.done()
    lim.pause_for(2_000, reason="longer")
    assert lim.state()["pauseReason"] == "longer"
    clock.advance(0.5)
    lim.wake()
    await settle()
    assert not waiter.done()
    clock.advance(1.5)
    lim.wake()
    await settle()
    assert waiter.done()
    assert lim.state()["pausedForMs"] == 0 and lim.state()["pauseReason"] is None


async def test_pause_real_timing() -> None:
    lim = RateLimiter("p", cfg(max_requests=100, window_ms=1000))
    lim.pause_for(60, reason="retry-after")
    began = time.monotonic()
    permit = await lim.acquire()
    assert permit.admitted_at - began >= 0.059
    assert time.monotonic() - began < 2.0


async def test_observe_pauses_on_an_exhausted_budget_until_its_reset() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_requests=10), clock=clock)
    lim.observe(None)
    lim.observe(RateLimitSnapshot(remaining_requests=5, remaining_tokens=100, reset_requests_ms=9_000))
    assert lim.state()["pausedForMs"] == 0
    lim.observe(RateLimitSnapshot(remaining_requests=0, reset_requests_ms=0))  # no reset known: no pause
    assert lim.state()["pausedForMs"] == 0
    snap = RateLimitSnapshot(remaining_requests=0, reset_requests_ms=3_000, remaining_tokens=7)
    lim.observe(snap)
    assert lim.state()["pausedForMs"] == 3_000
    assert lim.state()["pauseReason"] == "provider request budget exhausted"
    clock.advance(2)
    lim.observe(snap)  # the same (stale) snapshot again: not re-applied
    assert lim.state()["pausedForMs"] == 1_000
    lim.observe(RateLimitSnapshot(remaining_tokens=0, reset_tokens_ms=4_000))
    assert lim.state()["pausedForMs"] == 4_000
    assert lim.state()["pauseReason"] == "provider token budget exhausted"
    waiter = start(lim)
    await settle()
    clock.advance(4)
    lim.wake()
    await settle()
    assert waiter.done()


# -- unlimited, reconfigure, state ---------------------------------------------------------


async def test_unlimited_limiter_tracks_only_concurrency_and_pauses() -> None:
    lim = RateLimiter("p", None)
    permits = [await lim.acquire(10_000) for _ in range(500)]
    state = lim.state()
    assert state["inFlight"] == 500 and state["windowRequests"] == 0 and state["queued"] == 0
    assert lim._timer is None
    for p in permits:
        p.release()
    assert lim.state()["inFlight"] == 0
    with pytest.raises(ValueError):
        await lim.acquire(-1)


async def test_reconfigure_in_place_wakes_waiters_when_limits_rise() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", cfg(max_requests=1, window_ms=10_000), clock=clock)
    await lim.acquire()
    waiter = start(lim)
    await settle()
    lim.reconfigure(cfg(max_requests=2, window_ms=10_000))  # window history kept: room for 1 more
    await settle()
    assert waiter.done()
    lim.reconfigure(cfg(max_requests=1, window_ms=10_000))  # lowering never lets a burst through
    assert lim.estimated_wait_s() == pytest.approx(10.0)


def test_state_contents() -> None:
    clock = FakeClock()
    lim = RateLimiter("openai", cfg(max_requests=5, max_tokens=1000, max_concurrent=3, window_ms=60_000),
                      clock=clock)

    async def scenario() -> None:
        a = await lim.acquire(100)
        await lim.acquire(50)
        a.release(actual_tokens=80)
        lim.pause_for(1500, reason="retry-after")

    asyncio.run(scenario())
    assert lim.state() == {
        "inFlight": 1,
        "queued": 0,
        "windowRequests": 2,
        "windowTokens": 130,
        "maxRequests": 5,
        "maxTokens": 1000,
        "maxConcurrent": 3,
        "windowMs": 60_000,
        "pausedForMs": 1500,
        "pauseReason": "retry-after",
        "estimatedWaitMs": 1500,
    }
    assert RateLimiter("x", None).state() == {
        "inFlight": 0, "queued": 0, "windowRequests": 0, "windowTokens": 0, "maxRequests": 0,
        "maxTokens": None, "maxConcurrent": None, "windowMs": None, "pausedForMs": 0,
        "pauseReason": None, "estimatedWaitMs": 0,
    }


# -- backoff -------------------------------------------------------------------------------


@given(st.integers(0, 10), st.sampled_from(["linear", "exponential"]), st.floats(0, 1),
       st.none() | st.integers(0, 120_000))
def test_retry_delay_grows_is_capped_and_honours_retry_after(
    retry: int, strategy: str, rand: float, retry_after: int | None
) -> None:
    delay = retry_delay_ms(retry, strategy, rand, retry_after)
    steps = 2**retry if strategy == "exponential" else retry + 1
    assert delay == max(min(500 * steps, 8_000) * (0.75 + 0.25 * rand), retry_after or 0)
    assert delay >= 375  # never an immediate retry
    assert delay >= (retry_after or 0)
    assert delay <= max(8_000, retry_after or 0)
