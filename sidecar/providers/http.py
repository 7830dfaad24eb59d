"""The providers' HTTP plumbing: the client factory, one request and its body.

This is the only module that builds ``httpx.AsyncClient`` objects (so the transport can
be swapped in one place). Failures map to typed errors in
:mod:`sidecar.providers.failures`, rate-limit headers are read in
:mod:`sidecar.providers.headers`, stream bodies are framed in
:mod:`sidecar.providers.framing`.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx

from sidecar.providers.base import ProviderSettings
from sidecar.providers.failures import ResponseTooLarge, error_from_status, map_http_errors
from sidecar.providers.framing import loads_body
from sidecar.providers.guard import ERROR_BODY_BYTES

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_MS",
    "HttpClientFactory",
    "fetch_json",
    "is_loopback_url",
    "probe",
    "raise_for_error",
    "read_body",
    "read_prefix",
]


#: Per-attempt read timeout when the provider entry sets no ``timeoutMs``.
DEFAULT_TIMEOUT_MS = 120_000


DEFAULT_CONNECT_TIMEOUT_S = 5.0


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine: a loopback IP literal or ``localhost``.

    Names are never matched by prefix (``127.attacker.example`` is not local), and no
    name other than ``localhost`` is trusted, since resolving it could lead anywhere.
    """
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class HttpClientFactory:
    """Builds the one pooled ``httpx.AsyncClient`` of each provider.

    ``transport`` replaces httpx's default transport for every client (the benchmark
    issue compares the aiohttp-backed one); tests keep the default and talk to real
    loopback servers.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *, deny_remote: bool = False) -> None:
        self._transport = transport
        self._ssl: ssl.SSLContext | None = None
        #: Refuse every non-loopback request before it connects (``MODEL_SIDECAR_DENY_REMOTE``):
        #: the test suite runs with it, so a routing bug can never reach the internet.
        self.deny_remote = deny_remote

    async def _guard(self, request: httpx.Request) -> None:
        if not is_loopback_url(str(request.url)):
            raise httpx.ConnectError(
                f"remote connections are disabled (MODEL_SIDECAR_DENY_REMOTE): {request.url.host}",
                request=request,
            )

    def _ssl_context(self) -> ssl.SSLContext:
        # Loading the CA bundle costs ~25 ms: do it once, and only for a TLS provider.
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=certifi.where())
        return self._ssl

    def build(self, settings: ProviderSettings) -> httpx.AsyncClient:
        timeout_s = (settings.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
        tls = settings.base_url.startswith("https://")
        return httpx.AsyncClient(
            verify=self._ssl_context() if tls else True,
            event_hooks={"request": [self._guard]} if self.deny_remote else None,
            base_url=settings.base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=min(DEFAULT_CONNECT_TIMEOUT_S, timeout_s)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30),
            # Local servers are reached directly; a system proxy must never see them.
            trust_env=not settings.local,
            follow_redirects=False,
            transport=self._transport,
        )


async def raise_for_error(response: httpx.Response, *, provider: str, model: str | None) -> None:
    """Raise the typed error of a non-2xx response; only the first 64 KiB of its body are
    read (a message fits, a hostile body of any size does not get buffered)."""
    if response.is_error:
        body = await read_prefix(response, ERROR_BODY_BYTES)
        raise error_from_status(response.status_code, response.headers, body, provider=provider, model=model)


async def read_prefix(response: httpx.Response, limit: int) -> bytes:
    """At most about ``limit`` bytes of a streamed body; the rest is left unread."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """A whole (decompressed) body of at most ``limit`` bytes, else :class:`ResponseTooLarge`.

    Only for responses opened with ``client.stream``: leaving the block then closes the
    connection of a body cut short.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge("body", limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge("body", limit)
        parts.append(chunk)
    return b"".join(parts)


async def fetch_json(client: httpx.AsyncClient, method: str, url: str, *, provider: str, model: str | None,
                     max_bytes: int, local_url: str | None = None,
                     seen: Callable[[httpx.Response], None] | None = None, **kwargs: Any) -> Any:
    """One non-streamed request: the parsed JSON body of a 2xx answer of at most
    ``max_bytes`` bytes, else the typed error (``seen`` gets the response first, for its
    rate-limit headers)."""
    with map_http_errors(provider, model, local_url=local_url):
        async with client.stream(method, url, **kwargs) as response:
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
            return response
    except (httpx.HTTPError, UnicodeEncodeError):
        return None
