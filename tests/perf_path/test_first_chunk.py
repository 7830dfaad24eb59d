"""A stream's first chunk is handed to the writer before the relay reads on: the chunks
behind it are often already buffered, and relaying them first held the first one back."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.channels.generate import _Relay
from sidecar.transport.dispatcher import RequestContext


async def test_the_first_chunk_gets_the_writers_turn_before_the_relay_reads_on() -> None:
    order: list[tuple[str, int]] = []

    async def send(message: dict[str, Any]) -> None:
        seq = message["params"]["seq"]
        order.append(("queued", seq))
        # What the writer does when a line is queued: its turn comes at the loop's next pass.
        asyncio.get_running_loop().call_soon(order.append, ("written", seq))

    relay = _Relay(RequestContext(request_id=1, method="model:stream", send=send), json_format=False)
    for seq, text in enumerate(("Hel", "lo", "!")):
        await relay.sink(text, "m")
        order.append(("relay reads on", seq))
    await asyncio.sleep(0)
    assert order[:3] == [("queued", 0), ("written", 0), ("relay reads on", 0)]
    # Later chunks do not wait for the writer (under load it writes them in batches).
    assert order[3:] == [("queued", 1), ("relay reads on", 1), ("queued", 2), ("relay reads on", 2),
                         ("written", 1), ("written", 2)]
