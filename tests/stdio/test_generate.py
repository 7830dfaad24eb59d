"""model:generate and model:stream end to end: sidecar subprocess ↔ fake provider servers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fakes import CutStream, Error, Reply
from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio

PROVIDERS = ["openai", "anthropic", "ollama", "local-llm"]
TEXT = "Sure \u2014 here is the code: \u2028def f(): return 1 \U0001f600 \u4f60\u597d"


def gen(provider: str, **request: Any) -> dict[str, Any]:
    return {"request": {"prompt": "write a function", **request}, "selection": {"provider": provider}}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_generate_each_provider(spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    fakes[provider].enqueue(Reply(TEXT, usage=(11, 7)))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", gen(provider, maxTokens=64))
    assert_wire_valid(response, "model:generate")
    result = response["result"]
    assert result["content"] == TEXT
    assert result["finishReason"] == "stop"
    assert result["usage"] == {"promptTokens": 11, "completionTokens": 7, "totalTokens": 18}
    meta = result["metadata"]
    assert meta["provider"] == provider
    assert meta["attempts"] == [{"provider": provider, "modelId": meta["attempts"][0]["modelId"]}]
    assert meta["latencyMs"] > 0
    assert meta["costUsd"] == 0  # every fake's default model is priced at 0 (conftest)
    assert any("requested by selection.provider" in r for r in meta["selectionReasons"])
    assert len(fakes[provider].requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_each_provider(spawn: Spawn, fakes: dict[str, Any], provider: str) -> None:
    pieces = ["Hel", "lo \u2029", "\U0001f600", " world"]
    fakes[provider].enqueue(Reply("".join(pieces), chunks=pieces))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", gen(provider))
    response = sidecar.response(request_id)
    assert_wire_valid(response, "model:stream")
    chunks = [m["params"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert chunks[-1]["chunk"]["done"] is True and chunks[-1]["chunk"]["content"] == ""
    assert all(not c["chunk"]["done"] for c in chunks[:-1])
    streamed = "".join(c["chunk"]["content"] for c in chunks)
    assert streamed == "".join(pieces) == response["result"]["content"]
    assert response["result"]["metadata"]["timeToFirstTokenMs"] is not None
    # Chunks come before the response on the wire.
    lines = [line for line in sidecar.raw_lines if f'"requestId":{request_id}'.encode() in line
             or f'"id":{request_id},'.encode() in line]
    assert b'"result"' in lines[-1]


def test_fallback_after_retries_lists_every_attempt(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(Error(500), Error(503))
    fakes["anthropic"].enqueue(Reply("from anthropic"))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", {"request": {"prompt": "hi"}})
    assert result["content"] == "from anthropic"
    attempts = result["metadata"]["attempts"]
    assert [(a["provider"], a.get("error", {}).get("type")) for a in attempts] == [
        ("openai", "ModelError"), ("openai", "ModelError"), ("anthropic", None)]
    assert len(fakes["openai"].requests) == 2


def test_retry_after_delays_the_next_attempt(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(Error(429, headers={"retry-after": "1"}), Reply("ok"))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", gen("openai"))
    assert result["content"] == "ok" and result["metadata"]["provider"] == "openai"
    first, second = fakes["openai"].requests
    assert second.received_at - first.received_at >= 1.0


def test_retry_after_ms_is_read_first(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["anthropic"].enqueue(Error(429, headers={"retry-after-ms": "400", "retry-after": "20"}), Reply("ok"))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", gen("anthropic"))
    assert result["content"] == "ok"
    first, second = fakes["anthropic"].requests
    assert 0.4 <= second.received_at - first.received_at < 5


def test_authentication_error_is_not_retried_and_falls_back(spawn: Spawn, fakes: dict[str, Any]) -> None:
    config = fake_config(fakes)
    config["providers"]["openai"]["apiKey"] = "sk-wrong-key-000000000000"
    fakes["anthropic"].enqueue(Reply("anthropic answers"))
    sidecar = spawn(config)
    result = sidecar.result("model:generate", {"request": {"prompt": "hi"}})
    assert result["content"] == "anthropic answers"
    assert result["metadata"]["attempts"][0]["error"]["type"] == "AuthenticationError"
    assert len(fakes["openai"].requests) == 1
    assert b"sk-wrong-key-000000000000" not in b"\n".join(sidecar.raw_lines)


def test_every_provider_failing_is_all_providers_failed(spawn: Spawn, fakes: dict[str, Any]) -> None:
    for server in fakes.values():
        server.set_default(Error(503))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", {"request": {"prompt": "hi"}})
    error = response["error"]
    assert error["code"] == -32008 and error["data"]["type"] == "AllProvidersFailedError"
    assert error["data"]["retryable"] is True
    assert {a["provider"] for a in error["data"]["attempts"]} == set(PROVIDERS)


def test_single_provider_failure_keeps_its_type(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].set_default(Error(404))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", {"request": {"prompt": "hi"},
                                                "selection": {"provider": "ollama", "fallback": False}})
    error = response["error"]
    assert (error["code"], error["data"]["type"]) == (-32004, "ModelError")
    assert error["data"]["retryable"] is False
    assert error["data"]["provider"] == "ollama"
    assert len(fakes["ollama"].requests) == 1  # model missing: never retried


def test_cancel_mid_stream_closes_upstream(spawn: Spawn, fakes: dict[str, Any]) -> None:
    words = [f" w{i}" for i in range(40)]
    fakes["openai"].enqueue(Reply("".join(words), chunks=words, chunk_delay_s=0.1))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", gen("openai"))
    sidecar.wait_for(lambda m: m.get("method") == "model:stream-chunk")
    sidecar.cancel(request_id)
    response = sidecar.response(request_id)
    assert response["error"]["code"] == -32800
    assert response["error"]["data"]["type"] == "RequestCancelled"
    partial = response["error"]["data"]["partialContent"]
    assert partial and "".join(words).startswith(partial)
    assert fakes["openai"].requests[0].disconnected.wait(3), "upstream HTTP request was not closed"
    time.sleep(0.3)
    late = [m for m in sidecar.backlog if m.get("params", {}).get("requestId") == request_id
            and m["params"]["seq"] > 100]
    assert late == []


def test_cut_stream_after_first_chunk_fails_with_partial_content(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(CutStream(after_chunks=2))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", {"request": {"prompt": "hi"}})
    response = sidecar.response(request_id)
    error = response["error"]
    assert error["data"]["type"] == "NetworkError"
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    assert error["data"]["partialContent"] == "".join(c["content"] for c in chunks)
    assert len(chunks) == 2 and not any(c["done"] for c in chunks)
    assert fakes["anthropic"].requests == []  # no fallback once text went out


def test_fallback_mid_stream_sends_restart(spawn: Spawn, fakes: dict[str, Any]) -> None:
    config = fake_config(fakes)
    config["providers"]["openai"]["rateLimit"] = {"maxRetries": 0}
    fakes["openai"].enqueue(CutStream(after_chunks=1))
    fakes["anthropic"].enqueue(Reply("second try", chunks=["second", " try"]))
    sidecar = spawn(config)
    request_id = sidecar.start("model:stream", {"request": {"prompt": "hi"},
                                                "selection": {"fallbackMidStream": True}})
    response = sidecar.response(request_id)
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    restart_at = next(i for i, c in enumerate(chunks) if c.get("restart"))
    assert restart_at == 1 and chunks[restart_at]["content"] == ""
    assert "".join(c["content"] for c in chunks[restart_at:]) == "second try"
    assert response["result"]["content"] == "second try"
    assert response["result"]["metadata"]["provider"] == "anthropic"


def test_duplicate_in_flight_id_is_refused_without_a_second_answer(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(Reply("slow", delay_s=0.5))
    sidecar = spawn(fake_config(fakes))
    sidecar.start("model:generate", gen("openai"), request_id="dup")
    time.sleep(0.1)
    sidecar.start("model:get-config", request_id="dup")
    refusal = sidecar.wait_for(lambda m: m.get("id") is None)
    assert refusal["error"]["data"]["type"] == "InvalidRequest"
    assert sidecar.response("dup")["result"]["content"] == "slow"
    time.sleep(0.2)
    assert [m for m in sidecar.backlog if m.get("id") == "dup"] == []


def test_concurrent_requests_each_get_one_answer(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].set_default(Reply("x", delay_s=0.2))
    sidecar = spawn(fake_config(fakes))
    started = time.monotonic()
    ids = [sidecar.start("model:generate", gen("openai")) for _ in range(30)]
    answers = {i: sidecar.response(i) for i in ids}
    assert all("result" in a for a in answers.values())
    assert time.monotonic() - started < 3  # served concurrently, not 30 x 0.2 s


def test_local_only_never_contacts_remote_providers(spawn: Spawn, fakes: dict[str, Any]) -> None:
    config = {
        "providers": {
            "openai": {"apiKey": "sk-test-OPENAIKEY0123456789abcdef"},
            "anthropic": {"apiKey": "sk-ant-test-ANTHROPICKEY0123456789"},
            "ollama": {"baseURL": fakes["ollama"].base_url},
        },
        "defaultProvider": "openai",
        "fallbackChain": ["anthropic", "ollama"],
    }
    sidecar = spawn(config)
    result = sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"localOnly": True}})
    assert result["metadata"]["provider"] == "ollama"
    assert [a["provider"] for a in result["metadata"]["attempts"]] == ["ollama"]
    # Control: without localOnly the remote providers are tried (and refused by the test guard).
    result = sidecar.result("model:generate", {"request": {"prompt": "hi"}})
    tried = [a["provider"] for a in result["metadata"]["attempts"]]
    assert tried[0] == "openai" and "remote connections are disabled" in (
        result["metadata"]["attempts"][0]["error"]["message"])
    assert sidecar.close() == 0
    denied = bytes(sidecar.stderr).count(b"remote connections are disabled")
    assert denied >= 1  # only from the control request


def test_set_config_switches_the_default_provider_live(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    assert sidecar.result("model:generate", {"request": {"prompt": "a"}})["metadata"]["provider"] == "openai"
    sidecar.result("model:set-config", {"config": {"defaultProvider": "ollama", "fallbackChain": []}})
    sidecar.result("model:set-config", {"config": {"fallbackChain": ["ollama"]}})
    assert sidecar.result("model:generate", {"request": {"prompt": "a"}})["metadata"]["provider"] == "ollama"


def test_request_fields_reach_the_upstream_body(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    sidecar.result("model:generate", gen(
        "local-llm", systemPrompt="be terse", temperature=0.3, maxTokens=99, topP=0.5, stop=["\n\n"],
        frequencyPenalty=0.5, presencePenalty=0.25))
    recorded = fakes["local-llm"].requests[0]
    body = recorded.json
    assert body["messages"][0] == {"role": "system", "content": "be terse"}
    assert body["messages"][-1] == {"role": "user", "content": "write a function"}
    assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.3, 99, 0.5)
    assert (body["stop"], body["frequency_penalty"], body["presence_penalty"]) == (["\n\n"], 0.5, 0.25)
    assert recorded.headers["authorization"] == "Bearer local-secret-key-0123456789XYZ"
    assert recorded.headers["x-team"] == "desk"


@pytest.mark.parametrize("how", ["sigterm", "eof", "shutdown"])
def test_shutdown_answers_in_flight_requests_cancelled(spawn: Spawn, fakes: dict[str, Any], how: str) -> None:
    import signal

    from tests.fakes import Hang

    fakes["openai"].set_default(Hang())
    sidecar = spawn(fake_config(fakes))
    ids = [sidecar.start("model:stream", gen("openai")) for _ in range(3)]
    fakes["openai"].wait_for_requests(3)
    started = time.monotonic()
    if how == "sigterm":
        sidecar.proc.send_signal(signal.SIGTERM)
    elif how == "eof":
        assert sidecar.proc.stdin is not None
        sidecar.proc.stdin.close()
    else:
        sidecar.start("sidecar:shutdown", {}, request_id="bye")
    for request_id in ids:
        error = sidecar.response(request_id)["error"]
        assert (error["code"], error["data"]["type"]) == (-32800, "RequestCancelled")
    if how == "shutdown":
        assert sidecar.response("bye")["result"] == {}
    assert sidecar.proc.wait(5) == 0
    assert time.monotonic() - started < 2.0
    assert all(r.disconnected.wait(2) for r in fakes["openai"].requests)


def test_malformed_messages_reusing_an_in_flight_id_are_answered_id_null(
    spawn: Spawn, fakes: dict[str, Any]
) -> None:
    fakes["openai"].enqueue(Reply("slow", delay_s=0.6))
    sidecar = spawn(fake_config(fakes))
    sidecar.start("model:generate", gen("openai"), request_id="dup")
    fakes["openai"].wait_for_requests(1)
    for message in ({"jsonrpc": "1.0", "id": "dup", "method": "model:get-config"},
                    {"jsonrpc": "2.0", "id": "dup"},
                    {"jsonrpc": "2.0", "id": "dup", "method": "model:get-config", "params": []}):
        sidecar.send(message)
        refusal = sidecar.wait_for(lambda m: "method" not in m and m.get("id") is None)
        assert refusal["error"]["data"]["type"] == "InvalidRequest"
    assert sidecar.response("dup")["result"]["content"] == "slow"
    time.sleep(0.2)
    assert [m for m in sidecar.backlog if m.get("id") == "dup"] == []


def test_a_retry_after_a_config_change_uses_the_new_provider(spawn: Spawn, fakes: dict[str, Any]) -> None:
    from tests.fakes import Error

    fakes["ollama"].enqueue(Error(500), Reply("second attempt"))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:generate", gen("ollama"))
    fakes["ollama"].wait_for_requests(1)
    sidecar.result("model:set-config", {"config": {"providers": {"ollama": {"timeoutMs": 30000}}}})
    result = sidecar.response(request_id)["result"]
    assert result["content"] == "second attempt"
    assert [a.get("error", {}).get("type") for a in result["metadata"]["attempts"]] == ["ModelError", None]


def test_config_selection_defaults_apply_to_fields_a_request_leaves_out(
    spawn: Spawn, fakes: dict[str, Any]
) -> None:
    config = fake_config(fakes, selection={"localOnly": True})
    config["providers"]["openai"] = {"apiKey": "sk-test-OPENAIKEY0123456789abcdef"}  # the real, remote URL
    sidecar = spawn(config)
    result = sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"priority": "speed"}})
    assert result["metadata"]["provider"] != "openai"
    assert all(a["provider"] != "openai" for a in result["metadata"]["attempts"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("maxTokens", "12"), ("maxTokens", True), ("temperature", "1.5"), ("maxTokens", 2.5)],
)
def test_params_are_not_coerced(spawn: Spawn, fakes: dict[str, Any], field: str, value: Any) -> None:
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", {"request": {"prompt": "hi", field: value}})
    assert response["error"]["data"]["errors"][0]["path"] == f"/request/{field}"
    response = sidecar.call("model:generate", {"request": {"prompt": "hi"}, "selection": {"localOnly": "off"}})
    assert response["error"]["data"]["errors"][0]["path"] == "/selection/localOnly"
    assert fakes["openai"].requests == []
