"""AiohttpTransport keeps httpx's API and errors: each failure a real loopback server can
cause comes out as the httpx exception httpx's own transport raises for it, timeouts are
httpx's per-request ones, an early close closes the connection, keep-alive reuses it.

Each test runs on both transports (httpx's own is the reference), so a difference in
behaviour shows up as one side failing.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from sidecar.providers.aio_transport import AiohttpTransport

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw TCP server on 127.0.0.1: each connection runs ``handler``; counts connections
    and notes when the client went away."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.disconnected = asyncio.Event()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def reply(body: bytes, *, headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body)


@pytest.fixture(params=["aiohttp", "httpx"])
async def client_for(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []

    def make(port: int, *, timeout: httpx.Timeout | None = None, max_connections: int = 10) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=10, keepalive_expiry=30)
        transport: httpx.AsyncBaseTransport = (
            AiohttpTransport(limits=limits) if request.param == "aiohttp"
            else httpx.AsyncHTTPTransport(limits=limits))
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport,
                                   timeout=timeout or httpx.Timeout(5.0), trust_env=False)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def test_a_json_answer_and_keep_alive(client_for: Callable[..., httpx.AsyncClient]) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(reply(b'{"ok": true}', headers=b"X-Test: a\r\nX-Test: b\r\n"))
            await writer.drain()

    async with serve(handler) as server:
        client = client_for(server.port)
        for _ in range(3):
            response = await client.post("/v1/chat", json={"q": 1}, headers={"Authorization": "Bearer k"})
            assert response.status_code == 200 and response.json() == {"ok": True}
            assert response.headers.get_list("x-test") == ["a", "b"]
        assert server.connections == 1  # kept alive and reused
    assert b"POST /v1/chat HTTP/1.1" in seen[0] and b"Bearer k" in seen[0] and seen[0].endswith(b'{"q":1}')


async def test_a_compressed_body_is_decoded_by_httpx_once(client_for: Callable[..., httpx.AsyncClient]) -> None:
    body = gzip.compress(b'{"text": "' + b"x" * 1000 + b'"}')

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply(body, headers=b"Content-Encoding: gzip\r\n"))
        await writer.drain()

    async with serve(handler) as server:
        async with client_for(server.port).stream("GET", "/") as response:
            raw = b"".join([part async for part in response.aiter_raw()])
    assert raw == body  # the transport hands the bytes as sent: bounds apply to them


async def test_a_refused_connection_is_a_connect_error_with_the_os_cause(
        client_for: Callable[..., httpx.AsyncClient]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(httpx.ConnectError) as info:
            await client_for(port).get("/")
    chain: list[BaseException] = []
    current: BaseException | None = info.value
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    assert any(isinstance(exc, ConnectionRefusedError) for exc in chain), chain


async def test_a_silent_server_is_a_read_timeout(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client goes

    async with serve(handler) as server:
        client = client_for(server.port, timeout=httpx.Timeout(5.0, read=0.3))
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/")
        assert 0.25 <= asyncio.get_running_loop().time() - started < 3


async def test_the_per_request_timeout_wins(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with serve(handler) as server:
        client = client_for(server.port, timeout=httpx.Timeout(30.0))
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(5.0, read=0.2))


async def test_a_body_stalling_mid_way_is_a_read_timeout(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await reader.read()

    async with serve(handler) as server:
        client = client_for(server.port, timeout=httpx.Timeout(5.0, read=0.3))
        async with client.stream("GET", "/") as response:
            with pytest.raises(httpx.ReadTimeout):
                await response.aread()


@pytest.mark.parametrize("cut", ["before-the-answer", "mid-body", "mid-chunked"])
async def test_a_connection_cut_is_a_remote_protocol_error(client_for: Callable[..., httpx.AsyncClient],
                                                           cut: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if cut == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        elif cut == "mid-chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async with serve(handler) as server:
        client = client_for(server.port)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


async def test_a_malformed_status_line_is_a_remote_protocol_error(
        client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not http\r\n\r\n")
        await writer.drain()

    async with serve(handler) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client_for(server.port).get("/")


async def test_a_header_with_a_newline_is_refused_before_sending(
        client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply(b"{}"))
        await writer.drain()

    async with serve(handler) as server:
        client = client_for(server.port)
        with pytest.raises(httpx.LocalProtocolError) as info:
            await client.get("/", headers={"Authorization": "Bearer sk-secret\n"})
    if isinstance(client._transport, AiohttpTransport):  # (h11's message quotes the value)
        assert "sk-secret" not in str(info.value)


async def test_closing_a_stream_early_closes_the_connection(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(1000):
            line = f"data: {i}\n\n".encode()
            writer.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async def handler_seen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            server.disconnected.set()

    async with serve(handler_seen) as server:
        client = client_for(server.port)
        async with client.stream("GET", "/") as response:
            async for part in response.aiter_bytes():
                assert part.startswith(b"data: 0")
                break
        await asyncio.wait_for(server.disconnected.wait(), 5)


async def test_a_body_read_to_its_end_goes_back_to_the_pool(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            await writer.drain()

    async with serve(handler) as server:
        client = client_for(server.port)
        for _ in range(3):
            async with client.stream("GET", "/") as response:
                assert await response.aread() == b"hello"
        assert server.connections == 1


async def test_waiting_for_a_free_connection_is_a_pool_timeout(client_for: Callable[..., httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with serve(handler) as server:
        client = client_for(server.port, timeout=httpx.Timeout(5.0, pool=0.2), max_connections=1)
        async with client.stream("GET", "/"):
            with pytest.raises(httpx.PoolTimeout):
                await client.get("/")


async def test_a_cancelled_request_closes_its_connection(client_for: Callable[..., httpx.AsyncClient]) -> None:
    got = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            got.set()
            await reader.read()  # returns at the client's disconnect
        finally:
            server.disconnected.set()

    async with serve(handler) as server:
        client = client_for(server.port)
        task = asyncio.create_task(client.get("/"))
        await asyncio.wait_for(got.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 5)


@pytest.mark.parametrize(("status", "method"), [(302, "GET"), (307, "POST")])
async def test_a_redirect_is_followed_with_its_body(client_for: Callable[..., httpx.AsyncClient], status: int,
                                                    method: str) -> None:
    """httpx builds the redirected request itself, with a body stream never read into
    ``content`` (the aiohttp transport once raised RequestNotRead on it)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            if len(seen) == 1:
                writer.write(f"HTTP/1.1 {status} Moved\r\nLocation: /there\r\nContent-Length: 0\r\n\r\n".encode())
            else:
                writer.write(reply(b'{"ok": true}'))
            await writer.drain()

    async with serve(handler) as server:
        response = await client_for(server.port).request(
            method, "/here", content=b'{"q":1}' if method == "POST" else None, follow_redirects=True)
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert seen[1].startswith(f"{method} /there HTTP/1.1".encode())
    assert seen[1].endswith(b'{"q":1}') == (method == "POST")


async def test_idle_connections_beyond_the_keepalive_limit_are_closed() -> None:
    open_now: list[int] = [0]
    peak_idle: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_now[0] += 1
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.05)  # every request in flight at once
                writer.write(reply(b"{}"))
                await writer.drain()
        finally:
            open_now[0] -= 1

    limits = httpx.Limits(max_connections=10, max_keepalive_connections=2, keepalive_expiry=30)
    async with serve(handler) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", trust_env=False,
                                     transport=AiohttpTransport(limits=limits)) as client:
            await asyncio.gather(*(client.get("/") for _ in range(8)))
            assert server.connections == 8
            for _ in range(100):  # the server sees the closes
                if open_now[0] <= 2:
                    break
                await asyncio.sleep(0.02)
            peak_idle.append(open_now[0])
    assert peak_idle == [2], peak_idle


async def test_a_reader_that_stops_holds_the_upstream_not_the_body_in_memory() -> None:
    """A host that stops reading must stop the upstream reads too (TCP backpressure), not
    leave aiohttp buffering a whole stream per connection."""
    sent: list[int] = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n")
        for _ in range(128):
            writer.write(b"z" * 65536)
            await writer.drain()
            sent[0] += 65536

    transport = AiohttpTransport(limits=httpx.Limits(max_connections=10))
    async with serve(handler) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", trust_env=False,
                                     transport=transport) as client:
            async with client.stream("GET", "/") as response:
                first = await anext(response.aiter_raw())
                assert first
                await asyncio.sleep(0.5)  # the consumer stops reading
                body = response.stream._stream._response  # type: ignore[attr-defined]
                buffered = body.content.total_bytes - len(first)
                assert buffered <= 384 * 1024, f"{buffered} bytes read ahead of the consumer"
                assert sent[0] < 8 * 1024 * 1024
