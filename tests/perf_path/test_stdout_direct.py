"""Protocol lines go to a pipe with room straight from the event loop (no hop to the
writer thread and back); a full pipe still gets every line, whole and in order, from
the thread."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import orjson
import pytest

from sidecar.transport.stdio import LineWriter

pytestmark = pytest.mark.timeout(30)


def _reader(fd: int, out: bytearray, done: threading.Event) -> None:
    while chunk := os.read(fd, 65536):
        out += chunk
    done.set()


async def _run(messages: list[dict[str, Any]], *, hold_reader: bool) -> tuple[bytes, int]:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb", buffering=0)
    writer = LineWriter(stream)
    hops: list[int] = []
    write = writer._write

    def counting_write(data: bytes) -> None:
        hops.append(len(data))
        write(data)

    writer._write = counting_write  # type: ignore[method-assign]
    out = bytearray()
    done = threading.Event()
    reader = threading.Thread(target=_reader, args=(read_fd, out, done), daemon=True)
    if not hold_reader:
        reader.start()
    writer.start()
    for message in messages:
        await writer.send(message)
        await asyncio.sleep(0)  # one batch each (the writer takes what is queued)
    if hold_reader:
        await asyncio.sleep(0.2)  # the pipe fills; the thread blocks on the rest
        reader.start()
    await writer.drain_and_close(10)
    stream.close()
    assert done.wait(10)
    os.close(read_fd)
    return bytes(out), len(hops)


async def test_small_lines_to_a_pipe_with_room_skip_the_thread() -> None:
    messages = [{"jsonrpc": "2.0", "id": i, "result": {"content": "x" * 100}} for i in range(200)]
    out, hops = await _run(messages, hold_reader=False)
    assert [orjson.loads(line) for line in out.splitlines()] == messages
    assert hops == 0, f"{hops} batches went through the writer thread"


async def test_a_full_pipe_gets_every_line_whole_and_in_order() -> None:
    messages = [{"jsonrpc": "2.0", "id": i, "result": {"content": "y" * 3000}} for i in range(100)]
    out, hops = await _run(messages, hold_reader=True)  # 300 KB: more than a pipe holds
    assert [orjson.loads(line) for line in out.splitlines()] == messages
    assert hops > 0
