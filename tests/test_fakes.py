"""Tests of the loopback fake provider servers in `tests.fakes`.

They use httpx as a plain HTTP client against real sockets and check the bytes
against wire-reference.md: stream framing per provider, error envelopes, auth
failures, and that each fault (hang, cut, drip, disconnect) looks to a client
the way it would in production.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import (
    CutStream,
    Drip,
    Error,
    FakeServer,
    Hang,
    Malformed,
    MidStreamError,
    Raw,
    Reply,
    mask_key,
)

CHAT_PATH = {
    "openai": "/v1/chat/completions",
    "llamacpp": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
}
KINDS = tuple(CHAT_PATH)
ROOT = Path(__file__).resolve().parent.parent


def chat_body(kind: str, stream: bool | None, model: str = "test-model", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the nice tests"}],
        **extra,
    }
    if kind == "anthropic":
        body.setdefault("max_tokens", 64)
    if stream is not None:
        body["stream"] = stream
    return body


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    with FakeServer(request.param).start() as fake:
        yield fake


def post_chat(fake: FakeServer, stream: bool | None, **extra: Any) -> httpx.Response:
    return httpx.post(fake.url(CHAT_PATH[fake.kind]), json=chat_body(fake.kind, stream, **extra), timeout=5)


def sse_data(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]


def plain_text(kind: str, body: dict[str, Any]) -> str:
    """The answer text of a non-streaming reply."""
    if kind == "anthropic":
        return str(body["content"][0]["text"])
    if kind == "ollama":
        return str(body["message"]["content"])
    return str(body["choices"][0]["message"]["content"])


def stream_text(kind: str, raw: str) -> str:
    """Reassemble the streamed answer text for any kind (fails on malformed frames)."""
    if kind == "ollama":
        # Split on "\n" only: str.splitlines() also splits on U+2028/U+2029 and would break lines.
        lines = [line for line in raw.split("\n") if line]
        return "".join(json.loads(line)["message"]["content"] for line in lines)
    out = []
    for data in sse_data(raw):
        if data == "[DONE]":
            continue
        event = json.loads(data)
        if kind == "anthropic":
            if event["type"] == "content_block_delta":
                out.append(event["delta"]["text"])
        elif event["choices"]:
            out.append(event["choices"][0]["delta"].get("content") or "")
    return "".join(out)


# -- normal replies ------------------------------------------------------------------------


@pytest.mark.parametrize("server", KINDS, indirect=True)
def test_reply_round_trips_text_streaming_and_not(server: FakeServer) -> None:
    server.enqueue(Reply("One two three"), Reply("One two three"))
    plain = post_chat(server, stream=False)
    streamed = post_chat(server, stream=True)
    assert plain.status_code == streamed.status_code == 200
    assert plain.headers["content-type"].startswith("application/json")
    assert plain_text(server.kind, plain.json()) == "One two three"
    assert stream_text(server.kind, streamed.text) == "One two three"
    assert [r.json["stream"] for r in server.requests] == [False, True]


def test_openai_stream_matches_recorded_shape() -> None:
    with FakeServer("openai").start() as fake:
        response = post_chat(fake, stream=True)
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.text.endswith("data: [DONE]\n\n")
        chunks = [json.loads(d) for d in sse_data(response.text)[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert chunks[-1]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }
        assert all(c["object"] == "chat.completion.chunk" and "obfuscation" in c for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert all("usage" not in c for c in chunks)  # include_usage not asked for
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["x-ratelimit-remaining-requests"] == "4999"
        assert response.headers["x-ratelimit-reset-tokens"] == "1ms"


def test_openai_include_usage_adds_empty_choices_chunk() -> None:
    with FakeServer("openai").start() as fake:
        fake.enqueue(Reply("a b c", usage=(11, 3)))
        response = post_chat(fake, stream=True, stream_options={"include_usage": True})
        chunks = [json.loads(d) for d in sse_data(response.text)[:-1]]
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["prompt_tokens"] == 11
        assert chunks[-1]["usage"]["completion_tokens"] == 3
        assert chunks[-1]["usage"]["total_tokens"] == 14


def test_openai_default_usage_counts_words_and_chunks() -> None:
    with FakeServer("openai").start() as fake:
        body = post_chat(fake, stream=False, messages=[{"role": "user", "content": "one two three"}]).json()
        assert body["usage"]["prompt_tokens"] == 3
        assert body["usage"]["completion_tokens"] == 4  # "Hello", " from", " the", " fake."
        assert body["model"] == "test-model"


def test_anthropic_stream_event_sequence_and_padding() -> None:
    with FakeServer("anthropic").start() as fake:
        fake.enqueue(Reply("Hi there friend", finish_reason="length", usage=(20, 5)))
        response = post_chat(fake, stream=True)
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = [line[len("event: ") :] for line in response.text.split("\n") if line.startswith("event: ")]
        assert events == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        data = sse_data(response.text)
        assert data[2] == '{"type": "ping"}'
        assert data[0].endswith("}            }")  # whitespace padding as recorded
        assert data[-1] == '{"type":"message_stop"    }'
        message_delta = json.loads(data[-2])
        assert message_delta["delta"]["stop_reason"] == "max_tokens"
        assert message_delta["usage"]["output_tokens"] == 5
        assert message_delta["usage"]["input_tokens"] == 20
        assert response.text.endswith("\n\n")
        assert response.headers["request-id"].startswith("req_")
        reset = response.headers["anthropic-ratelimit-requests-reset"]
        assert time.strptime(reset, "%Y-%m-%dT%H:%M:%SZ")


def test_anthropic_finish_reason_mapping_non_streaming() -> None:
    with FakeServer("anthropic").start() as fake:
        fake.enqueue(Reply(finish_reason="stop"), Reply(finish_reason="tool_calls"))
        assert post_chat(fake, stream=False).json()["stop_reason"] == "end_turn"
        assert post_chat(fake, stream=False).json()["stop_reason"] == "tool_use"


def test_ollama_streams_ndjson_by_default() -> None:
    with FakeServer("ollama").start() as fake:
        response = post_chat(fake, stream=None)
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.text.endswith("}\n")
        lines = [json.loads(line) for line in response.text.split("\n")[:-1]]
        assert all(line["done"] is False for line in lines[:-1])
        final = lines[-1]
        assert final["done"] is True and final["done_reason"] == "stop"
        assert final["message"] == {"role": "assistant", "content": ""}
        assert final["eval_count"] == len(lines) - 1
        assert final["prompt_eval_count"] == 6  # words in the prompt
        assert final["created_at"].endswith("Z")


def test_ollama_non_streaming_is_one_compact_object() -> None:
    with FakeServer("ollama").start() as fake:
        fake.enqueue(Reply("x y", finish_reason="length"))
        response = post_chat(fake, stream=False)
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert b"\n" not in response.content
        body = response.json()
        assert list(body)[:6] == ["model", "created_at", "message", "done", "done_reason", "total_duration"]
        assert body["done_reason"] == "length" and body["eval_count"] == 2


def test_llamacpp_stream_has_usage_and_timings_by_default() -> None:
    with FakeServer("llamacpp").start() as fake:
        response = post_chat(fake, stream=True)
        data = sse_data(response.text)
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        assert next(iter(chunks[0])) == "choices"
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
        assert chunks[-1]["choices"] == [] and "timings" in chunks[-1]
        assert chunks[-1]["usage"]["completion_tokens"] == 4
        assert chunks[0]["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"  # not the requested name
        no_usage = post_chat(fake, stream=True, stream_options={"include_usage": False})
        assert all(json.loads(d)["choices"] for d in sse_data(no_usage.text)[:-1])


def test_unicode_goes_out_as_raw_utf8() -> None:
    text = "line\u2028sep\u2029para 😀 漢字 cr\rend"
    for kind in KINDS:
        with FakeServer(kind).start() as fake:
            fake.enqueue(Reply(text), Reply(text))
            plain = post_chat(fake, stream=False)
            streamed = post_chat(fake, stream=True)
            for raw in (plain.content, streamed.content):
                assert "\u2028".encode() in raw and "\u2029".encode() in raw
                assert "😀".encode() in raw and "漢字".encode() in raw
                assert b"\\r" in raw and b"\r" not in raw and b"\\u" not in raw
            assert stream_text(kind, streamed.text) == text
            if kind == "ollama":  # the trap: a client splitting on str.splitlines() breaks here
                with pytest.raises(json.JSONDecodeError):
                    [json.loads(line) for line in streamed.text.splitlines()]


def test_reply_headers_and_model_override() -> None:
    with FakeServer("openai").start() as fake:
        fake.enqueue(
            Reply(model="gpt-4o-mini-2024-07-18", headers={"x-ratelimit-remaining-tokens": "5"}, delay_s=0.2)
        )
        started = time.monotonic()
        response = post_chat(fake, stream=False)
        assert time.monotonic() - started >= 0.2
        assert response.json()["model"] == "gpt-4o-mini-2024-07-18"
        assert response.headers["x-ratelimit-remaining-tokens"] == "5"


# -- errors ----------------------------------------------------------------------------------

ERROR_CASES = [
    ("openai", Error(429), {"error": {"type": "requests", "code": "rate_limit_exceeded", "param": None}}),
    ("openai", Error(404), {"error": {"code": "model_not_found", "type": "invalid_request_error"}}),
    ("openai", Error(500), {"error": {"type": "server_error", "code": None}}),
    (
        "anthropic",
        Error(529),
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ),
    ("anthropic", Error(429), {"type": "error", "error": {"type": "rate_limit_error"}}),
    ("anthropic", Error(404), {"error": {"type": "not_found_error", "message": "model: test-model"}}),
    ("ollama", Error(404), {"error": "model 'test-model' not found"}),
    ("ollama", Error(503), {"error": "server busy, please try again.  maximum pending requests exceeded"}),
    (
        "llamacpp",
        Error(503),
        {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
    ),
    (
        "openai",
        Error(400, message="bad", error_type="t", code="c"),
        {"error": {"message": "bad", "code": "c"}},
    ),
]


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


@pytest.mark.parametrize(("kind", "error", "expected"), ERROR_CASES)
def test_error_envelopes(kind: str, error: Error, expected: dict[str, Any]) -> None:
    with FakeServer(kind).start() as fake:
        fake.enqueue(error)
        response = post_chat(fake, stream=True)
        assert response.status_code == error.status
        assert response.headers["content-type"].startswith("application/json")
        assert _contains(response.json(), expected), response.text
        if kind == "openai":
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        if kind == "anthropic":
            assert response.json()["request_id"] == response.headers["request-id"]


def test_error_headers_and_body_override() -> None:
    with FakeServer("openai").start() as fake:
        fake.enqueue(
            Error(429, headers={"retry-after-ms": "150"}), Error(502, body=b"<html>bad gateway</html>")
        )
        first = post_chat(fake, stream=False)
        assert first.headers["retry-after-ms"] == "150"
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        second = post_chat(fake, stream=False)
        assert (second.status_code, second.content) == (502, b"<html>bad gateway</html>")


# -- auth ------------------------------------------------------------------------------------


def test_openai_auth() -> None:
    key = "sk-3XSO2abcdefghijklmnopqrstuvwxyz0123456789ABCDBtc"
    with FakeServer("openai", api_key=key).start() as fake:
        url = fake.url(CHAT_PATH["openai"])
        body = chat_body("openai", False)
        missing = httpx.post(url, json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
        wrong_key = key[:-4] + "XXXX"
        wrong = httpx.post(url, json=body, headers={"Authorization": f"Bearer {wrong_key}"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert mask_key(wrong_key) in wrong.text and wrong_key not in wrong.text
        assert mask_key(wrong_key).startswith("sk-3XSO2***") and mask_key(wrong_key).endswith("XXXX")
        assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(fake.base_url + "/models").status_code == 401
        listing = httpx.get(fake.base_url + "/models", headers={"Authorization": f"Bearer {key}"})
        assert [m["id"] for m in listing.json()["data"]] == ["gpt-4o-mini", "gpt-4o"]
        assert len(fake.requests) == 3 and len(fake.all_requests) == 5


def test_anthropic_auth_and_version() -> None:
    with FakeServer("anthropic", api_key="k").start() as fake:
        url = fake.url(CHAT_PATH["anthropic"])
        body = chat_body("anthropic", False)

        def error_of(headers: dict[str, str]) -> tuple[int, str]:
            response = httpx.post(url, json=body, headers=headers)
            return response.status_code, response.json()["error"]["message"]

        assert error_of({}) == (401, "x-api-key header is required")
        assert error_of({"x-api-key": "nope", "anthropic-version": "2023-06-01"}) == (
            401,
            "invalid x-api-key",
        )
        assert error_of({"x-api-key": "k"}) == (400, "anthropic-version: header is required")
        ok = httpx.post(url, json=body, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
        assert ok.status_code == 200


def test_llamacpp_auth_keeps_health_and_models_public() -> None:
    with FakeServer("llamacpp", api_key="k").start() as fake:
        denied = post_chat(fake, stream=False)
        assert denied.status_code == 401
        assert denied.json() == {
            "error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}
        }
        assert httpx.get(fake.url("/health")).json() == {"status": "ok"}
        assert httpx.get(fake.base_url + "/models").status_code == 200
        ok = httpx.post(
            fake.url(CHAT_PATH["llamacpp"]), json=chat_body("llamacpp", False), headers={"X-Api-Key": "k"}
        )
        assert ok.status_code == 200


# -- faults ----------------------------------------------------------------------------------


def test_hang_times_out_client_and_records_disconnect() -> None:
    with FakeServer("openai").start() as fake:
        fake.enqueue(Hang())
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(fake.chat_url, json=chat_body("openai", True), timeout=0.3)
        record = fake.wait_for_requests(1)[0]
        assert record.disconnected.wait(2) and not record.completed.is_set()
        assert record.json["stream"] is True  # the body was read before hanging


@pytest.mark.parametrize("server", KINDS, indirect=True)
def test_cut_stream_breaks_the_client_read(server: FakeServer) -> None:
    server.enqueue(CutStream(after_chunks=2))
    received = b""
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        httpx.stream("POST", server.chat_url, json=chat_body(server.kind, True), timeout=5) as response,
    ):
        assert response.status_code == 200
        for piece in response.iter_raw():
            received += piece
    text = received.decode()
    assert "Hello" in text and " from" in text and " the" not in text
    record = server.requests[0]
    assert not record.completed.is_set() and not record.disconnected.is_set()


def test_cut_non_streaming_body_is_incomplete() -> None:
    with FakeServer("anthropic").start() as fake:
        fake.enqueue(CutStream())
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            post_chat(fake, stream=False)


def test_drip_sends_one_byte_per_interval_and_trips_idle_timeouts() -> None:
    with FakeServer("ollama").start() as fake:
        fake.enqueue(Drip(interval_s=0.05))
        arrivals: list[tuple[float, bytes]] = []
        with httpx.stream("POST", fake.chat_url, json=chat_body("ollama", True), timeout=5) as response:
            start = time.monotonic()
            for piece in response.iter_raw():
                arrivals.append((time.monotonic() - start, piece))
                if len(arrivals) == 4:
                    break
        assert [p for _, p in arrivals] == [b"{", b'"', b"m", b"o"]
        assert arrivals[-1][0] >= 0.15
        record = fake.requests[0]
        assert record.disconnected.wait(2) and not record.completed.is_set()

        fake.enqueue(Drip(interval_s=0.5))
        timeout = httpx.Timeout(5, read=0.2)
        with (
            pytest.raises(httpx.ReadTimeout),
            httpx.stream("POST", fake.chat_url, json=chat_body("ollama", True), timeout=timeout) as response,
        ):
            assert response.status_code == 200  # headers come at once; the body is what stalls
            response.read()


def test_drip_completes_with_the_full_reply() -> None:
    with FakeServer("openai").start() as fake:
        fake.enqueue(Drip(interval_s=0.001, text="slow but sure", chunk_size=97))
        response = post_chat(fake, stream=True)
        assert stream_text("openai", response.text) == "slow but sure"
        assert response.text.endswith("data: [DONE]\n\n")
        assert fake.requests[0].completed.wait(1)


def test_client_closing_mid_stream_sets_disconnected() -> None:
    with FakeServer("anthropic").start() as fake:
        fake.enqueue(Reply("a b c d e f", chunk_delay_s=0.2))
        with httpx.stream("POST", fake.chat_url, json=chat_body("anthropic", True), timeout=5) as response:
            next(response.iter_raw())
        record = fake.requests[0]
        assert record.disconnected.wait(2)
        assert not record.completed.is_set()
        assert fake.wait_for_connections(0, timeout=2)


MID_STREAM_MARKERS = {
    "openai": 'data: {"error":{"message":"The server had an error',
    "llamacpp": 'data: {"error":{"code":500',
    "anthropic": 'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n',
    "ollama": '{"error":"an error was encountered while running the model"}\n',
}


@pytest.mark.parametrize("server", KINDS, indirect=True)
def test_mid_stream_error(server: FakeServer) -> None:
    server.enqueue(MidStreamError(after_chunks=1), MidStreamError())
    response = post_chat(server, stream=True)
    assert response.status_code == 200
    assert MID_STREAM_MARKERS[server.kind] in response.text
    assert "[DONE]" not in response.text and "message_stop" not in response.text
    assert response.text.count("Hello") == 1 and "from" not in response.text
    assert post_chat(server, stream=False).status_code >= 500


@pytest.mark.parametrize("server", KINDS, indirect=True)
def test_malformed_stream_then_normal_end(server: FakeServer) -> None:
    server.enqueue(Malformed(after_chunks=1))
    response = post_chat(server, stream=True)
    garbage = "{not json\n" if server.kind == "ollama" else "data: {not json\n\n"
    assert garbage in response.text
    with pytest.raises(json.JSONDecodeError):
        stream_text(server.kind, response.text)
    tail = {"ollama": '"done":true', "anthropic": "message_stop"}.get(server.kind, "data: [DONE]\n\n")
    assert tail in response.text


def test_raw_html_with_200() -> None:
    with FakeServer("openai").start() as fake:
        fake.enqueue(Raw(body=b"<html>captive portal</html>"))
        response = post_chat(fake, stream=True)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html"
        assert response.content == b"<html>captive portal</html>"


# -- scripting, recordings, listings --------------------------------------------------------


def test_queue_is_fifo_then_default() -> None:
    with FakeServer("ollama").start() as fake:
        fake.enqueue(Reply("first"), Error(500))
        fake.set_default(Reply("default"))
        assert post_chat(fake, stream=False).json()["message"]["content"] == "first"
        assert post_chat(fake, stream=False).status_code == 500
        assert post_chat(fake, stream=False).json()["message"]["content"] == "default"
        assert post_chat(fake, stream=False).json()["message"]["content"] == "default"
        fake.reset()
        assert fake.requests == [] and fake.all_requests == []
        assert post_chat(fake, stream=False).json()["message"]["content"] == "Hello from the fake."
        with pytest.raises(TypeError):
            fake.enqueue("not a behaviour")  # type: ignore[arg-type]


def test_recorded_requests() -> None:
    with FakeServer("openai").start() as fake:
        httpx.get(fake.base_url + "/models")
        post_chat(fake, stream=False)
        bad = httpx.post(fake.chat_url, content=b"{oops", headers={"X-Custom": "v"})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("We could not parse the JSON body")
        first, second = fake.requests
        assert (first.method, first.path) == ("POST", "/v1/chat/completions")
        assert first.json["model"] == "test-model" and first.headers["content-type"] == "application/json"
        assert first.completed.is_set() and not first.disconnected.is_set()
        assert second.json is None and second.body == b"{oops" and second.headers["x-custom"] == "v"
        assert first.received_at <= second.received_at
        assert [r.path for r in fake.all_requests] == [
            "/v1/models",
            "/v1/chat/completions",
            "/v1/chat/completions",
        ]


def test_strict_models() -> None:
    with FakeServer("openai", strict_models=True).start() as fake:
        unknown = post_chat(fake, stream=False)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert post_chat(fake, stream=False, model="gpt-4o").status_code == 200
    with FakeServer("ollama", strict_models=True).start() as fake:
        assert post_chat(fake, stream=False, model="llama3.2").status_code == 200
        assert post_chat(fake, stream=False).json() == {"error": "model 'test-model' not found"}


def test_anthropic_model_listing_page() -> None:
    with FakeServer("anthropic").start() as fake:
        page = httpx.get(fake.url("/v1/models"), params={"limit": 1}).json()
        assert page["has_more"] is True and page["first_id"] == page["last_id"] == "claude-3-5-haiku-20241022"
        entry = page["data"][0]
        assert set(entry) == {"type", "id", "display_name", "created_at", "max_input_tokens", "max_tokens"}
        assert entry["created_at"] == "2024-10-22T00:00:00Z"
        rest = httpx.get(fake.url("/v1/models"), params={"after_id": page["last_id"]}).json()
        assert [m["id"] for m in rest["data"]] == ["claude-sonnet-4-20250514"] and rest["has_more"] is False


def test_ollama_endpoints() -> None:
    with FakeServer("ollama", context_lengths={"qwen2.5-coder:7b": 32768}).start() as fake:
        root = httpx.get(fake.url("/"))
        assert root.text == "Ollama is running"
        assert httpx.head(fake.url("/")).status_code == 200
        tags = httpx.get(fake.url("/api/tags")).json()
        assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "qwen2.5-coder:7b"]
        info = httpx.post(fake.url("/api/show"), json={"model": "qwen2.5-coder:7b"}).json()["model_info"]
        assert info["general.architecture"] == "qwen2" and info["qwen2.context_length"] == 32768
        llama = httpx.post(fake.url("/api/show"), json={"name": "llama3.2"}).json()["model_info"]
        assert llama["llama.context_length"] == 8192
        missing = httpx.post(fake.url("/api/show"), json={"model": "nope"})
        assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope' not found"})
        assert "version" in httpx.get(fake.url("/api/version")).json()


def test_llamacpp_endpoints() -> None:
    with FakeServer("llamacpp", context_lengths={"SmolLM2-135M-Instruct.Q4_1.gguf": 2048}).start() as fake:
        assert fake.base_url.endswith("/v1")
        models = httpx.get(fake.base_url + "/models").json()
        assert models["data"][0]["meta"]["n_ctx_train"] == 2048
        props = httpx.get(fake.url("/props")).json()
        assert props["default_generation_settings"]["n_ctx"] == 2048
        missing = httpx.get(fake.url("/nope"))
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_validation_errors_do_not_consume_the_script() -> None:
    with FakeServer("anthropic").start() as fake:
        fake.enqueue(Reply("scripted"))
        response = httpx.post(fake.chat_url, json={"model": "m", "messages": []})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "max_tokens: Field required"
        assert fake.pending == 1
        assert post_chat(fake, stream=False).json()["content"][0]["text"] == "scripted"


def test_open_connections_tracks_clients() -> None:
    with FakeServer("openai").start() as fake:
        with httpx.Client() as client:
            client.post(fake.chat_url, json=chat_body("openai", False))
            assert fake.open_connections == 1
        assert fake.wait_for_connections(0, timeout=2)


def test_stop_does_not_wait_for_hanging_requests() -> None:
    fake = FakeServer("ollama").start()
    fake.set_default(Hang())
    threading.Timer(0.2, fake.stop).start()
    started = time.monotonic()
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.TransportError):
        client.post(fake.chat_url, json=chat_body("ollama", True))
    assert time.monotonic() - started < 2
    assert not fake.requests[0].disconnected.is_set()  # the server went away, not the client


def test_cli_prints_base_url_and_exits_when_stdin_closes() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "--kind", "anthropic", "--api-key", "k"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        listing = httpx.get(
            base_url + "/v1/models", headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}
        )
        assert listing.status_code == 200
        process.stdin.close()
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
