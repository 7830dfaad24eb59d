"""Streams give their connection back: the end of the body is read after the terminator.

Breaking out at ``[DONE]`` / ``message_stop`` / ``done: true`` used to leave the chunked
body's end unread, and httpx closed the connection: each stream paid a new handshake.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import Reply
from tests.providers.conftest import Harness, run

pytestmark = pytest.mark.timeout(20)


async def test_sequential_streams_reuse_one_connection(harness: Harness) -> None:
    provider = harness.make()
    for round_ in range(3):
        harness.server.enqueue(Reply(text=f"answer {round_}"))
        result = await run(provider, harness.request(), streaming=True)
        assert result.content == f"answer {round_}"
        # The connection stays open, pooled: not closed at the end of the stream.
        assert harness.server.open_connections == 1
    assert len(harness.server.requests) == 3


async def test_connections_of_64_concurrent_calls_all_stay_pooled(harness: Harness) -> None:
    """A burst of 64 calls at once leaves 64 idle connections for the next burst (the pool
    keeps up to 100): none is closed and opened again, which cost a handshake and the
    server's accept on every tenth call at 64 in flight when only 50 were kept."""
    provider = harness.make()
    harness.server.set_default(Reply(text="hi", delay_s=0.3))
    for _burst in range(2):
        results = await asyncio.gather(*(run(provider, harness.request(), streaming=False) for _ in range(64)))
        assert {r.content for r in results} == {"hi"}
        assert harness.server.open_connections == 64
