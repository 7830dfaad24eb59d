"""The providers' HTTP plumbing: the client factory, one request and its body.

This is the only module that builds ``httpx.AsyncClient`` objects (so the transport can
be swapped in one place). Failures map to typed errors in
:mod:`sidecar.providers.failures`, rate-limit headers are read in
:mod:`sidecar.providers.headers`, stream bodies are framed in
:mod:`sidecar.providers.framing`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import structlog
from yarl import URL

from sidecar.providers import timeouts
from sidecar.providers.aio_transport import AiohttpTransport, Reply, Slots
from sidecar.providers.answer import Answer
from sidecar.providers.base import ProviderSettings
from sidecar.providers.failures import ResponseTooLarge, error_from_status, map_http_errors
from sidecar.providers.framing import loads_body
from sidecar.providers.guard import ERROR_BODY_BYTES
from sidecar.providers.network import (
    ProxyFailed,
    SetupFailed,
    TlsRejected,
    Trust,
    build_ssl_context,
    deny_remote_reason,
    explain,
    is_loopback_url,
    proxy_problem,
    proxy_status_failure,
    system_trust,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_MS",
    "MAX_CONNECTIONS",
    "MAX_IDLE_CONNECTIONS",
    "HttpClientFactory",
    "fetch_json",
    "is_loopback_url",
    "open_response",
    "probe",
    "probe_problem",
    "raise_for_error",
    "read_body",
    "read_prefix",
]


#: Per-attempt read timeout when the provider entry sets no ``timeoutMs``.
DEFAULT_TIMEOUT_MS = timeouts.DEFAULT_TIMEOUT_MS


DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: Connections per provider, open at once and kept idle for the next calls: enough idle
#: ones that a host with 64 calls in flight does not close and reopen connections.
MAX_CONNECTIONS = 200
MAX_IDLE_CONNECTIONS = 100

log = structlog.get_logger("sidecar.providers")


_R = TypeVar("_R", httpx.Response, Reply)


class _Gated(httpx.AsyncBaseTransport):
    """httpx's own transport (``MODEL_SIDECAR_HTTP_TRANSPORT=httpx``) with the connection
    limit kept in front of it: at most ``limit`` requests are inside httpcore's pool at
    once, and the others wait here (``pool`` timeout as before) until a response is
    closed. Requests queued inside httpcore 1.0.9's pool stall under contention: with 500
    concurrent streams and 200 connections, at most 10 were open upstream and the 500
    took 386 s (the pool hands an idle connection to a queued request and may then close
    it as a surplus keep-alive one, https://github.com/encode/httpcore/issues/1110)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int | None) -> None:
        self._inner = inner
        self._slots = Slots(limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.take(request, request.extensions.get("timeout", {}).get("pool"))
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.free()
            raise
        response.stream = _Freed(response.stream, self._slots)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Freed(httpx.AsyncByteStream):
    """A response body that gives its slot back once closed (read to its end or not)."""

    __slots__ = ("_slots", "_stream")

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, slots: Slots | None) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream: httpx.AsyncByteStream = stream
        self._slots = slots

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        slots, self._slots = self._slots, None
        try:
            await self._stream.aclose()
        finally:
            if slots is not None:
                slots.free()


class _Explained(httpx.AsyncBaseTransport):
    """Wraps a provider's transport: failures to connect come out explained (which TLS
    problem at which host, which proxy), a 407 from the proxy is a proxy failure, and
    settings that cannot be used fail every request with their reason."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None, proxy: str | None,
                 setup: SetupFailed | None = None) -> None:
        self._inner = inner
        self._proxy = proxy
        self._setup = setup

    @property
    def direct(self) -> AiohttpTransport | None:
        """The aiohttp transport a call may be sent through without httpx's objects
        (:meth:`reply`), when that is what this wraps and the settings are usable."""
        return self._inner if isinstance(self._inner, AiohttpTransport) and self._setup is None else None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._inner is None or self._setup is not None:
            raise SetupFailed(self._setup.explanation if self._setup else "no transport", request=request)
        return await self._explained(self._inner.handle_async_request(request), lambda: request)

    async def reply(self, method: str, url: URL, headers: list[tuple[str, str]], content: bytes | None,
                    timeouts: Mapping[str, float | None], request: Callable[[], httpx.Request]) -> Reply:
        """:meth:`AiohttpTransport.reply` with the same explanations (only when
        :attr:`direct` is set)."""
        assert isinstance(self._inner, AiohttpTransport)
        return await self._explained(self._inner.reply(method, url, headers, content, timeouts, request), request)

    async def _explained(self, sending: Awaitable[_R], request: Callable[[], httpx.Request]) -> _R:
        try:
            response = await sending
        except httpx.TransportError as exc:
            explained = explain(exc, request(), self._proxy)
            if explained is None:
                raise
            raise explained from exc
        if self._proxy is not None and response.status_code == 407:
            failure = proxy_status_failure(response.status_code, request(), self._proxy)
            if failure is not None:
                await response.aclose()
                raise failure
        return response

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


class _Cookies(httpx.Cookies):
    """httpx's jar, asked only about responses that set a cookie: ``extract_cookies``
    builds urllib request and response shims for every response (the largest single cost
    of httpx's client per call, measured with bench/profile_sidecar.py --cprofile), and
    API answers rarely carry ``Set-Cookie``."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _Client(httpx.AsyncClient):
    """``httpx.AsyncClient`` with the per-request costs a provider does not need taken
    out, its behaviour unchanged: cookies are extracted only from responses that set one
    (:class:`_Cookies`), the URL of each path is merged with ``base_url`` once (a provider
    calls a handful of fixed paths; httpx parses and merges them anew on every request),
    and :meth:`open` sends without ``send``'s unused steps, on the aiohttp transport
    without httpx's objects at all.

    ``guard`` says why a URL may not be requested (None: it may): the request hook that
    refuses remote hosts, for the calls :meth:`open` sends past the hooks.
    """

    _MAX_URLS = 64

    def __init__(self, *, transport: httpx.AsyncBaseTransport,
                 guard: Callable[[str], str | None] | None = None, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._cookies = _Cookies()
        self._urls: dict[str, httpx.URL] = {}
        self._sender = transport
        self._guard = guard
        self._direct = transport if isinstance(transport, _Explained) and transport.direct is not None else None
        self._targets: dict[str, tuple[str, URL]] = {}
        self._defaults = self._default_lines()
        #: The request hooks ``guard`` stands for: any other hook sends through httpx.
        self._own_hooks = list(self.event_hooks["request"])

    def open(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
             content: bytes | None = None, params: httpx.QueryParams | Mapping[str, Any] | None = None,
             ) -> contextlib.AbstractAsyncContextManager[Answer]:
        """``client.stream(method, url, ...)`` for a provider call, without the steps of
        ``send`` such a call never uses (auth flow, redirects, response hooks, timing
        wrappers, httpx's own log line).

        On the aiohttp transport (and with no query and no cookie to send) the request
        goes out as a URL, header lines and bytes (:meth:`AiohttpTransport.reply`): the
        headers are httpx's defaults overridden by ``headers``, checked as httpx checks
        them (a value that is not ASCII raises ``UnicodeEncodeError``), the guard runs
        as the request hook would (a request hook added later sends through httpx).
        Otherwise httpx builds the request as usual, its request hooks run, and the same
        transport sends it."""
        if (self._direct is not None and params is None and not self._cookies
                and self.event_hooks["request"] == self._own_hooks):
            return _Direct(self, method, url, headers, content)
        return _Opened(self, self.build_request(method, url, headers=headers, content=content, params=params))

    @property
    def base_url(self) -> httpx.URL:
        return super().base_url

    @base_url.setter
    def base_url(self, url: httpx.URL | str) -> None:
        httpx.AsyncClient.base_url.fset(self, url)  # type: ignore[attr-defined]
        self._urls = {}
        self._targets = {}

    @property
    def headers(self) -> httpx.Headers:
        return super().headers

    @headers.setter
    def headers(self, headers: Any) -> None:
        httpx.AsyncClient.headers.fset(self, headers)  # type: ignore[attr-defined]
        self._defaults = self._default_lines()

    def _default_lines(self) -> list[tuple[str, str, str]]:
        """The client's default headers as (lower-cased name, name, value)."""
        return [(name.lower(), name, value) for name, value in self.headers.multi_items()]

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        if not isinstance(url, str):
            return super()._merge_url(url)
        merged = self._urls.get(url)
        if merged is None:
            merged = super()._merge_url(url)
            if len(self._urls) < self._MAX_URLS:
                self._urls[url] = merged
        return merged

    def _target(self, url: str) -> tuple[str, URL]:
        """The full URL of a path, as text and as aiohttp takes it (made once per path)."""
        target = self._targets.get(url)
        if target is None:
            text = str(self._merge_url(url))
            target = (text, URL(text, encoded=True))
            if len(self._targets) < self._MAX_URLS:
                self._targets[url] = target
        return target

    def _lines(self, headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
        """The header lines of a request: the defaults not given, then ``headers``."""
        if not headers:
            return [(name, value) for _, name, value in self._defaults]
        given = {name.lower() for name in headers}
        lines = [(name, value) for lower, name, value in self._defaults if lower not in given]
        for name, value in headers.items():
            value.encode("ascii")  # httpx's check: UnicodeEncodeError, mapped by the caller
            lines.append((name, value))
        return lines


class _Opened:
    """:meth:`_Client.open` through httpx's request: ``async with`` gives the response,
    leaving closes it (the connection of a body not read to its end is closed)."""

    __slots__ = ("_client", "_request", "_response")

    def __init__(self, client: _Client, request: httpx.Request) -> None:
        self._client = client
        self._request = request
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        client, request = self._client, self._request
        for hook in client.event_hooks["request"]:
            await hook(request)
        response = await client._sender.handle_async_request(request)
        response.request = request
        client.cookies.extract_cookies(response)
        self._response = response
        return response

    async def __aexit__(self, *_exc: object) -> None:
        if self._response is not None:
            await self._response.aclose()


class _Direct:
    """:meth:`_Client.open` without httpx's objects (:meth:`AiohttpTransport.reply`)."""

    __slots__ = ("_client", "_content", "_headers", "_method", "_reply", "_url")

    def __init__(self, client: _Client, method: str, url: str, headers: Mapping[str, str] | None,
                 content: bytes | None) -> None:
        self._client = client
        self._method = method
        self._url = url
        self._headers = headers
        self._content = content
        self._reply: Reply | None = None

    async def __aenter__(self) -> Reply:
        client = self._client
        text, target = client._target(self._url)
        # An exception names the URL only (no headers: the key stays out of it).
        request = functools.partial(httpx.Request, self._method, text)
        lines = client._lines(self._headers)
        if client._guard is not None:
            reason = client._guard(text)
            if reason is not None:
                raise remote_refused(reason, request())
        timeout = client.timeout
        assert client._direct is not None
        reply = await client._direct.reply(
            self._method, target, lines, self._content,
            {"connect": timeout.connect, "read": timeout.read, "pool": timeout.pool}, request)
        if "set-cookie" in reply.headers:
            client.cookies.extract_cookies(reply.head())
        self._reply = reply
        return reply

    async def __aexit__(self, *_exc: object) -> None:
        if self._reply is not None:
            await self._reply.aclose()


def remote_refused(reason: str, request: httpx.Request) -> httpx.ConnectError:
    """The failure of a request ``MODEL_SIDECAR_DENY_REMOTE`` does not let out."""
    return httpx.ConnectError(f"remote connections are disabled (MODEL_SIDECAR_DENY_REMOTE): {reason}",
                              request=request)


def open_response(client: httpx.AsyncClient, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                  content: bytes | None = None, params: httpx.QueryParams | Mapping[str, Any] | None = None,
                  ) -> contextlib.AbstractAsyncContextManager[Answer]:
    """``client.stream(...)``, through :meth:`_Client.open` when the client is one of ours."""
    if isinstance(client, _Client):
        return client.open(method, url, headers=headers, content=content, params=params)
    return client.stream(method, url, headers=headers, content=content, params=params)


class HttpClientFactory:
    """Builds the one pooled ``httpx.AsyncClient`` of each provider.

    Each client gets its provider's TLS context and proxy (decided in
    :mod:`sidecar.providers.network`) in its own transport: aiohttp's
    (:class:`~sidecar.providers.aio_transport.AiohttpTransport`, the default) or httpx's
    (``aiohttp=False``). ``transport`` replaces both for every client (tests); it then
    carries its own trust and proxy. ``env`` is where ``SSL_CERT_FILE``/``SSL_CERT_DIR``
    are read (the process environment by default).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, deny_remote: bool = False,
                 aiohttp: bool = True, env: Mapping[str, str] | None = None) -> None:
        self._transport = transport
        #: Each client gets its own :class:`AiohttpTransport` (unless ``transport`` is given).
        self.aiohttp = aiohttp
        self._env = os.environ if env is None else env
        self._contexts: dict[Trust, ssl.SSLContext] = {}
        #: Refuse every non-loopback request before it connects (``MODEL_SIDECAR_DENY_REMOTE``):
        #: the test suite runs with it, so a routing bug can never reach the internet.
        self.deny_remote = deny_remote

    def _hook(self, guard: Callable[[str], str | None]) -> Callable[[httpx.Request], Awaitable[None]]:
        async def hook(request: httpx.Request) -> None:
            reason = guard(str(request.url))
            if reason is not None:
                raise remote_refused(reason, request)
        return hook

    def trust(self, settings: ProviderSettings) -> Trust:
        """What the provider's TLS trusts (its entry, and the sidecar's environment)."""
        return Trust(ca_file=settings.ca_file, insecure=settings.insecure_skip_verify,
                     cert_file=self._env.get("SSL_CERT_FILE") or None,
                     cert_dir=self._env.get("SSL_CERT_DIR") or None)

    def ssl_context(self, trust: Trust) -> ssl.SSLContext:
        """One context per distinct trust: loading the system store costs ~20 ms.

        Raises:
            SetupFailed: a CA file or directory cannot be used.
        """
        ctx = self._contexts.get(trust)
        if ctx is None:
            ctx = self._contexts[trust] = build_ssl_context(trust)
            log.info("tls_trust", store="none (insecureSkipVerify)" if trust.insecure else system_trust(),
                     caFile=trust.ca_file, sslCertFile=trust.cert_file, sslCertDir=trust.cert_dir)
        return ctx

    def _transport_for(self, settings: ProviderSettings, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
        proxy = settings.proxy
        problem = proxy_problem(proxy) if proxy is not None else None
        if problem is not None:
            # A configured proxy was validated when stored: this one came from the environment.
            return _Explained(None, proxy, SetupFailed(
                f"the proxy from the environment (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) cannot be used: {problem}"))
        if self._transport is not None:
            return _Explained(self._transport, proxy)
        try:
            needs_tls = settings.base_url.startswith("https://") or (proxy or "").startswith("https://")
            ctx = self.ssl_context(self.trust(settings)) if needs_tls else None
        except SetupFailed as exc:
            log.warning("provider_tls_unusable", provider=settings.name, problem=exc.explanation)
            return _Explained(None, proxy, exc)
        inner: httpx.AsyncBaseTransport
        if self.aiohttp:
            inner = AiohttpTransport(verify=ctx if ctx is not None else True, proxy=proxy, trust_env=False,
                                     limits=limits)
        else:
            inner = _Gated(httpx.AsyncHTTPTransport(
                verify=ctx if ctx is not None else True, limits=limits, trust_env=False,
                proxy=None if proxy is None else httpx.Proxy(
                    proxy, ssl_context=ctx if proxy.startswith("https://") else None)), limits.max_connections)
        return _Explained(inner, proxy)

    def build(self, settings: ProviderSettings) -> httpx.AsyncClient:
        # One read may last as long as the attempt's longest wait: a model load on a local server.
        timeout_s, connect_s = timeouts.timeouts(settings).whole, (settings.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_IDLE_CONNECTIONS,
                              keepalive_expiry=30)
        guard = functools.partial(deny_remote_reason, proxy=settings.proxy) if self.deny_remote else None
        return _Client(
            event_hooks={"request": [self._hook(guard)]} if guard is not None else None,
            guard=guard,
            base_url=settings.base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=min(DEFAULT_CONNECT_TIMEOUT_S, connect_s)),
            # Proxies are chosen per provider (network.choose_proxy), never by httpx itself.
            trust_env=False,
            follow_redirects=False,
            transport=self._transport_for(settings, limits),
        )


async def raise_for_error(response: Answer, *, provider: str, model: str | None) -> None:
    """Raise the typed error of a non-2xx response; only the first 64 KiB of its body are
    read (a message fits, a hostile body of any size does not get buffered)."""
    if response.is_error:
        body = await read_prefix(response, ERROR_BODY_BYTES)
        raise error_from_status(response.status_code, response.headers, body, provider=provider, model=model)


async def read_prefix(response: Answer, limit: int) -> bytes:
    """At most about ``limit`` bytes of a streamed body; the rest is left unread."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def read_body(response: Answer, limit: int) -> bytes:
    """A whole (decompressed) body of at most ``limit`` bytes, else :class:`ResponseTooLarge`.

    Only for responses opened with ``client.stream``: leaving the block then closes the
    connection of a body cut short.
    """
    headers = response.headers
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge("body", limit)
    parts: list[bytes] = []
    size = 0
    # Without a Content-Encoding the raw bytes are the body: one generator layer (and
    # httpx's decoder and chunker) fewer per response.
    chunks = response.aiter_bytes() if "content-encoding" in headers else response.aiter_raw()
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge("body", limit)
        parts.append(chunk)
    return b"".join(parts)


async def fetch_json(client: httpx.AsyncClient, method: str, url: str, *, provider: str, model: str | None,
                     max_bytes: int, local_url: str | None = None,
                     seen: Callable[[Answer], None] | None = None,
                     headers: Mapping[str, str] | None = None, content: bytes | None = None,
                     params: httpx.QueryParams | Mapping[str, Any] | None = None) -> Any:
    """One non-streamed request: the parsed JSON body of a 2xx answer of at most
    ``max_bytes`` bytes, else the typed error (``seen`` gets the response first, for its
    rate-limit headers)."""
    with map_http_errors(provider, model, local_url=local_url):
        async with open_response(client, method, url, headers=headers, content=content, params=params) as response:
            if seen is not None:
                seen(response)
            await raise_for_error(response, provider=provider, model=model)
            body = await read_body(response, max_bytes)
    return loads_body(body, provider=provider, model=model)


async def probe(client: httpx.AsyncClient, url: str, *, headers: Mapping[str, str] | None = None,
                params: Mapping[str, str | int] | None = None) -> httpx.Response | None:
    """A health probe: the response (its body read up to 64 KiB), or None when the
    server cannot be reached at all. Never raises."""
    try:
        async with client.stream("GET", url, headers=headers, params=params) as response:
            await read_prefix(response, ERROR_BODY_BYTES)
    except (httpx.HTTPError, UnicodeEncodeError) as exc:
        if isinstance(exc, TlsRejected | ProxyFailed | SetupFailed):
            _PROBE_PROBLEMS[client] = exc.explanation
        else:
            _PROBE_PROBLEMS.pop(client, None)
        return None
    _PROBE_PROBLEMS.pop(client, None)
    return response


#: Why the last probe through a client failed, when the TLS or proxy layer explained it.
_PROBE_PROBLEMS: weakref.WeakKeyDictionary[httpx.AsyncClient, str] = weakref.WeakKeyDictionary()


def probe_problem(client: httpx.AsyncClient) -> str | None:
    """The explained TLS or proxy failure of the client's last probe (``model:health``
    shows it instead of a bare "not reachable"); None after a probe that got an answer."""
    return _PROBE_PROBLEMS.get(client)
