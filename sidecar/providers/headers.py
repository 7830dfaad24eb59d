"""Rate-limit and retry headers: ``Retry-After`` (seconds or an HTTP date),
``retry-after-ms``, OpenAI's ``x-ratelimit-*`` (Go durations such as ``6m0s``) and
Anthropic's ``anthropic-ratelimit-*`` (RFC 3339 reset times).

OpenAI: https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers;
Anthropic: https://docs.anthropic.com/en/api/rate-limits#response-headers.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from sidecar.providers.base import RateLimitSnapshot

__all__ = [
    "parse_go_duration_ms",
    "parse_rate_limit",
    "parse_retry_after_ms",
]


#: Header values are clamped here: a hostile server's ``inf`` or 400-digit number must
#: neither crash the request nor reach a host as an integer JavaScript cannot hold.
_MAX_HEADER_VALUE = 10**12


def _number(raw: str) -> float | None:
    """A finite, non-negative number from a header value, clamped; None otherwise."""
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, float(_MAX_HEADER_VALUE))


def parse_retry_after_ms(headers: Mapping[str, str], now: float | None = None) -> int | None:
    """Read ``retry-after-ms`` (checked first) or ``retry-after`` (seconds or HTTP-date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms and (value := _number(raw_ms)) is not None:
        return int(value)
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _number(raw)
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0, int(min(seconds * 1000, _MAX_HEADER_VALUE)))


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")


_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_go_duration_ms(value: str) -> int | None:
    """Parse OpenAI's reset durations (``12ms``, ``6m0s``, ``1h2m3s``, ``33.023s``)."""
    value = value.strip()
    parts = _GO_DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    total = sum(float(n) * _UNIT_MS[u] for n, u in parts)
    return int(total) if math.isfinite(total) and total <= _MAX_HEADER_VALUE else None


def _rfc3339_to_ms(value: str, now: float | None) -> int | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = (when.timestamp() - (time.time() if now is None else now)) * 1000
    return max(0, int(min(ms, _MAX_HEADER_VALUE)))


def _int(value: str | None) -> int | None:
    number = None if value is None else _number(value)
    return None if number is None else int(number)


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
