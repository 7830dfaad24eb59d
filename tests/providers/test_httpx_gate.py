"""The httpx fallback transport (``MODEL_SIDECAR_HTTP_TRANSPORT=httpx``) keeps its
connection limit in front of httpcore's pool: requests over the limit wait outside it
(httpcore 1.0.9 stalls with requests queued inside its pool: 500 streams over 200
connections took 386 s with at most 10 open), a slot comes back when a response is
closed, read whole or not, or when sending failed, and a wait past the pool timeout is
``httpx.PoolTimeout``."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from sidecar.providers import http as provider_http
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import HttpClientFactory, _Gated

pytestmark = pytest.mark.timeout(60)


class _Counting(httpx.AsyncBaseTransport):
    """httpx's own transport, counting the requests inside it (sent, response not closed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.inside = 0
        self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self.inside -= 1
            raise
        stream = response.stream
        counter = self

        class _Out(httpx.AsyncByteStream):
            async def __aiter__(self):  # type: ignore[no-untyped-def]
                async for part in stream:  # type: ignore[union-attr]
                    yield part

            async def aclose(self) -> None:
                counter.inside -= 1
                await stream.aclose()  # type: ignore[union-attr]

        response.stream = _Out()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _slow_server() -> tuple[asyncio.Server, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(2):
                    writer.write(b"9\r\ndata: x\n\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_no_more_requests_than_the_limit_reach_httpcore_and_all_complete() -> None:
    server, base = await _slow_server()
    counting = _Counting(httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=8, max_keepalive_connections=4)))
    client = httpx.AsyncClient(transport=_Gated(counting, 8), base_url=base)

    async def one() -> bytes:
        async with client.stream("GET", "/s") as response:
            return await response.aread()

    try:
        bodies = await asyncio.gather(*(one() for _ in range(40)))
        # One closed before its end gives its slot back as well.
        async with client.stream("GET", "/s") as response:
            await response.aiter_raw().__anext__()
        assert await one() == b"data: x\n\n" * 2
    finally:
        await client.aclose()
        server.close()
    assert bodies == [b"data: x\n\n" * 2] * 40
    assert counting.most == 8 and counting.inside == 0


async def test_a_failed_send_gives_its_slot_back_and_a_long_wait_is_a_pool_timeout() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{taken.getsockname()[1]}"
    server, base = await _slow_server()
    client = httpx.AsyncClient(transport=_Gated(httpx.AsyncHTTPTransport(), 1))
    try:
        for _ in range(3):  # each refusal frees the only slot
            with pytest.raises(httpx.ConnectError):
                await client.get(refused + "/x")
        async with client.stream("GET", base + "/s"):
            with pytest.raises(httpx.PoolTimeout):
                await client.get(base + "/s", timeout=httpx.Timeout(5.0, pool=0.2))
        assert (await client.get(base + "/s")).status_code == 200
    finally:
        await client.aclose()
        server.close()


async def test_the_factory_puts_the_limit_in_front_of_httpx_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provider_http, "MAX_CONNECTIONS", 6)
    server, base = await _slow_server()
    client = HttpClientFactory(aiohttp=False).build(
        ProviderSettings(name="p", kind="custom", base_url=base, default_model="m"))
    explained = client._transport  # the factory's chain: _Explained(_Gated(httpx's transport))
    gated = explained._inner  # type: ignore[attr-defined]
    counting = _Counting(gated._inner)
    gated._inner = counting

    async def one() -> None:
        async with client.stream("GET", "/s") as response:
            await response.aread()

    try:
        await asyncio.gather(*(one() for _ in range(30)))
    finally:
        await client.aclose()
        server.close()
    assert counting.most == 6 and counting.inside == 0
