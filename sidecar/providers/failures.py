"""Where httpx exceptions and HTTP error answers become :mod:`sidecar.errors` classes.

Transport failures map by exception type to fixed messages (an httpx message may quote
a request header, so a key); an error status or an error object inside a 200 maps by
status and the provider's error type, keeping the provider's own text in
``ProviderError.upstream``. No key ever leaves through an error (:func:`redact_errors`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

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
from sidecar.providers.guard import oversized
from sidecar.providers.headers import parse_retry_after_ms
from sidecar.providers.network import ProxyFailed, SetupFailed, TlsRejected
from sidecar.secrets import REDACTED, secret_variants

__all__ = [
    "LocalServerDown",
    "ResponseTooLarge",
    "error_from_payload",
    "error_from_status",
    "map_http_errors",
    "read_error_body",
    "redact_errors",
]


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
    if isinstance(exc, TlsRejected | SetupFailed):
        # A certificate or a setting that is wrong now will be wrong on the next try too.
        return NetworkError(f"{provider}: {exc.explanation}", retryable=False, **ctx)
    if isinstance(exc, ProxyFailed):
        return NetworkError(f"{provider}: {exc.explanation}", retryable=exc.retryable, **ctx)
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


_NO_CREDIT = re.compile(r"credit balance is too low", re.IGNORECASE)
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
    if message and _NO_CREDIT.search(message):
        # Anthropic answers an exhausted credit balance with 400 invalid_request_error
        # (https://docs.anthropic.com/en/api/errors): the account, not the request, is at
        # fault, so another provider may serve it.
        return AuthenticationError(text, retryable=False, **ctx)
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
