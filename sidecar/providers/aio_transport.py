"""An ``httpx`` transport with aiohttp underneath: httpx's API and errors, aiohttp's pool.

httpx's own pool (httpcore) costs ~0.9 ms of CPU per request on this path (it polls every
pooled connection on each checkout); aiohttp's costs a tenth of that. The providers keep
talking to ``httpx.AsyncClient``: this transport only sends the request and hands back an
``httpx.Response`` whose body streams from aiohttp.

What it keeps of httpx's behaviour, because retry and billing rules depend on it:

- every failure is the httpx exception httpx's own transport raises for it:
  :class:`httpx.ConnectError` (the OS error kept as the cause, so a refusal is still
  seen), :class:`httpx.ConnectTimeout`, :class:`httpx.ReadTimeout`,
  :class:`httpx.PoolTimeout`, :class:`httpx.RemoteProtocolError` (disconnected before
  the answer, or a body cut short), :class:`httpx.ReadError` (a reset while reading),
  :class:`httpx.LocalProtocolError` (a header value HTTP does not allow);
- the per-request timeouts httpx puts in ``request.extensions["timeout"]``: ``connect``
  for a new connection, ``read`` between two reads (headers included), ``pool`` to wait
  for a free connection (the limit is kept here, not in aiohttp, so that wait is told
  apart from a connect);
- bodies are not decompressed here (httpx decodes ``Content-Encoding`` itself, so the
  raw bytes read can be bounded);
- closing a response before its end closes its connection (the server sees the
  disconnect); a body read to its end puts the connection back in the pool.

One transport per client: the factory builds it with the client's TLS context and proxy.
The aiohttp session is made on the first request, inside the running event loop.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpTransport"]

_HTTP11 = {"http_version": b"HTTP/1.1"}
#: aiohttp's read buffer per connection (its default is 256 KiB).
_READ_BUFFER = 32 * 1024


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over one aiohttp ``ClientSession``.

    ``verify`` is an ``ssl.SSLContext`` (the provider's trust) or a bool (``False``: no
    certificate check); ``ssl_context`` is the same as a context and wins. ``proxy`` is
    an HTTP(S) proxy URL for every request, or None; ``trust_env`` lets aiohttp read the
    proxy variables (``HTTPS_PROXY``, ``NO_PROXY``...) when ``proxy`` is None.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, ssl_context: ssl.SSLContext | None = None,
                 proxy: str | httpx.URL | None = None, trust_env: bool = False,
                 limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5)
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else verify
        self._proxy = str(proxy) if proxy is not None else None
        self._trust_env = trust_env
        self._max_connections = limits.max_connections
        self._max_idle = limits.max_keepalive_connections if limits.max_keepalive_connections is not None else 1 << 30
        self._keepalive = limits.keepalive_expiry
        self._slots: asyncio.Semaphore | None = (
            asyncio.Semaphore(limits.max_connections) if limits.max_connections else None)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the transport is closed")
        if self._session is None:
            connector = _Connector(self._max_idle, ssl=self._ssl, limit=0, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=self._trust_env, cookie_jar=aiohttp.DummyCookieJar(),
                # h11 (httpx's parser) takes header lines of up to 100 KB: so do we.
                max_line_size=102_400, max_field_size=102_400, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(total=None),
                # Reading pauses once twice this much is buffered and unread: a host that
                # stops reading holds the upstream, not megabytes per stream in memory.
                read_bufsize=_READ_BUFFER)
        return self._session

    def _timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        key = (connect, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    async def _slot(self, request: httpx.Request, pool: float | None) -> None:
        slots = self._slots
        if slots is None or not slots.locked():
            if slots is not None:
                await slots.acquire()
            return
        try:
            async with asyncio.timeout(pool):
                await slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("timed out waiting for a free connection", request=request) from exc

    def _free(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _done(self, response: aiohttp.ClientResponse) -> None:
        """A response is finished with: its connection back to the pool when the body was
        read whole (aiohttp has done that at its end already), else closed."""
        try:
            if response.content.is_eof() and response.content.exception() is None:
                response.release()
            else:
                response.close()
        finally:
            self._free()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        await self._slot(request, timeouts.get("pool"))
        try:
            with _mapped(request):
                response = await session.request(
                    request.method, URL(str(request.url), encoded=True),
                    headers=request.headers.multi_items(), data=_body(request),
                    allow_redirects=False, proxy=self._proxy,
                    timeout=self._timeout(timeouts.get("connect"), timeouts.get("read")))
        except BaseException:
            self._free()
            raise
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_Body(response, request, self._done),
            extensions={**_HTTP11, "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
            request=request)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aexit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.aclose()


def _body(request: httpx.Request) -> Any:
    """The request body as aiohttp takes it: the bytes when httpx holds them, else a stream."""
    if isinstance(request.stream, httpx.ByteStream):
        # Not request.content: a request httpx builds to follow a redirect has a ByteStream
        # but was never read, and .content raises RequestNotRead.
        return b"".join(request.stream) or None
    return _stream(request)


async def _stream(request: httpx.Request) -> AsyncIterator[bytes]:
    async for part in request.stream:  # type: ignore[union-attr]
        yield part


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector with httpx's ``max_keepalive_connections``: a connection that
    comes back while that many are idle is closed instead of kept."""

    def __init__(self, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        idle = sum(len(pool) for pool in self._conns.values())
        super()._release(key, protocol, should_close=should_close or idle >= self._max_idle)


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp; closing it early closes the connection."""

    __slots__ = ("_closed", "_finish", "_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request,
                 done: Callable[[aiohttp.ClientResponse], None]) -> None:
        self._response = response
        self._request = request
        self._finish = done
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _mapped(self._request):
            while True:
                part = await content.readany()
                if not part:
                    return
                yield part

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._finish(self._response)


@contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions httpx's own transport raises."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _httpx_error(exc, request) from exc
    except ValueError as exc:
        # aiohttp refuses a header value holding CR or LF before sending anything.
        raise httpx.LocalProtocolError("illegal header value", request=request) from exc


def _httpx_error(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.HTTPError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("timed out while connecting", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout("timed out while reading", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(_os_reason(exc), request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(
            "the server closed the connection before the end of the answer", request=request)
    if isinstance(exc, aiohttp.ClientResponseError):
        # The response parser refused what the server sent (a malformed status line or header).
        return httpx.RemoteProtocolError(f"malformed response ({exc.message})", request=request)
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionResetError):
        return httpx.ReadError(_os_reason(exc), request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol("the URL cannot be requested", request=request)
    return httpx.TransportError(type(exc).__name__, request=request)


def _os_reason(exc: BaseException) -> str:
    """The OS error's text (never the request: it can hold the key)."""
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return type(exc).__name__
