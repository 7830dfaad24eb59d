"""Happy paths through real loopback HTTP: content, model, usage, finish reason, framing.

Every case runs against all four wire protocols and through both ``generate`` and
``stream`` (the ``streaming`` fixture), so the two paths cannot drift apart.
"""

from __future__ import annotations

import pytest

from sidecar.providers.base import StreamDelta, Usage
from tests.fakes import Raw, Reply
from tests.providers.conftest import Harness, run

pytestmark = pytest.mark.timeout(20)


async def test_reply_content_model_usage(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Reply(text="The capital of the UK is London.", usage=(78, 9)))
    result = await run(harness.make(), harness.request(), streaming)
    assert result.content == "The capital of the UK is London."
    assert result.model == harness.model
    assert result.usage == Usage(prompt_tokens=78, completion_tokens=9)
    assert result.finish_reason == "stop"


async def test_reported_model_is_the_servers(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Reply(model="served-model-2025-01-01"))
    result = await run(harness.make(), harness.request(), streaming)
    assert result.model == "served-model-2025-01-01"


# The fakes speak each provider's own words (Anthropic max_tokens/refusal/tool_use;
# Ollama has only stop/length, llama.cpp no content_filter): the portable word must come back.
FINISH_CASES = [
    (kind, finish)
    for kind, finishes in {
        "openai": ("stop", "length", "content_filter", "tool_calls"),
        "anthropic": ("stop", "length", "content_filter", "tool_calls"),
        "ollama": ("stop", "length"),
        "llamacpp": ("stop", "length", "tool_calls"),
    }.items()
    for finish in finishes
]


@pytest.mark.parametrize(("harness", "finish"), FINISH_CASES, indirect=["harness"])
async def test_finish_reasons(harness: Harness, streaming: bool, finish: str) -> None:
    harness.server.enqueue(Reply(text="cut", finish_reason=finish))
    result = await run(harness.make(), harness.request(max_tokens=1), streaming)
    assert result.finish_reason == finish


async def test_unknown_finish_reason_is_none(harness: Harness, streaming: bool) -> None:
    harness.server.enqueue(Reply(finish_reason="something_new"))
    result = await run(harness.make(), harness.request(), streaming)
    assert result.finish_reason is None
    assert result.content


UNICODE_PIECES = [
    "line\u2028sep",
    " para\u2029sep",
    " 👋🏽 emoji",
    " 中文字符",
    " mixed\r\nend",
    ' "quoted\\"',
]


async def test_unicode_survives_intact(harness: Harness, streaming: bool) -> None:
    """U+2028/U+2029 are raw in JSON: a splitlines()-based reader would break them."""
    harness.server.enqueue(Reply(chunks=UNICODE_PIECES))
    result = await run(harness.make(), harness.request(), streaming)
    assert result.content == "".join(UNICODE_PIECES)


async def test_stream_yields_pieces_in_order_then_final_delta(harness: Harness) -> None:
    harness.server.enqueue(Reply(chunks=["one", " two", " three"], usage=(5, 3)))
    deltas: list[StreamDelta] = [d async for d in harness.make().stream(harness.request())]
    assert [d.content for d in deltas[:3]] == ["one", " two", " three"]
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:3])
    final = deltas[-1]
    assert final.finish_reason == "stop"
    assert final.usage == Usage(5, 3)
    assert "".join(d.content for d in deltas) == "one two three"


async def test_rate_limit_headers_land_in_last_rate_limit(harness: Harness, streaming: bool) -> None:
    provider = harness.make()
    await run(provider, harness.request(), streaming)
    snapshot = provider.last_rate_limit
    if harness.kind == "openai":
        assert snapshot is not None
        assert snapshot.remaining_requests == 4999
        assert snapshot.limit_tokens == 800000
        assert snapshot.reset_requests_ms == 12
    elif harness.kind == "anthropic":
        assert snapshot is not None
        assert snapshot.remaining_requests is not None and snapshot.limit_requests is not None
        assert snapshot.remaining_requests == snapshot.limit_requests - 1
    else:
        assert snapshot is None  # local servers send no rate-limit headers


async def test_rate_limit_headers_are_read_from_custom_server_replies(
    llamacpp: Harness, streaming: bool
) -> None:
    headers = {"x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "1m30s"}
    llamacpp.server.enqueue(Reply(headers=headers))
    provider = llamacpp.make()
    await run(provider, llamacpp.request(), streaming)
    assert provider.last_rate_limit is not None
    assert provider.last_rate_limit.remaining_requests == 7
    assert provider.last_rate_limit.reset_requests_ms == 90_000


# -- recorded transcripts replayed byte for byte ---------------------------------------

SSE = "text/event-stream; charset=utf-8"

# wire-reference §1.5, gpt-4o-2024-08-06 max_tokens=1: usage chunk arrives without being asked for.
OPENAI_LENGTH_STREAM = (
    b'data: {"id":"chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","object":"chat.completion.chunk","created":1727346171,'
    b'"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_7568d46099","choices":[{"index":0,"delta":{"role":'
    b'"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","object":"chat.completion.chunk","created":1727346171,'
    b'"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_7568d46099","choices":[{"index":0,"delta":{"content":'
    b'"{\\""},"logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","object":"chat.completion.chunk","created":1727346171,'
    b'"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_7568d46099","choices":[{"index":0,"delta":{},'
    b'"logprobs":null,"finish_reason":"length"}]}\n\n'
    b'data: {"id":"chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","object":"chat.completion.chunk","created":1727346171,'
    b'"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_7568d46099","choices":[],"usage":{"prompt_tokens":79,'
    b'"completion_tokens":1,"total_tokens":80,"completion_tokens_details":{"reasoning_tokens":0}}}\n\n'
    b"data: [DONE]\n\n"
)

# wire-reference §4.3: older llama-server builds put usage on the finish chunk, `choices`
# comes first, content may be null, reasoning goes in reasoning_content, ": ping" comments.
LLAMACPP_OLD_STREAM = (
    b": ping\n\n"
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    b'"created":1754523863,"id":"chatcmpl-X6ur","model":"gpt-oss:20b","system_fingerprint":"b6097-9515c613",'
    b'"object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"reasoning_content":"We think"}}],'
    b'"created":1754523863,"id":"chatcmpl-X6ur","model":"gpt-oss:20b","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hi"}}],'
    b'"created":1754523863,"id":"chatcmpl-X6ur","model":"gpt-oss:20b","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1754524122,'
    b'"id":"chatcmpl-X6ur","model":"gpt-oss:20b","system_fingerprint":"b6097-9515c613",'
    b'"object":"chat.completion.chunk","usage":{"completion_tokens":247,"prompt_tokens":1085,'
    b'"total_tokens":1332},"timings":{"prompt_n":1085,"predicted_n":247}}\n\n'
    b"data: [DONE]\n\n"
)

# wire-reference §2.4: byte-exact claude-sonnet-4-5 recording (whitespace padding, ping)
# plus a tool_use block whose input_json_delta must not count as content, and an unknown event.
ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"model":"claude-sonnet-4-5-20250929","id":"msg_018E1hg8",'
    b'"type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,"usage":'
    b'{"input_tokens":20,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"cache_creation":'
    b'{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard",'
    b'"inference_geo":"not_available"}}            }\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}        }\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"2"}      }\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0        }\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01",'
    b'"name":"get_weather","input":{}}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"thinking_delta","thinking":"hmm"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":1}\n\n'
    b"event: brand_new_event\n"
    b'data: {"type":"brand_new_event","whatever":true}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":'
    b'{"input_tokens":20,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"output_tokens":5}       }\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"    }\n\n'
)

# wire-reference §3.1: NDJSON; the done object may carry text, and zero counts are omitted.
OLLAMA_STREAM = (
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant",'
    b'"content":"The"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.4Z","message":{"role":"assistant","content":'
    b'" end","thinking":"not content"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":"!"},'
    b'"done":true,"done_reason":"length","total_duration":4883583458,"eval_count":282}\n'
)


@pytest.mark.parametrize(
    ("harness", "body", "content_type", "content", "model", "finish", "usage"),
    [
        ("openai", OPENAI_LENGTH_STREAM, SSE, '{"', "gpt-4o-2024-08-06", "length", Usage(79, 1)),
        ("llamacpp", LLAMACPP_OLD_STREAM, "text/event-stream", "Hi", "gpt-oss:20b", "stop", Usage(1085, 247)),
        ("anthropic", ANTHROPIC_STREAM, SSE, "2", "claude-sonnet-4-5-20250929", "stop", Usage(27, 5)),
        ("ollama", OLLAMA_STREAM, "application/x-ndjson", "The end!", "llama3.2", "length", Usage(0, 282)),
    ],
    indirect=["harness"],
)
async def test_recorded_streams(
    harness: Harness,
    body: bytes,
    content_type: str,
    content: str,
    model: str,
    finish: str,
    usage: Usage,
) -> None:
    harness.server.enqueue(Raw(body=body, content_type=content_type))
    result = await run(harness.make(), harness.request(), streaming=True)
    assert (result.content, result.model, result.finish_reason, result.usage) == (
        content,
        model,
        finish,
        usage,
    )


# wire-reference §2.3 (2025 layout) plus a tool_use block: only text blocks are content.
ANTHROPIC_JSON = (
    b'{"id":"msg_01Qg","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":['
    b'{"type":"text","text":"Hello! "},{"type":"tool_use","id":"toolu_01","name":"f","input":{}},'
    b'{"type":"text","text":"Bye."}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":16,'
    b'"cache_creation_input_tokens":2,"cache_read_input_tokens":1,"cache_creation":{"ephemeral_5m_input_tokens":0,'
    b'"ephemeral_1h_input_tokens":0},"output_tokens":24,"service_tier":"standard"}}'
)
# wire-reference §1.3 tool call: content is null.
OPENAI_TOOL_JSON = (
    b'{"id":"chatcmpl-abc123","object":"chat.completion","created":1699896916,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123",'
    b'"type":"function","function":{"name":"get_current_weather","arguments":"{}"}}]},"logprobs":null,'
    b'"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99}}'
)
# wire-reference §3.1 recorded (2024 field order, two spaces after the emoji).
OLLAMA_JSON = (
    '{"model":"gemma2","created_at":"2024-10-15T15:56:31.370328Z","message":{"role":"assistant","content":'
    '"Hello! 👋  How can I help you today?"},"done_reason":"stop","done":true,"total_duration":10035691834,'
    '"load_duration":9032218750,"prompt_eval_count":30,"prompt_eval_duration":237775000,"eval_count":18,'
    '"eval_duration":756906000}'
).encode()


@pytest.mark.parametrize(
    ("harness", "body", "content", "model", "finish", "usage"),
    [
        (
            "anthropic",
            ANTHROPIC_JSON,
            "Hello! Bye.",
            "claude-3-5-sonnet-20240620",
            "tool_calls",
            Usage(19, 24),
        ),
        ("openai", OPENAI_TOOL_JSON, "", "gpt-4o-mini", "tool_calls", Usage(82, 17)),
        ("ollama", OLLAMA_JSON, "Hello! 👋  How can I help you today?", "gemma2", "stop", Usage(30, 18)),
    ],
    indirect=["harness"],
)
async def test_recorded_json_bodies(
    harness: Harness,
    body: bytes,
    content: str,
    model: str,
    finish: str,
    usage: Usage,
) -> None:
    harness.server.enqueue(Raw(body=body, content_type="application/json"))
    result = await harness.make().generate(harness.request())
    assert (result.content, result.model, result.finish_reason, result.usage) == (
        content,
        model,
        finish,
        usage,
    )
