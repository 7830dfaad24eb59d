"""The stream relay's per-chunk silence timer (``core/routing/watchdog.py``): it behaves
like ``asyncio.timeout`` around each step, with one timer for the whole loop."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.core.routing.watchdog import Watchdog

pytestmark = pytest.mark.timeout(30)


async def test_steps_in_time_never_time_out_and_share_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    timers: list[object] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        timers.append(getattr(callback, "__func__", None))
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    dog = Watchdog()
    started = loop.time()
    for _ in range(1000):
        async with dog.step(0.2):
            await asyncio.sleep(0)
    # 40 steps of 10 ms: 0.4 s in all, twice the allowance of one step, none silent that long.
    for _ in range(40):
        async with dog.step(0.2):
            await asyncio.sleep(0.01)
    dog.close()
    assert loop.time() - started > 0.35
    mine = [t for t in timers if t is Watchdog._due]
    assert 1 <= len(mine) <= 4, f"{len(mine)} timers for 1040 steps"


async def test_a_silent_step_raises_timeout_error_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    dog = Watchdog()
    async with dog.step(5):
        await asyncio.sleep(0.01)
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with dog.step(0.2):
            await asyncio.sleep(10)
    assert 0.15 <= loop.time() - started < 2
    dog.close()


async def test_a_shorter_allowance_after_a_long_one_is_kept() -> None:
    """A first chunk may wait long (a model load); the next ones only the silence bound."""
    loop = asyncio.get_running_loop()
    dog = Watchdog()
    async with dog.step(60):
        await asyncio.sleep(0)
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with dog.step(0.2):
            await asyncio.sleep(10)
    assert loop.time() - started < 2
    dog.close()


async def test_another_cancellation_stays_a_cancellation() -> None:
    dog = Watchdog()
    entered = asyncio.Event()

    async def relay() -> None:
        async with dog.step(30):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(relay())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    dog.close()


async def test_the_timeout_is_caught_and_the_loop_goes_on() -> None:
    """After a step timed out (the caller handles it), the task is not left cancelled."""
    dog = Watchdog()
    with pytest.raises(TimeoutError):
        async with dog.step(0.05):
            await asyncio.sleep(10)
    async with dog.step(1):
        await asyncio.sleep(0.01)  # would raise CancelledError if a cancel were still pending
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    dog.close()
