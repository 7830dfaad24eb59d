"""Every failure comes out as a typed sidecar error, with the provider's message and no key.

Status errors, timeouts, broken and poisoned streams run against all four wire
protocols through both ``generate`` and ``stream``. Each raised error is also checked
for the API key in its message, repr and wire data.
"""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from sidecar.errors import (
    AuthenticationError,
    ModelError,
    NetworkError,
    ProviderError,
    RateLimitError,
    ValidationError,
)
from sidecar.providers.base import StreamDelta
from sidecar.providers.failures import LocalServerDown
from tests.fakes import CutStream, Drip, Error, Hang, Malformed, MidStreamError, Raw, Reply
from tests.providers.conftest import API_KEY, Harness, run

pytestmark = pytest.mark.timeout(20)


def assert_clean(exc: ProviderError, harness: Harness, *, secret: str = API_KEY) -> None:
    """The error names its provider and model and never carries the key."""
    for text in (str(exc), repr(exc), exc.message, orjson.dumps(exc.to_data()).decode()):
        assert secret not in text
    assert exc.provider == harness.name


async def expect_error(
    harness: Harness, streaming: bool, error: type[ProviderError], **settings: object
) -> ProviderError:
    provider = harness.make(**settings)
    with pytest.raises(error) as info:
        await run(provider, harness.request(), streaming)
    assert_clean(info.value, harness)
    assert info.value.model_id == harness.model
    return info.value


# -- HTTP status errors -----------------------------------------------------------------------

STATUS_CASES = [
    # (status, expected class, retryable)
    (401, AuthenticationError, False),
    (403, AuthenticationError, False),
    (404, ModelError, False),
    (500, ModelError, True),
    (503, ModelError, True),
    (529, ModelError, True),
    (400, ValidationError, False),
]


@pytest.mark.parametrize(("status", "error", "retryable"), STATUS_CASES)
async def test_status_maps_to_typed_error(
    harness: Harness, streaming: bool, status: int, error: type[ProviderError], retryable: bool
) -> None:
    harness.server.enqueue(Error(status, message=f"upstream says {status}"))
    exc = await expect_error(harness, streaming, error)
    assert exc.status == status
    assert exc.retryable is retryable
    assert f"upstream says {status}" in exc.message  # the provider's own words are kept
    if isinstance(exc, ValidationError):
        assert not exc.context_too_long


@pytest.mark.parametrize(
    ("headers", "retry_after_ms"),
    [
        ({"retry-after": "2"}, 2000),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1500),
        ({}, None),
    ],
)
async def test_429_is_rate_limit_with_retry_after(
    harness: Harness, streaming: bool, headers: dict[str, str], retry_after_ms: int | None
) -> None:
    harness.server.enqueue(Error(429, headers=headers))
    exc = await expect_error(harness, streaming, RateLimitError)
    assert exc.retry_after_ms == retry_after_ms
    assert exc.retryable


async def test_429_still_records_rate_limit_headers(openai: Harness, streaming: bool) -> None:
    openai.server.enqueue(Error(429))
    provider = openai.make()
    with pytest.raises(RateLimitError):
        await run(provider, openai.request(), streaming)
    assert provider.last_rate_limit is not None
    assert provider.last_rate_limit.remaining_requests == 0


async def test_insufficient_quota_is_not_retryable(openai: Harness, streaming: bool) -> None:
    openai.server.enqueue(
        Error(429, error_type="insufficient_quota", code="insufficient_quota", message="quota")
    )
    exc = await expect_error(openai, streaming, RateLimitError)
    assert not exc.retryable


CONTEXT_TOO_LONG = {
    "openai": Error(
        400,
        message="This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130000 tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
        param="messages",
    ),
    "anthropic": Error(400, message="prompt is too long: 210000 tokens > 200000 maximum"),
    "ollama": Error(400, message="prompt too long; exceeded max context length by 12 tokens"),
    "llamacpp": Error(400, message="This model's maximum context length is 4096 tokens."),
}


async def test_context_too_long_is_flagged(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(CONTEXT_TOO_LONG[harness.kind])
    exc = await expect_error(harness, streaming, ValidationError)
    assert isinstance(exc, ValidationError)
    assert exc.context_too_long and exc.may_fall_back
    assert exc.to_data()["contextTooLong"] is True


async def test_llamacpp_context_size_error_is_flagged(llamacpp: Harness) -> None:
    llamacpp.server.enqueue(
        Error(
            400,
            message="the request exceeds the available context size, try increasing it",
            error_type="exceed_context_size_error",
        )
    )
    exc = await expect_error(llamacpp, False, ValidationError)
    assert isinstance(exc, ValidationError) and exc.context_too_long


# -- keys never leak ------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong_key", ["sk-test-WRONGWRONG9876", "sk-SHORT9876"])
@pytest.mark.parametrize("harness", ["openai", "anthropic"], indirect=True)
async def test_wrong_key_is_authentication_error_without_the_key(
    harness: Harness, streaming: bool, wrong_key: str
) -> None:
    # The OpenAI fake echoes keys of 12 characters or fewer unmasked, as the service does.
    provider = harness.make(api_key=wrong_key)
    with pytest.raises(AuthenticationError) as info:
        await run(provider, harness.request(), streaming)
    assert_clean(info.value, harness, secret=wrong_key)
    assert info.value.status == 401


async def test_echoed_key_is_redacted_from_any_error(harness: Harness, streaming: bool) -> None:
    """A server that quotes the key back (proxies do) must not get it into our messages."""
    harness.server.enqueue(Error(400, message=f"bad key {API_KEY} for this route"))
    provider = harness.make(api_key=API_KEY)
    with pytest.raises(ValidationError) as info:
        await run(provider, harness.request(), streaming)
    assert_clean(info.value, harness)
    assert "bad key" in info.value.message


# -- transport failures -----------------------------------------------------------------------------


async def test_hang_times_out_as_network_error(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Hang())
    started = time.monotonic()
    # A local server's first token may wait for a model load (firstTokenTimeoutMs, 120 s
    # by default): the HTTP client allows that one read as long; here it is short.
    exc = await expect_error(harness, streaming, NetworkError, timeout_ms=300, first_token_timeout_ms=300)
    assert time.monotonic() - started < 3
    assert exc.retryable
    assert "timed out" in exc.message


async def test_stalled_body_times_out_as_network_error(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Drip(interval_s=1.0))
    await expect_error(harness, streaming, NetworkError, timeout_ms=300, first_token_timeout_ms=300)


async def test_slow_but_steady_body_is_not_a_timeout(harness: Harness, streaming: bool) -> None:
    """The timeout bounds each read, not the whole answer."""
    harness.server.enqueue(Drip(interval_s=0.02, text="steady answer", chunk_size=256))
    result = await run(harness.make(timeout_ms=300), harness.request(), streaming)
    assert result.content == "steady answer"


@pytest.mark.parametrize("local", [False, True], ids=["remote", "local"])
async def test_connection_refused(harness: Harness, streaming: bool, local: bool) -> None:
    """Refused by a remote host: a network failure. Refused by a local server: it is not
    running, and the error says which server (a ModelError, not retried on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        base = f"http://127.0.0.1:{port}" + ("/v1" if harness.kind in ("openai", "llamacpp") else "")
        expected = LocalServerDown if local else NetworkError
        exc = await expect_error(harness, streaming, expected, base_url=base, local=local)
    if local:
        assert isinstance(exc, ModelError) and exc.type == "ModelError"
        assert f"the local server at {base} is not running" in exc.message
        assert exc.provider == harness.name and exc.retryable and not exc.may_retry_same
    else:
        assert "could not connect" in exc.message and not isinstance(exc, LocalServerDown)


async def test_cut_stream_is_network_error(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(CutStream(after_chunks=2, text="alpha beta gamma delta"))
    await expect_error(harness, streaming, NetworkError)


async def _collect_until_error(harness: Harness) -> tuple[list[StreamDelta], ProviderError]:
    deltas: list[StreamDelta] = []
    with pytest.raises(ProviderError) as info:
        async for delta in harness.make().stream(harness.request()):
            deltas.append(delta)
    assert_clean(info.value, harness)
    return deltas, info.value


async def test_cut_stream_delivers_first_deltas_then_network_error(harness: Harness) -> None:
    harness.server.enqueue(CutStream(after_chunks=2, text="alpha beta gamma delta"))
    deltas, exc = await _collect_until_error(harness)
    assert isinstance(exc, NetworkError)
    assert "".join(d.content for d in deltas) == "alpha beta"
    assert all(d.finish_reason is None for d in deltas)


UNTERMINATED = {
    "openai": (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":'
        b'[{"index":0,"delta":{"content":"partial"},"finish_reason":null}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":'
        b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        "text/event-stream",
    ),
    "llamacpp": (
        b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"partial"}}],"object":'
        b'"chat.completion.chunk"}\n\n',
        "text/event-stream",
    ),
    "anthropic": (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x","usage":'
        b'{"input_tokens":3,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":'
        b'"text_delta","text":"partial"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":2}}\n\n',
        "text/event-stream; charset=utf-8",
    ),
    "ollama": (
        b'{"model":"llama3.2","message":{"role":"assistant","content":"partial"},"done":false}\n',
        "application/x-ndjson",
    ),
}


async def test_clean_end_without_terminator_is_network_error(harness: Harness) -> None:
    """A stream that stops without [DONE] / message_stop / done:true is never a success."""
    body, content_type = UNTERMINATED[harness.kind]
    harness.server.enqueue(Raw(body=body, content_type=content_type))
    deltas, exc = await _collect_until_error(harness)
    assert isinstance(exc, NetworkError)
    assert "ended early" in exc.message
    assert "".join(d.content for d in deltas) == "partial"


# -- errors inside a 200 response ----------------------------------------------------------------------


async def test_mid_stream_error_after_first_deltas(harness: Harness) -> None:
    harness.server.enqueue(MidStreamError(after_chunks=1, message="boom upstream", text="first second third"))
    deltas, exc = await _collect_until_error(harness)
    assert "".join(d.content for d in deltas) == "first"
    assert isinstance(exc, ModelError)
    assert exc.retryable  # server_error / overloaded_error / Ollama runner error
    assert "boom upstream" in exc.message


async def test_mid_stream_error_without_stream_is_http_error(harness: Harness) -> None:
    harness.server.enqueue(MidStreamError(message="boom upstream"))
    exc = await expect_error(harness, False, ModelError)
    assert exc.retryable and exc.status in (500, 529)


MID_STREAM_TYPED = [
    (
        "anthropic",
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x"}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}\n\n',
        RateLimitError,
        True,
    ),
    (
        "anthropic",
        b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_error","message":"bad"}}\n\n',
        ModelError,
        False,
    ),
    (
        "openai",
        b'data: {"error":{"message":"Rate limit reached","type":"requests","param":null,'
        b'"code":"rate_limit_exceeded"}}\n\n',
        RateLimitError,
        True,
    ),
    (
        "openai",
        b'data: {"error":{"message":"odd","type":"invalid_request_error","param":null,"code":null}}\n\n',
        ModelError,
        False,
    ),
]


@pytest.mark.parametrize(("harness", "body", "error", "retryable"), MID_STREAM_TYPED, indirect=["harness"])
async def test_mid_stream_error_maps_by_type(
    harness: Harness, body: bytes, error: type[ProviderError], retryable: bool
) -> None:
    harness.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    _, exc = await _collect_until_error(harness)
    assert type(exc) is error
    assert exc.retryable is retryable


async def test_malformed_payload_is_model_error(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Malformed(after_chunks=1))
    exc = await expect_error(harness, streaming, ModelError)
    assert "malformed" in exc.message


@pytest.mark.parametrize(
    "body",
    [b"<html><body><h1>502 Bad Gateway</h1></body></html>", b"", b"[1, 2]"],
    ids=["html", "empty", "not-an-object"],
)
async def test_unexpected_200_body_is_model_error(harness: Harness, streaming: bool, body: bytes) -> None:
    harness.server.enqueue(
        Raw(body=body, content_type="text/html" if body.startswith(b"<") else "application/json")
    )
    # NDJSON has no content type to check: an empty Ollama stream reads as a stream that
    # ended before its done object, which is a (retryable) broken stream.
    empty_ndjson = harness.kind == "ollama" and streaming and not body
    await expect_error(harness, streaming, NetworkError if empty_ndjson else ModelError)


async def test_provider_recovers_after_errors(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Error(500), CutStream(), Reply(text="fine again"))
    provider = harness.make()
    for _ in range(2):
        with pytest.raises(ProviderError):
            await run(provider, harness.request(), streaming)
    assert (await run(provider, harness.request(), streaming)).content == "fine again"


async def test_a_key_http_cannot_carry_gets_a_fixed_message(harness: Harness, streaming: bool) -> None:
    """h11 quotes a refused header value whole ("Illegal header value b'Bearer sk-…'"): the
    error is chosen by exception type, and no piece of the key reaches its message."""
    head, tail = "sk-test-CTRLHEAD0123", "TAIL0123456789abcdef"
    exc = await expect_error(harness, streaming, AuthenticationError, api_key=f"{head}\n{tail}")
    text = str(exc) + repr(exc) + orjson.dumps(exc.to_data()).decode()
    assert head not in text and tail not in text and "Illegal header" not in text
    assert "character HTTP does not allow" in exc.message and not exc.retryable
    assert harness.server.requests == []


async def test_a_key_with_a_control_character_is_refused_before_sending(harness: Harness, streaming: bool) -> None:
    """RFC 9110 section 5.5 allows no control character but HTAB in a field value: the
    request is refused before anything is sent (a server would quote the key back, escaped),
    with an error that holds no part of the key. (Echoed escaped forms are scrubbed too:
    tests/test_secrets.py.)"""
    head, tail = "sk-test-CTRLHEAD0123", "TAIL0123456789abcdef"
    exc = await expect_error(harness, streaming, AuthenticationError, api_key=f"{head}\x01{tail}")
    assert not exc.retryable and harness.server.requests == []
    text = str(exc) + repr(exc) + orjson.dumps(exc.to_data()).decode()
    assert head not in text and tail not in text


async def test_a_key_with_surrounding_whitespace_is_sent_trimmed(harness: Harness, streaming: bool) -> None:
    """A key read from a file or the environment often ends in a newline."""
    harness.server.enqueue(Reply("fine"))
    result = await run(harness.make(api_key=f" {API_KEY}\n"), harness.request(), streaming)
    assert result.content == "fine"
    headers = harness.server.requests[0].headers
    assert API_KEY in (headers.get("authorization", "") + headers.get("x-api-key", ""))


HOSTILE_HEADERS = {
    "x-ratelimit-remaining-requests": "inf",
    "x-ratelimit-reset-requests": "9" * 400 + "h",
    "anthropic-ratelimit-requests-remaining": "1e999",
    "anthropic-ratelimit-requests-reset": "99999-01-01T00:00:00Z",
    "retry-after": "nan",
    "retry-after-ms": "-inf",
}


async def test_hostile_rate_limit_headers_are_ignored_not_fatal(harness: Harness, streaming: bool) -> None:
    # Regression: float('inf') -> int raised OverflowError out of the header parser, so the
    # answer ended as an internal error with no retry or fallback.
    harness.server.enqueue(Reply("still fine", headers=HOSTILE_HEADERS))
    provider = harness.make()
    result = await run(provider, harness.request(), streaming)
    assert result.content == "still fine"
    snapshot = provider.last_rate_limit
    assert snapshot is None or (snapshot.remaining_requests is None and snapshot.reset_requests_ms is None)


async def test_a_429_with_hostile_retry_after_is_still_a_rate_limit_error(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Error(429, headers={"retry-after": "1e999", "retry-after-ms": "nan"}))
    exc = await expect_error(harness, streaming, RateLimitError)
    assert exc.retry_after_ms is None


async def test_anthropic_credit_exhaustion_may_fall_back(anthropic: Harness, streaming: bool) -> None:
    # Anthropic sends an exhausted credit balance as 400 invalid_request_error: the
    # account is at fault, not the request, so another provider may serve it.
    anthropic.server.enqueue(Error(400, message="Your credit balance is too low to access the Anthropic API. "
                                                "Please go to Plans & Billing to upgrade or purchase credits."))
    exc = await expect_error(anthropic, streaming, AuthenticationError)
    assert not exc.retryable and exc.may_fall_back and exc.provider_wide


async def test_an_oversized_line_after_the_terminator_costs_the_connection_not_the_answer(openai: Harness) -> None:
    # Regression: finish_body let ResponseTooLarge out, so a complete, relayed answer
    # ended as a ModelError.
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": openai.model,
             "choices": [{"index": 0, "delta": {"content": "hello world"}, "finish_reason": "stop"}]}
    body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\ndata: " + b"x" * 5000 + b"\n\n"
    openai.server.enqueue(Raw(body=body, content_type="text/event-stream"))
    result = await run(openai.make(), openai.request(max_response_bytes=1000), True)
    assert result.content == "hello world" and result.finish_reason == "stop"
