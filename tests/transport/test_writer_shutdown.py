"""At shutdown the stdout writer writes a line whole or not at all.

The exit that follows ``drain_and_close`` kills the writer thread wherever it is, so a
line it is still writing would reach the host cut (no newline, then EOF); what is in the
pipe by then survives the exit. Each test runs a real pipe with a reader thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import struct
import termios
import threading
import time

import orjson
import pytest

from sidecar.transport.stdio import ASSUMED_READ_RATE, LineWriter

pytestmark = pytest.mark.timeout(30)


class _Host:
    """Reads the pipe in a thread: ``pause_s`` first, then ``piece`` bytes every ``every_s``."""

    def __init__(self, fd: int, *, pause_s: float = 0.0, piece: int = 65536, every_s: float = 0.0) -> None:
        self.fd, self.pause_s, self.piece, self.every_s = fd, pause_s, piece, every_s
        self.data = bytearray()
        self.done = threading.Event()
        self._lock = threading.Lock()  # a read and its append, seen together by delivered()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        time.sleep(self.pause_s)
        while True:
            select.select([self.fd], [], [])  # wait outside the lock; the read below cannot block
            with self._lock:
                chunk = os.read(self.fd, self.piece)
                self.data += chunk
            if not chunk:
                break
            if self.every_s:
                time.sleep(self.every_s)
        self.done.set()

    def delivered(self) -> int:
        """Bytes the writer has handed to the pipe so far: read, or waiting in the pipe."""
        with self._lock:
            waiting = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            return len(self.data) + waiting

    def lines(self) -> list[object]:
        return [orjson.loads(line) for line in bytes(self.data).split(b"\n")[:-1]]


def _pipe() -> tuple[LineWriter, int, int]:
    read_fd, write_fd = os.pipe()
    writer = LineWriter(os.fdopen(write_fd, "wb", buffering=0))
    writer.start()
    return writer, read_fd, write_fd


def _finish(writer: LineWriter, host: _Host, read_fd: int, write_fd: int) -> None:
    """What the exit does to the pipe: closed once drain_and_close returned."""
    writer._stream.close()
    assert host.done.wait(10)
    os.close(read_fd)


async def test_a_line_begun_before_the_deadline_is_finished_before_drain_returns() -> None:
    writer, read_fd, write_fd = _pipe()
    host = _Host(read_fd, piece=65536, every_s=0.01)  # ~6 MB/s: a 2 MB line takes ~0.3 s
    big = {"jsonrpc": "2.0", "id": "big", "result": "x" * 2_000_000}
    await writer.send(big)
    await asyncio.sleep(0.02)  # begun: the pipe took what it holds, the thread writes the rest
    assert writer.writing
    started = time.monotonic()
    await writer.drain_and_close(0.05, grace=5.0)
    delivered = host.delivered()  # the moment the process would exit
    assert delivered == len(orjson.dumps(big)) + 1, f"drain_and_close returned with {delivered} bytes of the line out"
    assert time.monotonic() - started < 2.0, "it waited for the line, not for the whole grace"
    _finish(writer, host, read_fd, write_fd)
    assert host.lines() == [big]


async def test_a_line_that_cannot_end_in_time_is_not_begun() -> None:
    writer, read_fd, write_fd = _pipe()
    host = _Host(read_fd)
    small = [{"jsonrpc": "2.0", "id": i, "result": "ok"} for i in range(2)]
    # More than a host at the assumed pace takes in the 20 ms left.
    huge = {"jsonrpc": "2.0", "id": "huge", "result": "y" * (ASSUMED_READ_RATE // 20)}
    after = {"jsonrpc": "2.0", "id": "after", "result": "ok"}
    for message in (*small, huge, after):
        await writer.send(message)  # queued; the writer has not run yet
    await writer.drain_and_close(0.01, grace=0.01)
    assert not writer.writing
    _finish(writer, host, read_fd, write_fd)
    assert host.lines() == small, "the lines before it are written, it and the ones after are not"
    assert bytes(host.data).endswith(b"\n")
    assert writer.pending == 2


async def test_no_line_begins_once_the_time_to_begin_is_over() -> None:
    writer, read_fd, write_fd = _pipe()
    host = _Host(read_fd, pause_s=0.15)  # reads nothing for 150 ms (less than a stall)
    first = {"jsonrpc": "2.0", "id": "first", "result": "a" * 300_000}  # more than the pipe holds
    await writer.send(first)
    await asyncio.sleep(0.01)
    assert writer.writing
    late = {"jsonrpc": "2.0", "id": "late", "result": "b"}
    await writer.send(late)  # queued behind the line being written
    await writer.drain_and_close(0.05, grace=2.0)
    _finish(writer, host, read_fd, write_fd)
    assert host.lines() == [first], "the line begun is finished; the one queued behind it does not begin"
    assert writer.pending == 1
