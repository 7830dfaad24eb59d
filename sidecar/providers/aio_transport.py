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

A provider call can skip httpx's objects altogether: :meth:`AiohttpTransport.reply` sends
a URL, header lines and body bytes and returns a :class:`Reply` (the
:class:`~sidecar.providers.answer.Answer` the providers read), with the same timeouts,
pool and exceptions as above. Building httpx's ``Request``, ``Response`` and ``Headers``
for every call cost about as much CPU as aiohttp's own work on the call
(bench/profile_sidecar.py). An ``httpx.Request`` is still made when an exception needs
one (it names the URL only: no headers, so no key).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from yarl import URL

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

__all__ = ["AiohttpTransport", "Reply", "Slots"]

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
        self._max_idle = limits.max_keepalive_connections if limits.max_keepalive_connections is not None else 1 << 30
        self._keepalive = limits.keepalive_expiry
        self._slots = Slots(limits.max_connections)
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
                # The headers aiohttp would add of its own are the caller's to send (httpx's
                # defaults come with the request); Content-Type too: httpx sends none for
                # bytes the caller did not label, aiohttp would say octet-stream.
                max_line_size=102_400, max_field_size=102_400,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
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

    def _done(self, response: aiohttp.ClientResponse) -> None:
        """A response is finished with: its connection back to the pool when the body was
        read whole (aiohttp has done that at its end already), else closed."""
        try:
            if response.content.is_eof() and response.content.exception() is None:
                response.release()
            else:
                response.close()
        finally:
            self._slots.free()

    async def _send(self, method: str, url: URL, headers: Any, data: Any, timeouts: Mapping[str, float | None],
                    request: _RequestFor) -> aiohttp.ClientResponse:
        """One request on a pooled connection; the slot it takes is freed by :meth:`_done`."""
        session = self._open()
        await self._slots.take(request, timeouts.get("pool"))
        try:
            with _mapped(request):
                return await session.request(
                    method, url, headers=headers, data=data, allow_redirects=False, proxy=self._proxy,
                    timeout=self._timeout(timeouts.get("connect"), timeouts.get("read")))
        except BaseException:
            self._slots.free()
            raise

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._send(request.method, URL(str(request.url), encoded=True), request.headers.multi_items(),
                                    _body(request), request.extensions.get("timeout", {}), request)
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_Body(response, request, self._done),
            extensions={**_HTTP11, "reason_phrase": (response.reason or "").encode("latin-1", "replace")},
            request=request)

    async def reply(self, method: str, url: URL, headers: list[tuple[str, str]], content: bytes | None,
                    timeouts: Mapping[str, float | None], request: Callable[[], httpx.Request]) -> Reply:
        """Send without httpx's objects: ``headers`` are the lines to send as they are
        (aiohttp adds ``Host`` and ``Content-Length``), ``timeouts`` are httpx's
        ``connect``/``read``/``pool``, ``request`` makes the ``httpx.Request`` an
        exception carries. Fails with the same httpx exceptions as
        :meth:`handle_async_request`."""
        response = await self._send(method, url, headers, content, timeouts, request)
        return Reply(response, _Body(response, request, self._done), request)

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
        idle = sum(map(len, self._conns.values()))
        super()._release(key, protocol, should_close=should_close or idle >= self._max_idle)


class Slots:
    """At most ``limit`` requests at once (None or 0: no limit): the connection limit kept
    in front of a pool, so a wait for a free connection is told apart from a connect and
    bounded by httpx's ``pool`` timeout (:class:`httpx.PoolTimeout`)."""

    __slots__ = ("_slots",)

    def __init__(self, limit: int | None) -> None:
        self._slots = asyncio.Semaphore(limit) if limit else None

    async def take(self, request: _RequestFor, pool: float | None) -> None:
        slots = self._slots
        if slots is None or not slots.locked():
            if slots is not None:
                await slots.acquire()
            return
        try:
            async with asyncio.timeout(pool):
                await slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout("timed out waiting for a free connection", request=_request(request)) from exc

    def free(self) -> None:
        if self._slots is not None:
            self._slots.release()


#: The request a failure names: the one httpx built, or how to make one when needed.
_RequestFor = httpx.Request | Callable[[], httpx.Request]


def _request(request: _RequestFor) -> httpx.Request:
    return request if isinstance(request, httpx.Request) else request()


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp; closing it early closes the connection."""

    __slots__ = ("_closed", "_finish", "_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: _RequestFor,
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


class Reply:
    """A provider call's answer read straight from aiohttp: an
    :class:`~sidecar.providers.answer.Answer` (status, headers, body) without httpx's
    ``Response``. ``aiter_bytes`` decodes a ``Content-Encoding`` the way httpx does (an
    ``httpx.Response`` is made for that body only); ``chunk_size`` is not supported
    (the body comes in the pieces aiohttp reads)."""

    __slots__ = ("_body", "_request", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse, body: _Body, request: Callable[[], httpx.Request]) -> None:
        self.status_code = response.status
        self.headers = _Headers(response.headers, response.raw_headers)
        self._body = body
        self._request = request

    @property
    def is_error(self) -> bool:
        return 400 <= self.status_code <= 599

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code <= 299

    def head(self) -> httpx.Response:
        """Status and headers as an ``httpx.Response`` without a body (for a cookie jar)."""
        return httpx.Response(self.status_code, headers=self.headers.raw, request=self._request())

    def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if chunk_size is not None:
            raise ValueError("chunk_size is not supported")
        return self._body.__aiter__()

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if "content-encoding" not in self.headers:
            return self.aiter_raw(chunk_size)
        if chunk_size is not None:
            raise ValueError("chunk_size is not supported")
        decoded = httpx.Response(self.status_code, headers=self.headers.raw, stream=self._body, request=self._request())
        return decoded.aiter_bytes()

    async def aclose(self) -> None:
        await self._body.aclose()


class _Headers(Mapping[str, str]):
    """aiohttp's case-insensitive headers with httpx's ``Headers`` reading: ``get`` joins
    the values of a repeated name with ``", "``, ``raw`` is the lines as received."""

    __slots__ = ("_headers", "raw")

    def __init__(self, headers: CIMultiDictProxy[str], raw: tuple[tuple[bytes, bytes], ...]) -> None:
        self._headers = headers
        self.raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        values = self._headers.getall(key, None)
        if values is None:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __contains__(self, key: object) -> bool:
        return key in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name in self._headers))

    def __len__(self) -> int:
        return len(dict.fromkeys(name.lower() for name in self._headers))


@contextmanager
def _mapped(request: _RequestFor) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions httpx's own transport raises."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _httpx_error(exc, _request(request)) from exc
    except ValueError as exc:
        # aiohttp refuses a header value holding CR or LF before sending anything.
        raise httpx.LocalProtocolError("illegal header value", request=_request(request)) from exc


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
