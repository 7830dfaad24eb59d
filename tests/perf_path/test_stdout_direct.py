"""Protocol lines go to a pipe from the event loop itself (a non-blocking descriptor: no
hop to the writer thread and back, whatever the size, while the pipe has room); a full
pipe still gets every line, whole and in order, the thread writing the rest as room
appears. Elsewhere (a regular file) the loop writes at most PIPE_BUF at once."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from typing import Any

import orjson
import pytest

from sidecar.transport.stdio import STALL_S, LineWriter

pytestmark = pytest.mark.timeout(30)


def _reader(fd: int, out: bytearray, done: threading.Event) -> None:
    while chunk := os.read(fd, 65536):
        out += chunk
    done.set()


class _Counted:
    """Counts the batches (and bytes) the writer hands to its thread."""

    def __init__(self, writer: LineWriter) -> None:
        self.hops: list[int] = []
        write = writer._write

        def counting_write(data: bytes) -> None:
            self.hops.append(len(data))
            write(data)

        writer._write = counting_write  # type: ignore[method-assign]


async def _run(messages: list[dict[str, Any]], *, hold_reader: bool) -> tuple[bytes, _Counted, int]:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb", buffering=0)
    writer = LineWriter(stream)
    counted = _Counted(writer)
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
        await asyncio.sleep(0.2)  # the pipe fills; the loop waits for room
        reader.start()
    await writer.drain_and_close(10)
    await asyncio.sleep(0)  # the writer task ends
    blocking = os.get_blocking(write_fd)
    stream.close()
    assert done.wait(10)
    os.close(read_fd)
    return bytes(out), counted, blocking


@pytest.mark.parametrize("size", [100, 20_000])  # 20 KB: more than PIPE_BUF, less than the pipe holds
async def test_lines_to_a_pipe_with_room_are_written_from_the_loop(size: int) -> None:
    messages = [{"jsonrpc": "2.0", "id": i, "result": {"content": "x" * size}} for i in range(200 if size < 1000 else 2)]
    out, counted, blocking = await _run(messages, hold_reader=False)
    assert [orjson.loads(line) for line in out.splitlines()] == messages
    assert counted.hops == [], f"{len(counted.hops)} batches went through the writer thread"
    assert blocking, "the descriptor is left blocking once the writer stops"


async def test_a_full_pipe_gets_every_line_whole_and_in_order() -> None:
    messages = [{"jsonrpc": "2.0", "id": i, "result": {"content": "y" * 3000}} for i in range(100)]
    out, counted, _ = await _run(messages, hold_reader=True)  # 300 KB: more than a pipe holds
    assert [orjson.loads(line) for line in out.splitlines()] == messages
    assert counted.hops, "a full pipe: the rest of a batch goes to the thread, which waits for room"


async def test_a_host_that_stops_reading_is_seen_as_stalled_and_left() -> None:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb", buffering=0)
    writer = LineWriter(stream)
    writer.start()
    try:
        for i in range(40):  # 400 KB, never read
            await writer.send({"id": i, "result": "z" * 10_000})
        await asyncio.sleep(STALL_S + 0.2)
        assert writer.stalled()
        started = time.monotonic()
        await writer.drain_and_close(10)
        assert time.monotonic() - started < 1, "drain_and_close waited for a host that does not read"
        assert writer.pending > 0  # what the host did not take is left unwritten
    finally:
        stream.close()
        os.close(read_fd)


async def test_a_closed_pipe_stops_the_writer_and_says_so() -> None:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb", buffering=0)
    broken: list[bool] = []
    writer = LineWriter(stream, on_broken_pipe=lambda: broken.append(True))
    writer.start()
    os.close(read_fd)
    await writer.send({"id": 1, "result": "gone"})
    for _ in range(100):
        if broken:
            break
        await asyncio.sleep(0.01)
    assert broken == [True] and writer.closed
    await writer.drain_and_close(1)
    stream.close()


async def test_a_regular_file_is_written_by_the_thread_when_it_must() -> None:
    with tempfile.TemporaryFile() as file:
        writer = LineWriter(file)
        counted = _Counted(writer)
        writer.start()
        messages = [{"id": i, "result": "w" * 6000} for i in range(5)]  # each batch > PIPE_BUF
        for message in messages:
            await writer.send(message)
            await asyncio.sleep(0)
        await writer.drain_and_close(10)
        file.seek(0)
        assert [orjson.loads(line) for line in file.read().splitlines()] == messages
        assert counted.hops  # batches over PIPE_BUF went through the thread
