"""Streams give their connection back: the end of the body is read after the terminator.

Breaking out at ``[DONE]`` / ``message_stop`` / ``done: true`` used to leave the chunked
body's end unread, and httpx closed the connection: each stream paid a new handshake.
"""

from __future__ import annotations

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
