"""Closing or cancelling a stream closes the upstream HTTP request.

The fake server sets ``RecordedRequest.disconnected`` when the client goes away
before the response was fully written; that is the observable proof that the
``async with client.stream(...)`` inside the generator was exited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import cast

import pytest

from sidecar.providers.base import StreamDelta
from tests.fakes import Reply
from tests.providers.conftest import Harness, run

pytestmark = pytest.mark.timeout(20)

SLOW = Reply(chunks=[f" piece{i}" for i in range(40)], chunk_delay_s=0.05)


async def _wait(event_is_set: Callable[[], bool], within_s: float = 3.0) -> bool:
    """Poll a threading.Event (set by the server thread) without blocking the loop."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not event_is_set():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_aclose_after_first_delta_disconnects_upstream(harness: Harness) -> None:
    harness.server.enqueue(SLOW)
    stream = cast(AsyncGenerator[StreamDelta, None], harness.make().stream(harness.request()))
    first = await anext(stream)
    assert first.content == " piece0"
    await stream.aclose()
    (recorded,) = harness.server.requests
    assert await _wait(recorded.disconnected.is_set)
    assert not recorded.completed.is_set()


async def test_cancelling_the_consumer_task_disconnects_upstream(harness: Harness) -> None:
    harness.server.enqueue(SLOW)
    provider = harness.make()
    received: list[str] = []
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for delta in provider.stream(harness.request()):
            received.append(delta.content)
            first_delta.set()

    task = asyncio.create_task(consume())
    await first_delta.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (recorded,) = harness.server.requests
    assert await _wait(recorded.disconnected.is_set)
    assert len(received) < 40


async def test_cancelling_while_waiting_for_headers_disconnects_upstream(harness: Harness) -> None:
    harness.server.enqueue(Reply(delay_s=5))
    provider = harness.make()

    async def consume() -> None:
        async for _ in provider.stream(harness.request()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.to_thread(harness.server.wait_for_requests, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (recorded,) = harness.server.requests
    assert await _wait(recorded.disconnected.is_set)


async def test_finished_stream_completes_and_provider_stays_usable(harness: Harness) -> None:
    provider = harness.make()
    harness.server.enqueue(SLOW, Reply(text="second"))
    stream = cast(AsyncGenerator[StreamDelta, None], provider.stream(harness.request()))
    await anext(stream)
    await stream.aclose()
    result = await run(provider, harness.request(), streaming=True)
    assert result.content == "second"
    first, second = harness.server.requests
    assert await _wait(first.disconnected.is_set)
    assert await _wait(second.completed.is_set)
    assert not second.disconnected.is_set()


async def test_closing_the_provider_closes_its_connections(harness: Harness) -> None:
    provider = harness.make()
    await run(provider, harness.request(), streaming=False)
    await provider.aclose()
    assert await asyncio.to_thread(harness.server.wait_for_connections, 0)
