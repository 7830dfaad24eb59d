"""The protocol input readers over real pipes: framing, bound, backpressure, end of file.

:class:`LoopLineReader` (on the event loop, for pipes and sockets) must hand over exactly
what :class:`LineReader` (the thread, the fallback) does; :func:`open_reader` picks one.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.transport.dispatcher import Dispatcher
from sidecar.transport.stdio import (
    EOF,
    READ_CHUNK,
    WAKE,
    InboxItem,
    LineReader,
    LoopLineReader,
    Oversized,
    open_reader,
)
from tests.stdio.harness import REPO, clean_env, sidecar_command

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the loop reader is POSIX only")


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


class Eofs:
    """Counts ``on_eof`` calls and remembers when the first came."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None
        self.seen = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.first is None:
            self.first = time.monotonic()
        self.seen.set()


def loop_reader(fd: int, *, max_line_bytes: int = 1 << 20, inbox_size: int = 64,
                on_eof: Callable[[], None] | None = None) -> LoopLineReader:
    reader = open_reader(os.fdopen(fd, "rb", buffering=0, closefd=False), asyncio.get_running_loop(),
                         max_line_bytes=max_line_bytes, inbox_size=inbox_size, on_eof=on_eof)
    assert isinstance(reader, LoopLineReader)
    reader.start()
    return reader


async def take(inbox: asyncio.Queue[InboxItem], n: int, timeout: float = 5) -> list[InboxItem]:
    return [await asyncio.wait_for(inbox.get(), timeout) for _ in range(n)]


async def take_all(inbox: asyncio.Queue[InboxItem], timeout: float = 10) -> list[InboxItem]:
    """Every item up to and including EOF."""
    items: list[InboxItem] = []
    while not items or items[-1] is not EOF:
        items.append(await asyncio.wait_for(inbox.get(), timeout))
    return items


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- framing ---------------------------------------------------------------------------


async def test_lines_split_across_reads_are_joined(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = loop_reader(r)
    for piece in (b'{"a":', b"1}\n", b'{"b":2}\n{"c"', b":", b"3}\n\n"):
        os.write(w, piece)
        await asyncio.sleep(0.01)  # each piece is its own read
    os.close(w)
    assert await take_all(reader.inbox) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b"", EOF]


async def test_u2028_and_u2029_stay_inside_the_line(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = loop_reader(r)
    line = '{"prompt":"a\u2028b\u2029c\r"}'.encode()
    os.write(w, line + b"\n" + b"next\n")
    os.close(w)
    assert await take_all(reader.inbox) == [line, b"next", EOF]


async def test_an_oversized_line_is_dropped_and_the_next_one_is_read(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = loop_reader(r, max_line_bytes=100)
    os.write(w, b"x" * 70)
    await asyncio.sleep(0.01)
    os.write(w, b"y" * 70 + b"\nok\n" + b"z" * 100 + b"\n" + b"w" * 500 + b"\n")
    os.close(w)
    assert await take_all(reader.inbox) == [Oversized(140), b"ok", b"z" * 100, Oversized(500), EOF]


async def test_a_line_over_64_kib_within_the_limit_is_read_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = loop_reader(r, max_line_bytes=1 << 20)
    big = b'{"p":"' + bytes(random.Random(1).choice(b"abc\xe2\x80\xa8") for _ in range(300_000)) + b'"}'
    assert len(big) > 4 * READ_CHUNK
    writer = threading.Thread(target=lambda: (write_all(w, big + b"\nafter\n"), os.close(w)))
    writer.start()
    items = await take_all(reader.inbox)
    writer.join()
    assert items == [big, b"after", EOF]


@pytest.mark.parametrize(("tail", "expected"), [
    (b"last", [b"last"]),
    (b"  \t", []),  # only blanks: nothing, as the thread reader does
    (b"q" * 200, [Oversized(200)]),
])
async def test_a_last_line_without_its_newline_still_counts(pipe: tuple[int, int], tail: bytes,
                                                            expected: list[InboxItem]) -> None:
    r, w = pipe
    eofs = Eofs()
    reader = loop_reader(r, max_line_bytes=100, on_eof=eofs)
    os.write(w, b"first\n" + tail)
    os.close(w)
    assert await take_all(reader.inbox) == [b"first", *expected, EOF]
    assert eofs.calls == 1


async def test_a_socket_is_read_on_the_loop_too() -> None:
    ours, host = socket.socketpair()
    with ours, host:
        reader = loop_reader(ours.fileno())
        host.sendall(b"one\ntwo")
        host.shutdown(socket.SHUT_WR)
        assert await take_all(reader.inbox) == [b"one", b"two", EOF]


# -- the same items as the thread reader --------------------------------------------------


def _random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(1, 60)):
        size = rng.choice([0, 1, 5, 40, 49, 50, 51, 120, 3000])
        parts.append(bytes(rng.choice(b"ab \r\xe2\x80\xa8\xa9{}") for _ in range(size)))
    data = b"\n".join(parts)
    return data + rng.choice([b"", b"\n", b"\n\n", b"  "])


def _thread_items(data: bytes, max_line_bytes: int) -> list[InboxItem]:
    async def run() -> list[InboxItem]:
        r, w = os.pipe()
        with os.fdopen(r, "rb", buffering=0) as stream:
            reader = LineReader(stream, asyncio.get_running_loop(), max_line_bytes=max_line_bytes, inbox_size=3)
            reader.start()
            threading.Thread(target=lambda: (write_all(w, data), os.close(w))).start()
            return await take_all(reader.inbox)

    return asyncio.run(run())


@pytest.mark.parametrize("seed", range(12))
async def test_random_streams_give_what_the_thread_reader_gives(pipe: tuple[int, int], seed: int) -> None:
    rng = random.Random(seed)
    data = _random_stream(rng)
    expected = await asyncio.to_thread(_thread_items, data, 50)
    r, w = pipe
    reader = loop_reader(r, max_line_bytes=50, inbox_size=3)
    pieces = []
    at = 0
    while at < len(data):
        step = rng.choice([1, 7, 50, 51, 4096])
        pieces.append(data[at:at + step])
        at += step

    pauses = random.Random(seed + 1000)

    def feed() -> None:
        for piece in pieces:
            write_all(w, piece)
            if pauses.random() < 0.1:
                time.sleep(0.001)
        os.close(w)

    writer = threading.Thread(target=feed)
    writer.start()
    items = []
    while not items or items[-1] is not EOF:
        assert reader.inbox.qsize() <= 3
        items.append(await asyncio.wait_for(reader.inbox.get(), 10))
        if rng.random() < 0.2:
            await asyncio.sleep(0.001)
    writer.join()
    assert items == expected


# -- backpressure and end of file -------------------------------------------------------


async def _fill(w: int, line: bytes) -> int:
    """Write ``line`` until the pipe takes no more, even after the reader had its turns."""
    written = 0
    os.set_blocking(w, False)
    for _ in range(10):
        try:
            while True:
                written += os.write(w, line)
                assert written < 16 << 20, "16 MiB went in: the reader never stopped reading"
        except BlockingIOError:
            pass
        await asyncio.sleep(0.05)  # the reader may now empty the pipe, if it still reads
        try:
            written += os.write(w, line)
        except BlockingIOError:
            return written
    raise AssertionError("the pipe never stayed full")


async def test_a_full_inbox_stops_reading_and_taking_lines_resumes(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = loop_reader(r, inbox_size=4)
    line = b'{"jsonrpc":"2.0","method":"x"}\n'
    written = await _fill(w, line)
    # The host's pipe is full and we hold only our bound (plus at most one read).
    assert reader.inbox.qsize() == 4
    assert written >= 60_000 // len(line)  # the pipe's own capacity, whatever the kernel
    taken = await take(reader.inbox, 4)
    await asyncio.sleep(0.05)
    assert reader.inbox.qsize() == 4  # refilled to the bound, no further
    # Take enough that the reader must go back to the pipe: the host can write again.
    taken += await take(reader.inbox, READ_CHUNK // len(line) + 100)
    await asyncio.sleep(0.05)
    os.write(w, line)
    os.set_blocking(w, True)
    os.close(w)
    rest = await take_all(reader.inbox)
    assert [*taken, *rest] == [line[:-1]] * (written // len(line) + 1) + [EOF]


async def test_eof_is_reported_while_the_inbox_is_full(pipe: tuple[int, int]) -> None:
    r, w = pipe
    eofs = Eofs()
    reader = loop_reader(r, inbox_size=2, on_eof=eofs)
    line = b"not json\n"
    written = await _fill(w, line)
    assert not eofs.seen.is_set()
    closed = time.monotonic()
    os.close(w)  # the host hangs up: its last lines are still in the pipe
    await asyncio.wait_for(eofs.seen.wait(), 2)
    assert eofs.first is not None and eofs.first - closed < 0.5
    assert reader.inbox.qsize() == 2  # nobody took a line meanwhile
    items = await take_all(reader.inbox)
    assert items == [line[:-1]] * (written // len(line)) + [EOF]
    assert eofs.calls == 1


async def test_a_stop_ends_the_read_loop_while_it_waits_for_a_line(pipe: tuple[int, int]) -> None:
    from sidecar.app import _read_loop

    r, w = pipe
    reader = loop_reader(r)
    dispatcher = Dispatcher(channels={}, send=_no_send, post=lambda _m: True)
    stop, closed = asyncio.Event(), asyncio.Event()
    loop_task = asyncio.create_task(_read_loop(reader, dispatcher, stop, closed))
    await asyncio.sleep(0.05)
    assert not loop_task.done()
    stop.set()
    assert await asyncio.wait_for(loop_task, 1) == "shutdown"
    # A wake-up left in the inbox (a stop that came as a line did) is skipped; EOF ends the loop.
    reader.inbox.put_nowait(WAKE)
    os.close(w)
    assert await asyncio.wait_for(_read_loop(reader, dispatcher, asyncio.Event(), closed), 2) == "eof"


async def _no_send(_message: dict[str, Any]) -> None:
    return None


# -- which reader -----------------------------------------------------------------------


async def test_a_regular_file_is_read_by_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "input"
    path.write_bytes(b"one\ntwo\nthree")
    with path.open("rb", buffering=0) as stream:
        reader = open_reader(stream, asyncio.get_running_loop(), max_line_bytes=100)
        assert isinstance(reader, LineReader)
        reader.start()
        assert await take_all(reader.inbox) == [b"one", b"two", b"three", EOF]


async def test_one_socket_for_both_directions_is_read_by_the_thread() -> None:
    # O_NONBLOCK belongs to the open socket: set for reading, it would break the writer's
    # blocking writes on the same socket.
    ours, host = socket.socketpair()
    with ours, host, os.fdopen(os.dup(ours.fileno()), "wb", buffering=0) as out:
        stream = os.fdopen(os.dup(ours.fileno()), "rb", buffering=0)
        reader = open_reader(stream, asyncio.get_running_loop(), max_line_bytes=100, output=out)
        assert isinstance(reader, LineReader)
        reader.start()
        host.sendall(b"one\n")
        host.shutdown(socket.SHUT_WR)
        assert await take_all(reader.inbox) == [b"one", EOF]
        assert os.get_blocking(ours.fileno())
        stream.close()


async def test_close_stops_reading_and_gives_the_pipe_back_blocking(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = loop_reader(r)
    os.write(w, b"one\n")
    assert await take(reader.inbox, 1) == [b"one"]
    assert not os.get_blocking(r)
    reader.close()
    assert os.get_blocking(r)
    os.write(w, b"two\n")
    await asyncio.sleep(0.05)
    assert reader.inbox.empty()
    assert os.read(r, 100) == b"two\n"  # left in the pipe


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs Linux /proc")
def test_the_sidecar_reads_its_pipe_on_the_loop_and_no_child_inherits_it(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.Popen([*sidecar_command(), "--data-dir", str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert b"sidecar:ready" in proc.stdout.readline()
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"model:get-config"}\n')
        proc.stdin.flush()
        assert b'"id":1' in proc.stdout.readline()
        ours = os.readlink(f"/proc/self/fd/{proc.stdin.fileno()}")  # pipe:[inode]
        flags = []
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            try:
                if os.readlink(f"/proc/{proc.pid}/fd/{fd}") != ours:
                    continue
                info = Path(f"/proc/{proc.pid}/fdinfo/{fd}").read_text()
            except OSError as exc:
                assert exc.errno == errno.ENOENT
                continue
            flags.append((int(fd), int(info.split("flags:")[1].split()[0], 8)))
        assert len(flags) == 1, flags  # fd 0 points elsewhere: one descriptor, ours
        fd, value = flags[0]
        assert fd > 2
        assert value & os.O_NONBLOCK, "the loop reader was not chosen"
        assert value & os.O_CLOEXEC, "a child process would inherit the protocol pipe"
    finally:
        proc.stdin.close()
        code = proc.wait(5)
    assert code == 0
