"""Everything HTTP the providers share: the client factory, error mapping, stream framing.

This is the only module that builds ``httpx.AsyncClient`` objects (so the transport can
be swapped in one place) and the one seam where httpx exceptions and HTTP statuses become
:mod:`sidecar.errors` classes. Stream bodies are split as bytes, on ``\\n`` only (NDJSON)
or on ``\\r\\n``, ``\\r``, ``\\n`` (SSE): never by ``str.splitlines``, which would also
split on U+2028/U+2029 that JSON leaves raw. Every line, event and body is bounded (see
:mod:`sidecar.providers.guard`), so no server can make the sidecar buffer without end.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx
import httpx_sse
import orjson

from sidecar.errors import (
    AuthenticationError,
    ModelError,
    NetworkError,
    ProviderError,
    RateLimitError,
    SidecarError,
    ValidationError,
)
from sidecar.providers.base import ProviderSettings, RateLimitSnapshot
from sidecar.providers.guard import ERROR_BODY_BYTES, oversized
from sidecar.secrets import REDACTED, secret_variants

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_MS",
    "HttpClientFactory",
    "LocalServerDown",
    "ResponseTooLarge",
    "SSEEvent",
    "aiter_ndjson",
    "aiter_sse",
    "as_count",
    "error_from_payload",
    "error_from_status",
    "fetch_json",
    "finish_body",
    "is_loopback_url",
    "loads_body",
    "map_http_errors",
    "parse_go_duration_ms",
    "parse_rate_limit",
    "parse_retry_after_ms",
    "probe",
    "raise_for_error",
    "read_body",
    "read_error_body",
    "read_prefix",
    "redact_errors",
    "text_or",
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


class LocalServerDown(ModelError):
    """A local provider's server refused the connection: it is not running.

    Reported as ``ModelError`` (the model cannot be reached, another may), never retried
    on the same server within a request, and provider-wide: the server's other models
    are down with it.
    """

    retry_same = False
    provider_wide = True


class ResponseTooLarge(Exception):
    """A line, event or body passed its size bound (mapped to an oversized ``ModelError``)."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(what)
        self.what = what
        self.limit = limit


def _refused(exc: BaseException) -> bool:
    """Whether a connect failure was a refusal (typed: the OS error in the cause chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def map_http_errors(provider: str, model: str | None, *, local_url: str | None = None) -> Iterator[None]:
    """Translate httpx failures raised inside the block into :class:`NetworkError` and kin.

    Messages of exceptions that can quote the request (its headers, so the key, or its
    URL) are never passed on: those get a fixed text chosen by exception type.
    ``local_url`` is the base URL of a local provider: a refused connection there says
    that its server is not running.
    """
    try:
        yield
    except ResponseTooLarge as exc:
        raise oversized(provider, model, exc.what, exc.limit) from exc
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeEncodeError) as exc:
        error = _mapped(exc, provider, model, local_url)
        if error is None:
            raise
        raise error from exc


def _mapped(exc: Exception, provider: str, model: str | None, local_url: str | None) -> ProviderError | None:
    """The typed error of one httpx failure (None: not one this layer maps)."""
    ctx: dict[str, Any] = {"provider": provider, "model_id": model}
    if isinstance(exc, httpx.TimeoutException):
        phase = type(exc).__name__.replace("Timeout", "").lower() or "request"
        return NetworkError(f"{provider}: {phase} timed out", **ctx)
    if isinstance(exc, httpx.ConnectError):
        if local_url is not None and _refused(exc):
            return LocalServerDown(
                f"{provider}: the local server at {local_url} is not running (connection refused)", **ctx)
        return NetworkError(f"{provider}: could not connect ({_reason(exc)})", **ctx)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError | httpx.CloseError):
        # Raised on the response side (or by the socket): they never quote the request.
        return NetworkError(f"{provider}: connection broken ({_reason(exc)})", **ctx)
    if isinstance(exc, httpx_sse.SSEError):  # an httpx.TransportError: checked before those
        return ModelError(f"{provider}: expected an event stream ({exc})", **ctx)
    if isinstance(exc, httpx.LocalProtocolError):
        # h11 refuses a header value with control characters and quotes it whole: the key.
        return AuthenticationError(
            f"{provider}: cannot send the request: the API key or a header value holds a "
            "character HTTP does not allow (a trailing newline?)", retryable=False, **ctx)
    if isinstance(exc, httpx.TransportError):
        return NetworkError(f"{provider}: transport failure ({type(exc).__name__})", **ctx)
    if isinstance(exc, UnicodeEncodeError):
        return AuthenticationError(
            f"{provider}: cannot send the request: the API key or a header value is not ASCII",
            retryable=False, **ctx)
    if isinstance(exc, httpx.InvalidURL):
        # A request that cannot even be built: the config is wrong, retrying will not help.
        return ValidationError(f"{provider}: cannot build the request (invalid URL)", retryable=False, **ctx)
    if isinstance(exc, httpx.DecodingError):
        return ModelError(f"{provider}: undecodable response body", **ctx)
    return None


@contextmanager
def redact_errors(*secrets: str | None) -> Iterator[None]:
    """Strip the provider's secrets from any error leaving the block (servers and proxies
    echo them), in every form :func:`sidecar.secrets.secret_variants` knows."""
    try:
        yield
    except SidecarError as exc:
        needles = sorted(secret_variants(secrets), key=len, reverse=True)
        if needles:
            exc.message = _redact(exc.message, needles)
            exc.args = (exc.message,)
            for key, value in list(exc.extra.items()):
                if isinstance(value, str):
                    exc.extra[key] = _redact(value, needles)
        raise


def _redact(text: str, needles: list[str]) -> str:
    for needle in needles:
        if needle in text:
            text = text.replace(needle, REDACTED)
    return text


#: Token counts above this are nonsense from a broken server; clamping keeps sums exact
#: for JavaScript hosts and inside JSON's safe integer range.
MAX_TOKEN_COUNT = 2**40


def as_count(value: object) -> int:
    """A token count from a provider body: an int clamped to 0..2^40; anything else is 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, 0), MAX_TOKEN_COUNT)
    return 0


def text_or(value: object, default: str) -> str:
    """``value`` when it is a non-empty string, else ``default``."""
    return value if isinstance(value, str) and value else default


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def read_error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """Pull ``(message, type, code)`` out of any provider's error envelope.

    Handles OpenAI/llama.cpp ``{"error": {...}}``, Anthropic ``{"type": "error",
    "error": {...}}`` and Ollama ``{"error": "..."}``; other bodies give a trimmed text.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:300] or None), None, None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, str):
            return err, None, None
        if isinstance(err, dict):
            code = err.get("code")
            return (
                _as_str(err.get("message")),
                _as_str(err.get("type")),
                None if code is None else str(code),
            )
        if isinstance(data.get("message"), str):
            return data["message"], None, None
    return None, None, None


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


_CONTEXT_PATTERNS = re.compile(
    r"context[_ ]length|context window|maximum context|prompt is too long|too many tokens"
    r"|exceeds the context|input is too long|num_ctx|available context size|exceed_context_size",
    re.IGNORECASE,
)


def error_from_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str,
    model: str | None,
) -> ProviderError:
    """Map an HTTP error response to the contract's typed error, keeping the message."""
    message, err_type, code = read_error_body(body)
    text = f"{provider}: {message or f'HTTP {status}'}"
    ctx: dict[str, Any] = {"provider": provider, "model_id": model, "status": status, "upstream": message}
    retry_after = parse_retry_after_ms(headers)
    should_retry = headers.get("x-should-retry")
    retryable = None if should_retry is None else should_retry.strip().lower() == "true"
    if err_type:
        ctx["extra"] = {"providerType": err_type} | ({"providerCode": code} if code else {})
    if status in (401, 403) or err_type in ("authentication_error", "permission_error"):
        return AuthenticationError(text, retryable=False, **ctx)
    if status == 402 or err_type == "billing_error":
        return AuthenticationError(text, retryable=False, **ctx)
    if status == 429:
        quota = "quota" in (err_type or "") or "quota" in (code or "") or code == "credit_balance_exhausted"
        return RateLimitError(
            text,
            retry_after_ms=retry_after,
            retryable=False if quota else retryable,
            **ctx,
        )
    if status in (408, 499):
        return NetworkError(text, retry_after_ms=retry_after, retryable=retryable, **ctx)
    if status == 404:
        return ModelError(text, retryable=False if retryable is None else retryable, **ctx)
    if status >= 500 or status == 409:
        return ModelError(text, retry_after_ms=retry_after, retryable=retryable, **ctx)
    too_long = (
        code == "context_length_exceeded"
        or err_type == "exceed_context_size_error"  # llama.cpp server
        or bool(message and _CONTEXT_PATTERNS.search(message))
    )
    return ValidationError(text, context_too_long=too_long, retryable=False, **ctx)


# Error types seen in payloads that arrive with HTTP 200 (mid-stream or in the body):
# OpenAI (https://platform.openai.com/docs/guides/error-codes), Anthropic
# (https://docs.anthropic.com/en/api/errors), llama.cpp's server (https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md).
_PAYLOAD_RATE_LIMIT = {"rate_limit_error", "rate_limit_exceeded", "requests", "tokens"}
_PAYLOAD_AUTH = {"authentication_error", "permission_error", "billing_error"}
_PAYLOAD_TRANSIENT = {"server_error", "api_error", "overloaded_error", "service_unavailable", "timeout_error"}
_PAYLOAD_REQUEST_PROBLEM = {"invalid_request_error", "not_found_error", "request_too_large"}


def error_from_payload(error: object, *, provider: str, model: str | None) -> ProviderError:
    """Map an error object that came inside a 200 response (``{"type", "message", "code"}``
    or a bare string) to the typed error; overload and server errors stay retryable."""
    if isinstance(error, dict):
        message = error.get("message") if isinstance(error.get("message"), str) else None
        err_type = str(error.get("type") or "")
        code = str(error.get("code") or "")
    else:
        message, err_type, code = (error if isinstance(error, str) else None), "", ""
    text = f"{provider}: {message or 'error in stream'}"
    ctx: dict[str, Any] = {"provider": provider, "model_id": model, "upstream": message}
    if err_type:
        ctx["extra"] = {"providerType": err_type}
    if err_type in _PAYLOAD_RATE_LIMIT or code == "rate_limit_exceeded":
        return RateLimitError(text, **ctx)
    if err_type in _PAYLOAD_AUTH:
        return AuthenticationError(text, retryable=False, **ctx)
    if err_type in _PAYLOAD_TRANSIENT:
        return ModelError(text, retryable=True, **ctx)
    return ModelError(text, retryable=err_type not in _PAYLOAD_REQUEST_PROBLEM, **ctx)


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


def parse_retry_after_ms(headers: Mapping[str, str], now: float | None = None) -> int | None:
    """Read ``retry-after-ms`` (checked first) or ``retry-after`` (seconds or HTTP-date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms)
        except ValueError:
            value = -1.0
        if value >= 0:
            return int(value)
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0, int(seconds * 1000))


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_go_duration_ms(value: str) -> int | None:
    """Parse OpenAI's reset durations (``12ms``, ``6m0s``, ``1h2m3s``, ``33.023s``)."""
    value = value.strip()
    parts = _GO_DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return int(sum(float(n) * _UNIT_MS[u] for n, u in parts))


def _rfc3339_to_ms(value: str, now: float | None) -> int | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int((when.timestamp() - (time.time() if now is None else now)) * 1000))


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def parse_rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitSnapshot | None:
    """Read OpenAI's ``x-ratelimit-*`` or Anthropic's ``anthropic-ratelimit-*`` headers."""
    if "x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers:
        reset_req = headers.get("x-ratelimit-reset-requests")
        reset_tok = headers.get("x-ratelimit-reset-tokens")
        return RateLimitSnapshot(
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_requests_ms=parse_go_duration_ms(reset_req) if reset_req else None,
            reset_tokens_ms=parse_go_duration_ms(reset_tok) if reset_tok else None,
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        )
    prefix = "anthropic-ratelimit-"
    if prefix + "requests-remaining" in headers or prefix + "tokens-remaining" in headers:
        reset_req = headers.get(prefix + "requests-reset")
        reset_tok = headers.get(prefix + "tokens-reset") or headers.get(prefix + "input-tokens-reset")
        return RateLimitSnapshot(
            remaining_requests=_int(headers.get(prefix + "requests-remaining")),
            remaining_tokens=_int(
                headers.get(prefix + "tokens-remaining") or headers.get(prefix + "input-tokens-remaining")
            ),
            reset_requests_ms=_rfc3339_to_ms(reset_req, now) if reset_req else None,
            reset_tokens_ms=_rfc3339_to_ms(reset_tok, now) if reset_tok else None,
            limit_requests=_int(headers.get(prefix + "requests-limit")),
            limit_tokens=_int(headers.get(prefix + "tokens-limit")),
        )
    return None


#: A ``\\uD800``-``\\uDFFF`` escape: half of a surrogate pair, which orjson refuses alone.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def loads_body(body: bytes | str, *, provider: str, model: str | None) -> Any:
    """Parse a JSON body or stream payload; garbage becomes a retryable :class:`ModelError`.

    A payload with a lone surrogate escape (half an emoji, from a server that cut its text
    by UTF-16 units) is valid JSON that orjson refuses: the standard library parses it,
    and :class:`~sidecar.providers.guard.SurrogateJoiner` mends the text afterwards.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        if _SURROGATE_ESCAPE.search(raw):
            try:
                return json.loads(raw, parse_constant=_no_constant)
            except ValueError:
                pass
        snippet = raw[:80].decode("utf-8", "replace")
        raise ModelError(
            f"{provider}: malformed JSON from the provider ({snippet!r})",
            provider=provider,
            model_id=model,
        ) from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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


_SSE_EOL = re.compile(rb"\r\n|\r|\n")
_LF = re.compile(rb"\n")


async def _aiter_lines(response: httpx.Response, max_bytes: int, *, sse: bool) -> AsyncIterator[bytes]:
    """The lines of a body as bytes, none longer than ``max_bytes`` (:class:`ResponseTooLarge`).

    Split on bytes, so a multi-byte UTF-8 character cut between two reads is whole again
    in its line; SSE lines end at ``\r\n``, ``\r`` or ``\n``, NDJSON lines at ``\n``
    only. A long line is kept as a list of pieces: no copy grows per read.
    """
    eol = _SSE_EOL if sse else _LF
    parts: list[bytes] = []
    size = 0
    skip_lf = False  # a \r ended the last read; a \n opening this one belongs to it
    async for chunk in response.aiter_bytes():
        if not chunk:
            continue
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        skip_lf = sse and chunk.endswith(b"\r")
        pos = 0
        for match in eol.finditer(chunk):
            piece = chunk[pos:match.start()]
            if size + len(piece) > max_bytes:
                raise ResponseTooLarge("stream line", max_bytes)
            parts.append(piece)
            yield b"".join(parts)
            parts, size, pos = [], 0, match.end()
        rest = chunk[pos:]
        if rest:
            size += len(rest)
            if size > max_bytes:
                raise ResponseTooLarge("stream line", max_bytes)
            parts.append(rest)
    if parts:
        yield b"".join(parts)


async def aiter_ndjson(response: httpx.Response, max_bytes: int) -> AsyncIterator[bytes]:
    """Yield the non-empty lines of an NDJSON body, split on the byte ``\n`` only."""
    async for line in _aiter_lines(response, max_bytes, sse=False):
        line = line.rstrip(b"\r")
        if line.strip():
            yield line


#: How long the end of a body may take to arrive after the stream's terminator.
FINISH_BODY_TIMEOUT_S = 0.1


async def finish_body(rest: AsyncIterator[object], *, limit: int = 64) -> None:
    """Read what follows a stream's terminator (``[DONE]``, ``message_stop``, ``done``).

    Breaking out at the terminator leaves the end of the chunked body unread, and httpx
    then closes the connection instead of pooling it: every stream would pay a new TCP
    (and TLS) handshake. A server that does not end the body promptly, or keeps sending,
    just loses the connection; nothing here fails the answer already received.
    """
    try:
        async with asyncio.timeout(FINISH_BODY_TIMEOUT_S):
            count = 0
            async for _ in rest:
                count += 1
                if count >= limit:
                    return
    except (TimeoutError, httpx.HTTPError):
        return


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched Server-Sent Event: its type (``message`` when unnamed) and data."""

    event: str
    data: bytes


async def aiter_sse(response: httpx.Response, max_bytes: int) -> AsyncIterator[SSEEvent]:
    """Yield the events of an SSE body (WHATWG HTML, "Parsing an event stream").

    An event's data may not pass ``max_bytes`` (:class:`ResponseTooLarge`); an event left
    without its closing blank line at the end of the body is dropped, as the spec says.
    """
    content_type = response.headers.get("content-type", "").partition(";")[0]
    if "text/event-stream" not in content_type:
        raise httpx_sse.SSEError(f"got Content-Type {content_type[:60]!r}")
    name = b""
    data: list[bytes] = []
    size = 0
    async for line in _aiter_lines(response, max_bytes, sse=True):
        if not line:
            if data or name:
                yield SSEEvent(name.decode("utf-8", "replace") or "message", b"\n".join(data))
            name, data, size = b"", [], 0
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            size += len(value) + 1
            if size > max_bytes:
                raise ResponseTooLarge("stream event", max_bytes)
            data.append(value)
        elif field == b"event":
            name = value
        # Comments (an empty field name), id, retry and unknown fields are ignored.
