"""LimiterBook: per-provider and per-model limiters, configure(), acquire_all, states()."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.core.ratelimit import LimiterBook, Permits, acquire_all
from sidecar.errors import RateLimitError
from sidecar.providers.base import RateLimitSnapshot
from tests.ratelimit.helpers import FakeClock, cfg, settle


def test_for_call_lists_the_model_limiter_before_the_provider_limiter() -> None:
    book = LimiterBook()
    book.configure({"openai": cfg(max_concurrent=4), "ollama": None},
                   {("openai", "gpt-4o"): cfg(max_concurrent=1)})
    model, provider = book.for_call("openai", "gpt-4o")
    assert (model.name, model.provider, model.model_id) == ("openai/gpt-4o", "openai", "gpt-4o")
    assert provider.name == "openai" and provider.model_id is None
    assert [lim.name for lim in book.for_call("openai", "gpt-4o-mini")] == ["openai"]
    assert [lim.name for lim in book.for_call("ollama", "llama3.2")] == ["ollama"]
    # A provider the book was never told about still gets a (limitless) limiter for pauses.
    assert [lim.name for lim in book.for_call("custom", "m")] == ["custom"]
    assert set(book.states()) == {"openai", "ollama", "custom", "openai/gpt-4o"}


async def test_per_model_limiter_applies_in_addition_to_the_provider_limiter() -> None:
    book = LimiterBook()
    book.configure({"openai": cfg(max_concurrent=2)}, {("openai", "gpt-4o"): cfg(max_concurrent=1)})
    first = await acquire_all(book.for_call("openai", "gpt-4o"))
    other = await acquire_all(book.for_call("openai", "gpt-4o-mini"))  # provider now full (2/2)
    second = asyncio.create_task(acquire_all(book.for_call("openai", "gpt-4o")))
    await settle()
    third = asyncio.create_task(acquire_all(book.for_call("openai", "gpt-4o-mini")))
    await settle()
    assert not second.done() and not third.done()
    assert book.states()["openai"]["queued"] == 1  # second waits on its model, third on the provider
    first.release()  # frees a model slot and a provider slot
    await settle()
    assert third.done()  # was first in the provider's queue
    assert not second.done()  # holds its model slot, now waits for the provider
    states = book.states()
    assert states["openai"]["inFlight"] == 2 and states["openai"]["queued"] == 1
    assert states["openai/gpt-4o"]["inFlight"] == 1 and states["openai/gpt-4o"]["queued"] == 0
    other.release()
    await settle()
    assert second.done()
    third.result().release()
    async with second.result():
        pass
    assert all(s["inFlight"] == 0 and s["queued"] == 0 for s in book.states().values())


async def test_acquire_all_refuses_up_front_when_any_limiter_would_wait_too_long() -> None:
    clock = FakeClock()
    book = LimiterBook(clock=clock)
    book.configure({"p": cfg(max_requests=1, window_ms=60_000)}, {("p", "m"): cfg(max_requests=10)})
    (await acquire_all(book.for_call("p", "m"))).release()
    with pytest.raises(RateLimitError) as caught:
        await acquire_all(book.for_call("p", "m"), max_wait_s=30)
    assert caught.value.retry_after_ms == 60_000 and caught.value.provider == "p"
    states = book.states()
    assert states["p/m"]["windowRequests"] == 1  # the model limiter was not charged for it
    assert states["p"]["queued"] == 0


async def test_acquire_all_undoes_earlier_permits_when_cancelled_on_a_later_limiter() -> None:
    clock = FakeClock()
    book = LimiterBook(clock=clock)
    book.configure({"p": cfg(max_concurrent=1)}, {("p", "m"): cfg(max_requests=5, window_ms=60_000)})
    held = await acquire_all(book.for_call("p", "other"))
    task = asyncio.create_task(acquire_all(book.for_call("p", "m"), 10))
    await settle()
    assert book.states()["p/m"]["inFlight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    model_state = book.states()["p/m"]
    assert model_state["inFlight"] == 0 and model_state["windowRequests"] == 0
    assert model_state["windowTokens"] == 0
    held.release()
    assert isinstance(held, Permits)


async def test_configure_keeps_unchanged_limiters_and_updates_changed_ones_in_place() -> None:
    clock = FakeClock()
    book = LimiterBook(clock=clock)
    book.configure({"a": cfg(max_requests=1, window_ms=10_000), "b": cfg(max_concurrent=1)},
                   {("a", "m"): cfg(max_concurrent=1)})
    (a,) = [lim for lim in book.for_call("a", "x")]
    permit = await a.acquire()
    a.pause_for(5_000, reason="retry-after")
    waiter = asyncio.create_task(a.acquire())
    model_waiter_holder = await book.for_call("a", "m")[0].acquire()
    model_waiter = asyncio.create_task(book.for_call("a", "m")[0].acquire())
    await settle()

    book.configure({"a": cfg(max_requests=1, window_ms=10_000), "b": cfg(max_concurrent=1)},
                   {("a", "m"): cfg(max_concurrent=1)})
    assert book.for_call("a", "x")[0] is a  # unchanged: same object, same live state
    state = a.state()
    assert state["inFlight"] == 1 and state["queued"] == 1 and state["windowRequests"] == 1
    assert state["pausedForMs"] == 5_000

    book.configure({"a": cfg(max_requests=3, window_ms=10_000)})  # a changed, b and a/m removed
    assert book.for_call("a", "x")[0] is a and a.state()["maxRequests"] == 3
    assert a.state()["pausedForMs"] == 5_000 and a.state()["inFlight"] == 1  # carried over
    assert set(book.states()) == {"a"}
    await settle()
    assert model_waiter.done()  # a removed limiter is opened up: nobody stays stranded on it
    assert not waiter.done()  # still paused
    clock.advance(5)
    a.wake()
    await settle()
    assert waiter.done()
    for p in (permit, waiter.result(), model_waiter_holder, model_waiter.result()):
        p.release()


async def test_pauses_and_snapshots_go_to_the_narrowest_limiter() -> None:
    clock = FakeClock()
    book = LimiterBook(clock=clock)
    book.configure({"openai": None}, {("openai", "gpt-4o"): cfg(max_concurrent=5)})
    book.pause_for("openai", "gpt-4o", 2_000, reason="retry-after")
    states = book.states()
    assert states["openai/gpt-4o"]["pausedForMs"] == 2_000
    assert states["openai"]["pausedForMs"] == 0  # other models keep going
    book.observe("openai", "gpt-4o-mini", RateLimitSnapshot(remaining_tokens=0, reset_tokens_ms=700))
    assert book.states()["openai"]["pausedForMs"] == 700
