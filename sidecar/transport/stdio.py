"""Bytes in, bytes out: the protocol's framing over the process's standard streams.

* :mod:`sidecar.transport.claim` has already moved the protocol pipes to private
  descriptors (fd 1 now points at stderr), so this module only sees file objects.
* :func:`open_reader` picks the reader, in one place. On POSIX, when the input is a pipe
  or a socket (what a host gives us), :class:`LoopLineReader` reads it on the event loop
  itself (``loop.add_reader`` on the non-blocking descriptor, ``os.read``): no thread and
  no wake-up of the loop per line. Elsewhere (Windows, whose proactor loop cannot watch a
  pipe; a regular file or a terminal; a loop that refuses the descriptor)
  :class:`LineReader` reads on a dedicated thread. asyncio's ``StreamReader`` is not used:
  it fails on lines over 64 KiB.
* Both split on the byte ``\\n`` only (never on U+2028), bound each line, and hold at
  most ``inbox_size`` lines for the dispatcher: past that they stop reading, so a flooding
  host fills the pipe, not our memory. Both report end of file (or a hang-up seen while
  they wait for room) through ``on_eof`` at once, ahead of the lines still queued.
* :class:`LineWriter` is the only writer: one task drains a bounded queue and writes each
  batch from the event loop as far as the pipe takes it at once (a pipe or socket is made
  non-blocking for that); a thread of its own writes the rest, so a slow host blocks only it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import orjson

__all__ = [
    "EOF",
    "WAKE",
    "EndOfInput",
    "LineReader",
    "LineSource",
    "LineWriter",
    "LoopLineReader",
    "Oversized",
    "WakeUp",
    "encode_message",
    "open_reader",
]

READ_CHUNK = 64 * 1024
#: While a reader waits for room in its inbox, it looks this often whether the host hung up.
HANGUP_POLL_S = 0.1
#: Output is handed to the pipe in pieces this big, so progress is seen within a long line.
WRITE_CHUNK = 64 * 1024
#: A write that made no progress for this long means the host has stopped reading.
STALL_S = 0.25
#: Bytes per second a host is taken to read at shutdown: a line is begun only if it can end
#: in time at this pace. Hosts reading a pipe took 4-6 MB lines in 3-12 ms here, even with
#: both cores of a 2-core machine busy elsewhere.
ASSUMED_READ_RATE = 64 * 1024 * 1024


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


class WakeUp:
    """The type of :data:`WAKE`."""

    def __repr__(self) -> str:
        return "WAKE"


#: Put on an inbox by its consumer to end its own wait for a line (e.g. at a stop). It
#: is not the reader's: it takes no slot of the bound.
WAKE = WakeUp()

InboxItem = bytes | Oversized | EndOfInput | WakeUp


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

    def __init__(self, on_take: Callable[[], None]) -> None:
        super().__init__()
        self._on_take = on_take

    def get_nowait(self) -> InboxItem:  # asyncio.Queue.get() ends here too
        item = super().get_nowait()
        if item is not WAKE:
            self._on_take()
        return item


class LineSource(Protocol):
    """What the serving loop uses of a reader."""

    inbox: asyncio.Queue[InboxItem]

    def start(self) -> None: ...

    def close(self) -> None: ...


def _hung_up(fd: int) -> bool:
    """The other end of ``fd`` is closed (POSIX ``poll``; False where there is none)."""
    if not hasattr(select, "poll"):
        return False  # pragma: no cover - Windows
    try:
        poller = select.poll()
        # POLLHUP is always reported; POLLRDHUP (Linux) also sees a socket's shut-down side.
        poller.register(fd, select.POLLIN | getattr(select, "POLLRDHUP", 0))
        hangup = select.POLLHUP | getattr(select, "POLLRDHUP", 0)
        return any(events & hangup for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False


class _Framer:
    """Cuts a byte stream into protocol lines, for both readers: split on the byte
    ``\\n`` only, each line bounded by ``max_bytes`` (the rest of a longer one is counted
    and dropped up to its newline, then reported as :class:`Oversized`)."""

    __slots__ = ("_buffer", "_discarding", "_max")

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buffer = bytearray()  # the start of a line cut by the end of a read
        self._discarding = 0  # > 0 while skipping the rest of an oversized line

    def step(self, chunk: bytes, start: int) -> tuple[InboxItem | None, int]:
        """The line that ends first in ``chunk[start:]`` and the position after its
        newline; ``(None, len(chunk))`` when the chunk ends inside a line (kept for the
        next chunk)."""
        nl = chunk.find(b"\n", start)
        end = len(chunk) if nl < 0 else nl
        size = end - start
        if self._discarding:
            self._discarding += size
        elif len(self._buffer) + size > self._max:
            self._discarding = len(self._buffer) + size
            self._buffer.clear()
        elif nl >= 0 and not self._buffer:
            return chunk[start:nl], nl + 1  # the common case: the line is inside one read
        else:
            self._buffer += chunk[start:end]
        if nl < 0:
            return None, len(chunk)
        item: InboxItem
        if self._discarding:
            item, self._discarding = Oversized(self._discarding), 0
        else:
            item = bytes(self._buffer)
            self._buffer.clear()
        return item, nl + 1

    def end(self) -> list[InboxItem]:
        """At end of file: an oversized line's report, or a last line without its newline
        (it still counts, unless blank)."""
        items: list[InboxItem] = []
        if self._discarding:
            items.append(Oversized(self._discarding))
        elif self._buffer.strip():
            items.append(bytes(self._buffer))
        self._buffer.clear()
        self._discarding = 0
        return items


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
        self.inbox: asyncio.Queue[InboxItem] = _Inbox(self._slots.release)
        self._thread = threading.Thread(target=self._run, name="stdin-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Nothing to undo: the daemon thread ends with the process."""

    def _put(self, item: InboxItem) -> bool:
        while not self._slots.acquire(timeout=HANGUP_POLL_S):
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
        if self._on_eof is None or self._hangup_seen:
            return
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            return
        if _hung_up(fd):
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
        framer = _Framer(self._max)
        while True:
            try:
                chunk = self._stream.read(READ_CHUNK)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            pos = 0
            while pos < len(chunk):
                item, pos = framer.step(chunk, pos)
                if item is not None and not self._put(item):
                    return
        if not self._signal_eof():
            return
        for item in (*framer.end(), EOF):
            self._put(item)


class LoopLineReader:
    """Reads ``\\n``-terminated lines on the event loop from a pipe or socket (POSIX).

    The same lines, bound, backpressure and end-of-file reports as :class:`LineReader`,
    without its thread: the loop calls :meth:`_on_readable` when the descriptor has
    bytes, and a line reaches the inbox with no hop between threads. The descriptor is
    made non-blocking (it is ours alone: :func:`sidecar.transport.claim.claim_stdio`
    duplicated it, non-inheritable, and pointed fd 0 elsewhere).
    """

    def __init__(
        self,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        *,
        max_line_bytes: int,
        inbox_size: int = 64,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self._fd = fd
        self._loop = loop
        self._on_eof = on_eof
        self._eof_reported = False
        self._room = inbox_size
        #: Lines handed over and not yet taken: reading stops at ``inbox_size``.
        self._queued = 0
        self.inbox: asyncio.Queue[InboxItem] = _Inbox(self._taken)
        self._chunk = b""  # the last read; lines after ``_pos`` wait for room
        self._pos = 0
        self._framer = _Framer(max_line_bytes)
        self._tail: list[InboxItem] | None = None  # once end of file was read: what is left to hand over
        self._reading = False
        self._pump_soon: asyncio.Handle | None = None
        self._hangup_check: asyncio.TimerHandle | None = None

    def start(self) -> None:
        os.set_blocking(self._fd, False)
        self._pump()

    def close(self) -> None:
        """Stop reading and give the descriptor back blocking (the flag belongs to the
        open pipe, which a process started after us on the same pipe may share)."""
        self._tail = []
        self._watch(False)
        for handle in (self._pump_soon, self._hangup_check):
            if handle is not None:
                handle.cancel()
        try:
            os.set_blocking(self._fd, True)
        except OSError:
            pass

    def _taken(self) -> None:
        self._queued -= 1
        if not self._reading and self._pump_soon is None and self._tail != []:
            # After the caller's turn, as the thread's next line would come: a caller that
            # empties the inbox in one go (the shutdown) sees only what was already queued.
            self._pump_soon = self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand over what was read while there is room; read more only when all is handed over."""
        self._pump_soon = None
        while self._queued < self._room:
            if self._pos < len(self._chunk):
                self._split_one()
            elif self._tail is not None:
                if not self._tail:
                    return  # everything, EOF included, was handed over
                self._put(self._tail.pop(0))
            else:
                self._watch(True)
                return
        self._watch(False)

    def _watch(self, reading: bool) -> None:
        if reading == self._reading:
            return
        self._reading = reading
        if reading:
            self._loop.add_reader(self._fd, self._on_readable)
            return
        self._loop.remove_reader(self._fd)
        if self._tail is None and self._hangup_check is None:
            # Full: the host may hang up behind the lines still in the pipe; see it anyway.
            self._hangup_check = self._loop.call_later(HANGUP_POLL_S, self._check_hangup)

    def _check_hangup(self) -> None:
        self._hangup_check = None
        if self._reading or self._tail is not None:
            return
        if _hung_up(self._fd):
            self._report_eof()
        else:
            self._hangup_check = self._loop.call_later(HANGUP_POLL_S, self._check_hangup)

    def _report_eof(self) -> None:
        if not self._eof_reported:
            self._eof_reported = True
            if self._on_eof is not None:
                self._on_eof()

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            self._chunk, self._pos = chunk, 0
        else:
            self._tail = [*self._framer.end(), EOF]
            self._watch(False)
            # Reported ahead of the lines still waiting in the inbox, as soon as it is seen.
            self._report_eof()
        self._pump()

    def _split_one(self) -> None:
        """Take the next line of the chunk to the inbox (a partial one waits in the framer)."""
        item, self._pos = self._framer.step(self._chunk, self._pos)
        if item is not None:
            self._put(item)

    def _put(self, item: InboxItem) -> None:
        self._queued += 1
        self.inbox.put_nowait(item)


def _own_pipe(stream: BinaryIO, other: BinaryIO | None) -> int | None:
    """``stream``'s descriptor when it may be made non-blocking and watched by the loop: a
    pipe or a socket on POSIX that is not also ``other`` (the protocol's other direction).
    None otherwise: Windows, a regular file (epoll refuses it), a terminal (left blocking
    for the user), or one socket for stdin and stdout (socat's default: non-blocking is a
    flag of the open file, so it would make the other direction's blocking calls fail)."""
    if sys.platform == "win32":  # pragma: no cover - the proactor loop cannot watch pipes
        return None
    try:
        fd = stream.fileno()
        info = os.fstat(fd)
        shared = os.fstat(other.fileno()) if other is not None else None
    except (AttributeError, OSError, ValueError):
        return None
    if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode)):
        return None
    if shared is not None and (shared.st_dev, shared.st_ino) == (info.st_dev, info.st_ino):
        return None
    return fd


def _loop_can_watch(stream: BinaryIO, loop: asyncio.AbstractEventLoop, output: BinaryIO | None) -> int | None:
    """``stream``'s descriptor when the loop can read it itself (:func:`_own_pipe`, and a
    selector loop that accepts it)."""
    fd = _own_pipe(stream, output)
    if fd is None:
        return None
    try:
        loop.add_reader(fd, lambda: None)
        loop.remove_reader(fd)
    except (NotImplementedError, OSError, ValueError, RuntimeError):
        return None
    return fd


def open_reader(
    stream: BinaryIO,
    loop: asyncio.AbstractEventLoop,
    *,
    max_line_bytes: int,
    inbox_size: int = 64,
    on_eof: Callable[[], None] | None = None,
    output: BinaryIO | None = None,
) -> LoopLineReader | LineReader:
    """The reader for ``stream``: on the loop when it can watch the descriptor, else a
    thread. ``output`` is the protocol output, if it may be the same socket."""
    fd = _loop_can_watch(stream, loop, output)
    if fd is not None:
        return LoopLineReader(fd, loop, max_line_bytes=max_line_bytes, inbox_size=inbox_size, on_eof=on_eof)
    return LineReader(stream, loop, max_line_bytes=max_line_bytes, inbox_size=inbox_size, on_eof=on_eof)


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
    """The single writer of protocol lines; ``send`` waits when the host reads slowly.

    Each batch is written from the event loop as far as the pipe takes it at once: on a
    pipe or socket (POSIX) the descriptor is non-blocking, so any amount; elsewhere at
    most ``PIPE_BUF`` bytes when poll says there is room. The rest, if any, is written by
    a thread of its own, which waits for room with the GIL released (a slow host, or a
    big answer while another thread keeps the interpreter busy, blocks only it).

    At shutdown (:meth:`drain_and_close`) a line is written whole or not at all: one that
    was begun is finished, and one that could not be finished by the deadline is not
    begun.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        queue_size: int = 1024,
        on_broken_pipe: Callable[[], None] | None = None,
        scrub: Callable[[bytes], bytes] | None = None,
        source: BinaryIO | None = None,
    ) -> None:
        """``source``: the protocol input, when it may be the same socket as ``stream``."""
        self._stream = stream
        #: Made non-blocking and written from the loop as far as it takes (see :func:`_own_pipe`).
        self._fd = _own_pipe(stream, source)
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
        #: The writer thread's job for the batch being written (done once all is out).
        self._rest: Future[None] | None = None
        #: Set by drain_and_close: no batch begins after ``_begin_by``; one that begins
        #: must be able to end by ``_end_by`` (monotonic seconds).
        self._begin_by: float | None = None
        self._end_by = 0.0
        #: Lines taken off the queue at shutdown and left unwritten.
        self._left = 0
        self.closed = False
        self._room = _room_poller(stream)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._fd is not None and self._room is not None:
            try:
                os.set_blocking(self._fd, False)
            except OSError:
                self._fd = None
        else:
            self._fd = None
        self._task = loop.create_task(self._run(), name="stdout-writer")

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
        return self._queue.qsize() + self._left

    def stalled(self) -> bool:
        """A write has made no progress for :data:`STALL_S`: the host is not reading."""
        since = self._piece_since
        return since is not None and time.monotonic() - since > STALL_S

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                self._piece_since = time.monotonic()
                if self._fd is not None:
                    written: int | None = self._write_when_room(view[:WRITE_CHUNK])
                else:
                    written = self._stream.write(view[:WRITE_CHUNK])
                if written is None:  # pragma: no cover - a blocking stream always says how much
                    continue
                view = view[written:]
            self._stream.flush()
        finally:
            self._piece_since = None

    async def _run(self) -> None:
        try:
            while not (self._closing and self._queue.empty()):
                first = await self._queue.get()
                if first is None:
                    return
                batch = [first]
                # Write what is already queued in one syscall: lines stay whole and ordered.
                end = False
                while not self._queue.empty() and len(batch) < 256:
                    item = self._queue.get_nowait()
                    if item is None:
                        end = True
                        break
                    batch.append(item)
                if self._begin_by is not None:
                    begun = self._may_begin(batch)
                    if begun < len(batch):  # too late for the rest: never a line cut at exit
                        self._left = len(batch) - begun
                        if begun:
                            await self._flush_batch(batch[:begun])
                        return
                await self._flush_batch(batch)
                if end:
                    return
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):  # blocking again for whoever writes after us
                    os.set_blocking(self._fd, True)

    def _write_at_once(self, data: bytes) -> int:
        """On the non-blocking descriptor: what the pipe takes now, without waiting."""
        assert self._fd is not None
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def _write_when_room(self, piece: memoryview) -> int:
        """The thread's write on the non-blocking descriptor: wait (GIL released) until
        the pipe has room, then write what it takes."""
        assert self._fd is not None and self._room is not None
        while not self._room.poll(100):
            pass
        try:
            return os.write(self._fd, piece)
        except BlockingIOError:
            return 0

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

    def _may_begin(self, batch: list[bytes]) -> int:
        """At shutdown: how many lines of ``batch`` to begin, in order. None once the time
        to begin is over; otherwise as many as a host reading at :data:`ASSUMED_READ_RATE`
        takes by the deadline."""
        now = time.monotonic()
        assert self._begin_by is not None
        if now >= self._begin_by:
            return 0
        room = (self._end_by - now) * ASSUMED_READ_RATE
        for count, line in enumerate(batch):
            room -= len(line)
            if room < 0:
                return count
        return len(batch)

    @property
    def writing(self) -> bool:
        """Part of a batch is in the pipe and the thread is still writing the rest."""
        return self._rest is not None and not self._rest.done()

    async def _flush_batch(self, batch: list[bytes]) -> None:
        if self.closed:
            return
        try:
            data = b"".join(batch)
            written = self._write_at_once(data) if self._fd is not None else self._write_now(data)
            if written < len(data):
                # Kept: a cancel of this task does not stop the thread, and the shutdown
                # waits for this job so that the exit does not cut the line.
                self._rest = self._thread.submit(self._write, data[written:])
                await asyncio.shield(asyncio.wrap_future(self._rest))
        except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
            self.closed = True
            if self._on_broken_pipe is not None:
                self._on_broken_pipe()

    async def drain_and_close(self, timeout: float, *, grace: float = 0.0) -> None:
        """Write everything queued so far, then stop.

        Lines queued while it waits are written too; the writer stops once the queue is
        empty. No line begins after ``timeout`` seconds, nor one that a host reading at
        :data:`ASSUMED_READ_RATE` could not take within ``timeout + grace``. A line begun
        is waited for until then, so that the exit that follows does not cut it. It gives
        up early when the host has stopped reading (:meth:`stalled`); what is not written
        is left unwritten (:attr:`pending`).
        """
        if self._task is None:
            return
        now = time.monotonic()
        end = now + timeout
        self._begin_by, self._end_by = end, end + grace
        self._closing = True
        if self._queue.empty():
            self._queue.put_nowait(None)  # wake a writer waiting for its next line
        while not self._task.done() and not self.stalled() and time.monotonic() < end:
            await asyncio.wait({self._task}, timeout=min(0.05, max(0.0, end - time.monotonic())))
        # A line begun is finished, while the host reads; then the writer stops, as no line
        # may begin any more.
        while self.writing and not self._task.done() and not self.stalled() and time.monotonic() < self._end_by:
            await asyncio.wait({self._task}, timeout=min(0.05, max(0.0, self._end_by - time.monotonic())))
        self._task.cancel()
