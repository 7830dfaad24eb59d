"""The providers' client keeps httpx's behaviour where it skips work: cookies a server sets
are still sent back, and each path is merged with ``base_url`` as httpx does it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import HttpClientFactory

pytestmark = pytest.mark.timeout(20)


class _Server:
    """A raw HTTP/1.1 server on 127.0.0.1 that records each request head and sets a
    cookie on the first answer only."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.heads.append(head)
                cookie = b"Set-Cookie: session=abc123; Path=/\r\n" if len(self.heads) == 1 else b""
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + cookie
                             + b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _answering(answer: bytes) -> tuple[asyncio.Server, httpx.AsyncClient]:
    """A server on 127.0.0.1 that answers each connection's first request with ``answer``
    and closes it, and a provider client for it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=f"http://127.0.0.1:{port}",
                                                        default_model="m"))
    return server, client


async def test_cookies_set_by_a_server_are_sent_back_and_paths_merge_with_base_url() -> None:
    server = _Server()
    base = await server.start()
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=base, default_model="m"))
    try:
        for path in ("/chat/completions", "/chat/completions", "models", "/chat/completions"):
            response = await client.post(path, content=b"{}")
            assert response.status_code == 200
    finally:
        await client.aclose()
        assert server.server is not None
        server.server.close()
    lines = [head.split(b"\r\n") for head in server.heads]
    assert [line[0] for line in lines] == [
        b"POST /v1/chat/completions HTTP/1.1", b"POST /v1/chat/completions HTTP/1.1",
        b"POST /v1/models HTTP/1.1", b"POST /v1/chat/completions HTTP/1.1"]
    cookies = [[h for h in head if h.lower().startswith(b"cookie:")] for head in lines]
    assert cookies[0] == []
    assert cookies[1:] == [[b"cookie: session=abc123"]] * 3


async def test_a_changed_base_url_is_used_for_cached_paths() -> None:
    first, second = _Server(), _Server()
    base_a, base_b = await first.start(), await second.start()
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=base_a, default_model="m"))
    try:
        await client.post("/chat/completions", content=b"{}")
        client.base_url = base_b  # type: ignore[assignment]
        await client.post("/chat/completions", content=b"{}")
    finally:
        await client.aclose()
        for server in (first, second):
            assert server.server is not None
            server.server.close()
    assert len(first.heads) == 1 and len(second.heads) == 1


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
async def test_read_body_gives_the_decoded_body_with_or_without_content_encoding(encoding: str | None) -> None:
    """A body read whole (non-streamed calls) is decoded when the server compressed it,
    and taken as it came otherwise."""
    import gzip
    import zlib

    from sidecar.providers.http import fetch_json

    payload = b'{"text": "' + b"y" * 5000 + b'"}'
    body = {None: payload, "gzip": gzip.compress(payload), "deflate": zlib.compress(payload)}[encoding]
    header = b"" if encoding is None else b"Content-Encoding: " + encoding.encode() + b"\r\n"

    server, client = await _answering(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + header
                                      + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        data = await fetch_json(client, "GET", "/x", provider="p", model="m", max_bytes=1 << 20)
    finally:
        await client.aclose()
        server.close()
    assert data == {"text": "y" * 5000}


# -- the direct path: a provider call on the aiohttp transport without httpx's objects --


def _header_set(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return sorted((name.strip().lower(), value.strip()) for name, _, value in
                  (line.partition(b":") for line in lines if line))


async def test_a_direct_call_sends_exactly_the_headers_httpx_sends() -> None:
    """httpx's defaults, overridden case-insensitively by the call's own, plus Host and
    Content-Length, and no Content-Type of aiohttp's making."""
    from sidecar.providers.aio_transport import Reply

    server = _Server()
    base = await server.start()
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=base, default_model="m"))
    given = {"Authorization": "Bearer k-1", "accept": "application/json", "X-Extra": "1"}
    try:
        async with client.stream("POST", "/chat/completions", headers=given, content=b"{}") as response:
            await response.aread()
        client.cookies.clear()  # the first answer set one: the next call must not carry it
        async with client.open("POST", "/chat/completions", headers=given, content=b"{}") as reply:  # type: ignore[attr-defined]
            assert isinstance(reply, Reply)
            assert [part async for part in reply.aiter_bytes()] == [b"{}"]
        async with client.open("POST", "/chat/completions", content=b"{}") as reply:  # type: ignore[attr-defined]
            assert isinstance(reply, Reply)
        async with client.stream("POST", "/chat/completions", content=b"{}") as response:
            await response.aread()
    finally:
        await client.aclose()
        assert server.server is not None
        server.server.close()
    via_httpx, direct, direct_bare, httpx_bare = (_header_set(head) for head in server.heads)
    assert direct == via_httpx
    assert direct_bare == [line for line in httpx_bare if line[0] != b"cookie"]
    names = [name for name, _ in direct]
    assert b"content-type" not in names and names.count(b"accept") == 1
    assert (b"accept", b"application/json") in direct and (b"authorization", b"Bearer k-1") in direct
    assert (b"content-length", b"2") in direct and b"host" in names and b"user-agent" in names


async def _post(client: httpx.AsyncClient) -> None:
    """One provider call through :meth:`_Client.open`, its body read whole."""
    async with client.open("POST", "/chat/completions", content=b"{}") as reply:  # type: ignore[attr-defined]
        [part async for part in reply.aiter_bytes()]


async def test_a_direct_call_hands_over_to_httpx_once_a_cookie_is_to_be_sent() -> None:
    server = _Server()
    base = await server.start()
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=base, default_model="m"))
    try:
        for _ in range(3):
            await _post(client)
    finally:
        await client.aclose()
        assert server.server is not None
        server.server.close()
    cookies = [[h for h in head.split(b"\r\n") if h.lower().startswith(b"cookie:")] for head in server.heads]
    assert cookies == [[], [b"cookie: session=abc123"], [b"cookie: session=abc123"]]


async def test_a_direct_reply_reads_headers_as_httpx_does() -> None:
    server, client = await _answering(b"HTTP/1.1 429 Too Many Requests\r\nX-RateLimit-Remaining-Requests: 5\r\n"
                                      b"X-Multi: a\r\nx-multi: b\r\nContent-Length: 2\r\n\r\n{}")
    try:
        async with client.open("GET", "/x") as reply:  # type: ignore[attr-defined]
            headers = reply.headers
            assert reply.status_code == 429 and reply.is_error and not reply.is_success
            assert headers.get("x-multi") == "a, b" and headers.get("X-MULTI") == "a, b"
            assert headers.get("x-ratelimit-remaining-requests") == "5" and headers["X-RateLimit-Remaining-Requests"] == "5"
            assert "x-ratelimit-remaining-requests" in headers and "nope" not in headers
            assert headers.get("nope", "d") == "d"
            assert list(headers) == ["x-ratelimit-remaining-requests", "x-multi", "content-length"]
            assert len(headers) == 3
            assert (b"X-Multi", b"a") in headers.raw  # type: ignore[attr-defined]
    finally:
        await client.aclose()
        server.close()


async def test_a_direct_call_refuses_what_httpx_refuses_before_sending() -> None:
    """A header value that is not ASCII raises httpx's UnicodeEncodeError; a remote host is
    refused under MODEL_SIDECAR_DENY_REMOTE; neither reaches a server."""
    server = _Server()
    base = await server.start()
    client = HttpClientFactory(deny_remote=True).build(
        ProviderSettings(name="p", kind="custom", base_url=base, default_model="m"))
    remote = HttpClientFactory(deny_remote=True).build(
        ProviderSettings(name="r", kind="custom", base_url="http://203.0.113.7:9/v1", default_model="m"))
    try:
        with pytest.raises(UnicodeEncodeError):
            async with client.open("POST", "/chat/completions", headers={"Authorization": "Bearer kë"}):  # type: ignore[attr-defined]
                pass
        with pytest.raises(httpx.ConnectError, match="remote connections are disabled") as refused:
            async with remote.open("POST", "/chat/completions", headers={"Authorization": "Bearer k-2"}):  # type: ignore[attr-defined]
                pass
        assert str(refused.value.request.url) == "http://203.0.113.7:9/v1/chat/completions"
        assert "authorization" not in refused.value.request.headers
    finally:
        await client.aclose()
        await remote.aclose()
        assert server.server is not None
        server.server.close()
    assert server.heads == []


async def test_a_direct_call_fails_with_httpx_errors_naming_the_url_only() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=f"http://127.0.0.1:{port}",
                                                        default_model="m"))
    try:
        with pytest.raises(httpx.ConnectError) as failed:
            async with client.open("POST", "/x", headers={"Authorization": "Bearer k-3"}):  # type: ignore[attr-defined]
                pass
    finally:
        await client.aclose()
    chain, cause = [], failed.value.__cause__
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or getattr(cause, "os_error", None)
    assert any(isinstance(item, ConnectionRefusedError) for item in chain)  # a refusal is still seen as one
    assert str(failed.value.request.url) == f"http://127.0.0.1:{port}/x"
    assert "k-3" not in repr(failed.value.request.headers)


async def test_a_request_hook_added_later_still_sees_every_call() -> None:
    """The direct path stands for the client's own request hook only: a hook added to the
    client afterwards runs for each call, as httpx runs it."""
    server = _Server()
    base = await server.start()
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=base, default_model="m"))
    seen: list[str] = []

    async def hook(request: object) -> None:
        seen.append(str(getattr(request, "url", "")))

    try:
        client.event_hooks["request"].append(hook)
        await _post(client)
    finally:
        await client.aclose()
        assert server.server is not None
        server.server.close()
    assert seen == [f"{base}/chat/completions"]
