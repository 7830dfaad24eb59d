"""The providers' client keeps httpx's behaviour where it skips work: cookies a server sets
are still sent back, and each path is merged with ``base_url`` as httpx does it."""

from __future__ import annotations

import asyncio

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

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + header
                     + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpClientFactory().build(ProviderSettings(name="p", kind="custom", base_url=f"http://127.0.0.1:{port}",
                                                        default_model="m"))
    try:
        data = await fetch_json(client, "GET", "/x", provider="p", model="m", max_bytes=1 << 20)
    finally:
        await client.aclose()
        server.close()
    assert data == {"text": "y" * 5000}
