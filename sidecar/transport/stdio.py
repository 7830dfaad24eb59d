"""Bytes in, bytes out: the protocol's framing over the process's standard streams.

* :mod:`sidecar.transport.claim` has already moved the protocol pipes to private
  descriptors (fd 1 now points at stderr), so this module only sees file objects.
* :class:`LineReader` runs on a dedicated thread (asyncio's ``StreamReader`` fails on
  lines over 64 KiB, and pipes cannot be read asynchronously on Windows' proactor loop).
  It splits on the byte ``\\n`` only, bounds each line, and hands lines to the event loop
  through a bounded queue so a flooding host is slowed down instead of filling memory.
* :class:`LineWriter` is the only writer: one task drains a bounded queue and writes
  whole lines, flushing each batch, from a worker thread so a slow host blocks only it.
"""

from __future__ import annotations

import asyncio
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

__all__ = [
    "EOF",
    "EndOfInput",
    "LineReader",
    "LineWriter",
    "Oversized",
    "encode_message",
]

READ_CHUNK = 64 * 1024
#: Output is handed to the pipe in pieces this big, so progress is seen within a long line.
WRITE_CHUNK = 64 * 1024
#: A write that made no progress for this long means the host has stopped reading.
STALL_S = 0.25


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line longer than the limit was read and discarded up to its newline."""

    size: int


class EndOfInput:
    """The type of :data:`EOF`."""

    def __repr__(self) -> str:
        return "EOF"


#: Sentinel put on the inbox when stdin reaches end of file.
EOF = EndOfInput()

InboxItem = bytes | Oversized | EndOfInput


def _escape_line_separators(data: bytes) -> bytes:
    # orjson writes U+2028/U+2029 raw (valid JSON), but Node's readline splits lines on
    # them: escape both so every consumer sees one message per line.
    if b"\xe2\x80" in data:
        data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return data


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def encode_message(message: dict[str, Any]) -> bytes:
    """One protocol line: compact UTF-8 JSON, NaN as ``null``, U+2028/9 escaped, ``\\n``."""
    try:
        data = orjson.dumps(message)
    except TypeError:
        # Lone surrogates (e.g. from a provider's "\ud800") are not UTF-8: replace them
        # rather than emit a line Tauri would drop.
        data = orjson.dumps(_scrub(message), default=str)
    return _escape_line_separators(data) + b"\n"


class _Inbox(asyncio.Queue[InboxItem]):
    """The reader's queue: taking a line frees the reader's slot for the next one."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        super().__init__()
        self._slots = slots

    def get_nowait(self) -> InboxItem:  # asyncio.Queue.get() ends here too
        item = super().get_nowait()
        self._slots.release()
        return item


class LineReader:
    """Reads ``\\n``-terminated lines on a thread and feeds them to an asyncio queue."""

    def __init__(
        self,
        stream: BinaryIO,
        loop: asyncio.AbstractEventLoop,
        *,
        max_line_bytes: int,
        inbox_size: int = 64,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._loop = loop
        self._max = max_line_bytes
        # Called on the event loop as soon as the reader meets end of file, before the
        # EOF marker queues up behind lines the loop has not taken yet.
        self._on_eof = on_eof
        self._hangup_seen = False
        # At most ``inbox_size`` lines wait for the dispatcher: the reader takes a slot
        # before handing a line over and the inbox gives it back when the line is taken,
        # so a host that writes faster than we dispatch fills the pipe, not our memory.
        self._slots = threading.BoundedSemaphore(inbox_size)
        self.inbox: asyncio.Queue[InboxItem] = _Inbox(self._slots)
        self._thread = threading.Thread(target=self._run, name="stdin-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _put(self, item: InboxItem) -> bool:
        while not self._slots.acquire(timeout=0.1):
            # The loop is not taking lines (it waits for a host that does not read
            # stdout): an EOF behind the lines still in the pipe must be seen anyway.
            self._notice_hangup()
        try:
            # No waiting for the loop to take it (that was a task and a thread round trip
            # per line): the thread goes back to reading while the line is dispatched.
            self._loop.call_soon_threadsafe(self.inbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: the process is exiting
            return False
        return True

    def _notice_hangup(self) -> None:
        """Report EOF early when the host has closed its end of the pipe (POSIX poll)."""
        if self._on_eof is None or self._hangup_seen or not hasattr(select, "poll"):
            return
        try:
            poller = select.poll()
            poller.register(self._stream.fileno(), select.POLLIN)  # POLLHUP is always reported
            hangup = any(events & select.POLLHUP for _fd, events in poller.poll(0))
        except (OSError, ValueError):
            return
        if hangup:
            self._hangup_seen = True
            self._signal_eof()

    def _signal_eof(self) -> bool:
        if self._on_eof is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_eof)
            except RuntimeError:  # the loop is closed: the process is exiting
                return False
        return True

    def _run(self) -> None:
        buffer = bytearray()
        discarding = 0  # > 0 while skipping the rest of an oversized line
        while True:
            try:
                chunk = self._stream.read(READ_CHUNK)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                piece = chunk[start:] if nl < 0 else chunk[start:nl]
                if discarding:
                    discarding += len(piece)
                elif len(buffer) + len(piece) > self._max:
                    discarding = len(buffer) + len(piece)
                    buffer.clear()
                else:
                    buffer += piece
                if nl < 0:
                    break
                if discarding:
                    item: InboxItem = Oversized(discarding)
                    discarding = 0
                else:
                    item = bytes(buffer)
                    buffer.clear()
                if not self._put(item):
                    return
                start = nl + 1
        if not self._signal_eof():
            return
        if discarding:
            self._put(Oversized(discarding))
        elif buffer.strip():
            self._put(bytes(buffer))  # a last line without its newline still counts
        self._put(EOF)


def _room_poller(stream: BinaryIO) -> select.poll | None:
    """A poll object that says whether ``stream``'s pipe has room (None where there is
    no ``poll``, as on Windows, or no file descriptor)."""
    if not hasattr(select, "poll") or not hasattr(select, "PIPE_BUF"):
        return None  # pragma: no cover - Windows
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    room = select.poll()
    room.register(fd, select.POLLOUT)
    return room


class LineWriter:
    """The single writer of protocol lines; ``send`` waits when the host reads slowly."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        queue_size: int = 1024,
        on_broken_pipe: Callable[[], None] | None = None,
        scrub: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._stream = stream
        self._scrub = scrub
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_size)
        self._on_broken_pipe = on_broken_pipe
        self._task: asyncio.Task[None] | None = None
        # A thread of our own, not asyncio's default executor: asyncio.run joins that one
        # on exit, which would hang forever on a write to a host that stopped reading.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stdout-writer")
        self._closing = False
        #: When the piece being written was handed to the pipe (None: not writing).
        self._piece_since: float | None = None
        self.closed = False
        self._room = _room_poller(stream)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stdout-writer")

    def _encode(self, message: dict[str, Any]) -> bytes:
        data = encode_message(message)
        return self._scrub(data) if self._scrub is not None else data

    async def send(self, message: dict[str, Any]) -> None:
        """Queue one message; returns once it is queued (in order), not once written."""
        if self.closed:
            return
        await self._queue.put(self._encode(message))

    def post(self, message: dict[str, Any]) -> bool:
        """Queue one message without waiting; False (nothing queued) when the queue is full."""
        if self.closed:
            return True  # the host is gone: nothing will ever be written
        if self._queue.full():
            return False
        self._queue.put_nowait(self._encode(message))
        return True

    @property
    def pending(self) -> int:
        """Lines queued and not yet handed to the pipe."""
        return self._queue.qsize()

    def stalled(self) -> bool:
        """A write has made no progress for :data:`STALL_S`: the host is not reading."""
        since = self._piece_since
        return since is not None and time.monotonic() - since > STALL_S

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                self._piece_since = time.monotonic()
                written = self._stream.write(view[:WRITE_CHUNK])
                if written is None:  # pragma: no cover - non-blocking fd; ours is blocking
                    continue
                view = view[written:]
            self._stream.flush()
        finally:
            self._piece_since = None

    async def _run(self) -> None:
        while not (self._closing and self._queue.empty()):
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            # Write what is already queued in one syscall: lines stay whole and ordered.
            while not self._queue.empty() and len(batch) < 256:
                item = self._queue.get_nowait()
                if item is None:
                    await self._flush_batch(batch)
                    return
                batch.append(item)
            await self._flush_batch(batch)

    def _write_now(self, data: bytes) -> int:
        """Write ``data`` here, on the event loop, when the pipe takes it without blocking:
        at most ``PIPE_BUF`` bytes (POSIX writes those whole or not at all) and poll says
        there is room. Saves the hop to the writer thread and back for most batches;
        returns how much was written (0: the thread writes it)."""
        if self._room is None or len(data) > select.PIPE_BUF or not self._room.poll(0):
            return 0
        written = self._stream.write(data) or 0
        self._stream.flush()
        return written

    async def _flush_batch(self, batch: list[bytes]) -> None:
        if self.closed:
            return
        try:
            data = b"".join(batch)
            written = self._write_now(data)
            if written < len(data):
                await asyncio.get_running_loop().run_in_executor(self._thread, self._write, data[written:])
        except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
            self.closed = True
            if self._on_broken_pipe is not None:
                self._on_broken_pipe()

    async def drain_and_close(self, timeout: float) -> None:
        """Write everything queued so far, then stop (bounded by ``timeout`` seconds).

        Lines queued while it waits are written too; the writer stops once the queue is
        empty. It gives up early when the host has stopped reading (:meth:`stalled`);
        what the host does not take in time is left unwritten.
        """
        if self._task is None:
            return
        self._closing = True
        if self._queue.empty():
            self._queue.put_nowait(None)  # wake a writer waiting for its next line
        end = time.monotonic() + timeout
        while not self._task.done() and not self.stalled() and time.monotonic() < end:
            await asyncio.wait({self._task}, timeout=min(0.05, max(0.0, end - time.monotonic())))
        self._task.cancel()
