"""Hostile or broken providers, through stdio: none may exhaust memory, overspend, leak a
key, break a stream or hide a dead local server.

Each test spawns a sidecar against a fake that misbehaves in one way and checks the
answer a host gets, the memory the sidecar used (``VmHWM``, its peak resident set), that
the upstream request was closed, and what the ledger billed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import Drip, FakeServer, Flood, Raw, Reply, refusing_port
from tests.hardening.conftest import ANTHROPIC_KEY, OPENAI_KEY, build_config, entry
from tests.stdio.harness import SidecarProcess

pytestmark = [pytest.mark.stdio, pytest.mark.hardening, pytest.mark.timeout(120)]

LLAMA = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = {"llamacpp": LLAMA, "anthropic": "claude-3-5-haiku-20241022", "ollama": "llama3.2:latest",
          "openai": "gpt-4o-mini"}
KEYS = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}
MiB = 1024 * 1024
#: The default bound on a line, a body and an answer (sidecar.providers.guard).
LIMIT = 8 * MiB
#: Peak memory a bounded response may add to an idle sidecar: a few copies of one
#: 8 MiB line while it is parsed, far below what an unbounded one reached (GBs).
HEADROOM_MB = 160


def peak_mb(pid: int) -> float:
    """The peak resident set of ``pid`` (``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM line")


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    kind = getattr(request, "param", "llamacpp")
    with FakeServer(kind, api_key=KEYS.get(kind)).start() as server:
        yield server


def provider_entry(server: FakeServer, **extra: Any) -> dict[str, Any]:
    return entry(server.base_url, model=MODELS[server.kind], key=KEYS.get(server.kind), **extra)


def name_of(server: FakeServer) -> str:
    return server.kind if server.kind in ("openai", "anthropic", "ollama") else "hostile"


def start(spawn: Any, server: FakeServer, *, env: dict[str, str] | None = None,
          **top: Any) -> SidecarProcess:
    name = name_of(server)
    config = build_config({name: provider_entry(server, **top.pop("entry", {}))}, default=name, **top)
    sidecar: SidecarProcess = spawn(config, env=env)
    assert "result" in sidecar.call("model:usage")
    return sidecar


def ask(sidecar: SidecarProcess, server: FakeServer, method: str, *, timeout: float = 60,
        **request: Any) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    params = {"request": {"prompt": "hello", **request},
              "selection": {"provider": name_of(server), "fallback": False}}
    started = time.monotonic()
    request_id = sidecar.start(method, params)
    response = sidecar.response(request_id, timeout=timeout)
    elapsed = time.monotonic() - started
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    return response, elapsed, chunks


def error_of(response: dict[str, Any]) -> tuple[str, str]:
    assert "error" in response, str(response)[:500]
    return response["error"]["data"]["type"], response["error"]["message"]


def closed_upstream(server: FakeServer) -> bool:
    return all(r.disconnected.wait(5) for r in server.requests)


def stream_lines(sidecar: SidecarProcess) -> list[bytes]:
    return [line for line in sidecar.raw_lines if b'"model:stream-chunk"' in line]


# -- 1. memory: no line, event, body or answer without a bound -----------------------------


@pytest.mark.parametrize("fake", ["llamacpp", "anthropic", "ollama"], indirect=True)
def test_a_line_that_never_ends_is_cut_at_the_bound(spawn: Any, fake: FakeServer) -> None:
    fake.enqueue(Flood())
    sidecar = start(spawn, fake, deadlineMs=10_000)
    idle = peak_mb(sidecar.proc.pid)
    response, elapsed, chunks = ask(sidecar, fake, "model:stream")
    kind, message = error_of(response)
    assert kind == "ModelError" and "oversized response" in message and f"{LIMIT} bytes" in message
    assert response["error"]["data"]["retryable"] is False
    assert elapsed < 8 and chunks == []
    assert peak_mb(sidecar.proc.pid) - idle < HEADROOM_MB
    assert closed_upstream(fake)
    assert "result" in ask(sidecar, fake, "model:generate")[0]  # still serving


@pytest.mark.parametrize("fake", ["llamacpp", "anthropic", "ollama"], indirect=True)
def test_a_huge_body_is_refused_without_buffering_it(spawn: Any, fake: FakeServer) -> None:
    fake.enqueue(Flood(total_bytes=8 * LIMIT))  # a valid answer, just too big
    sidecar = start(spawn, fake)
    idle = peak_mb(sidecar.proc.pid)
    response, _, _ = ask(sidecar, fake, "model:generate")
    kind, message = error_of(response)
    assert kind == "ModelError" and "oversized response (body over" in message
    assert peak_mb(sidecar.proc.pid) - idle < HEADROOM_MB
    assert closed_upstream(fake)


def test_the_bound_is_configurable(spawn: Any, fake: FakeServer) -> None:
    fake.enqueue(Flood(), Reply(chunks=["v" * 100_000] * 30), Reply(text="v" * 1_200_000))
    sidecar = start(spawn, fake, maxResponseBytes=MiB)
    for method in ("model:stream", "model:stream", "model:generate"):
        kind, message = error_of(ask(sidecar, fake, method)[0])
        assert kind == "ModelError" and f"over {MiB} bytes" in message
    assert "result" in ask(sidecar, fake, "model:generate")[0]


def test_an_answer_made_of_many_small_chunks_is_bounded_too(spawn: Any, fake: FakeServer) -> None:
    piece = "y" * 60_000
    fake.enqueue(Reply(chunks=[piece] * (3 * LIMIT // len(piece))))
    sidecar = start(spawn, fake)
    response, _, chunks = ask(sidecar, fake, "model:stream")
    kind, message = error_of(response)
    assert kind == "ModelError" and "oversized response (answer text over" in message
    sent = "".join(c["content"] for c in chunks)
    assert 0 < len(sent) <= LIMIT and response["error"]["data"]["partialContent"] == sent
    assert closed_upstream(fake)


def test_a_large_delta_reaches_the_host_in_small_lines(spawn: Any, fake: FakeServer) -> None:
    text = "z" * (3 * MiB)
    fake.enqueue(Reply(chunks=["start ", text, " end"]))
    sidecar = start(spawn, fake)
    response, _, chunks = ask(sidecar, fake, "model:stream")
    assert response["result"]["content"] == "start " + text + " end"
    assert "".join(c["content"] for c in chunks) == response["result"]["content"]
    assert max(len(line) for line in stream_lines(sidecar)) < 256 * 1024


# -- 2. the deadline bounds the whole request --------------------------------------------


def test_a_trickling_stream_does_not_outlive_the_deadline(spawn: Any, fake: FakeServer) -> None:
    # 16 bytes every 20 ms: a delta every ~0.3 s never trips the 1 s silence timeout;
    # only the deadline ends the stream.
    fake.enqueue(Drip(interval_s=0.02, text="slow " * 2000, chunk_size=16))
    sidecar = start(spawn, fake, deadlineMs=2000, entry={"timeoutMs": 1000})
    response, elapsed, _ = ask(sidecar, fake, "model:stream")
    kind, message = error_of(response)
    assert kind == "NetworkError" and "deadline of 2000 ms" in message
    assert 1.9 < elapsed < 4.0  # the whole answer would take ~12 s
    assert closed_upstream(fake)


# -- 3. a server ignoring maxTokens ------------------------------------------------------

PRICE = {"inputPer1M": 1000.0, "outputPer1M": 1000.0}


@pytest.mark.parametrize("fake", ["llamacpp", "anthropic", "ollama"], indirect=True)
def test_a_stream_far_past_max_tokens_is_stopped_and_billed_for_what_arrived(spawn: Any,
                                                                               fake: FakeServer) -> None:
    fake.enqueue(Reply(chunks=[" tok"] * 4101, usage=(3, 4101)))
    name = name_of(fake)
    sidecar = start(spawn, fake, modelOverrides={f"{name}/{MODELS[fake.kind]}": PRICE},
                    budget={"dailyLimit": 0.10})
    response, _, chunks = ask(sidecar, fake, "model:stream", maxTokens=5)
    result = response["result"]
    assert result["finishReason"] == "length", str(result)[:300]
    # Cut at 2 * maxTokens + 128 estimated tokens (3 bytes each): ~138 tokens, not 4,101.
    assert len(result["content"]) <= (2 * 5 + 128) * 3 + 4
    assert "".join(c["content"] for c in chunks) == result["content"]
    assert closed_upstream(fake)
    usage = sidecar.result("model:usage")
    spent = usage["daily"]["spentUsd"]
    assert spent < 0.2, usage  # the server's 4,101 tokens would have cost 4.10
    assert usage["byProvider"][name]["completionTokens"] <= 140
    # The response's costUsd is what the ledger holds, though the server's usage never came.
    assert result["metadata"]["costUsd"] == pytest.approx(spent, abs=1e-6) and spent > 0


@pytest.mark.parametrize("fake", ["llamacpp", "anthropic", "ollama"], indirect=True)
def test_a_body_far_past_max_tokens_is_cut_to_length(spawn: Any, fake: FakeServer) -> None:
    fake.enqueue(Reply(text=" tok" * 4101))
    sidecar = start(spawn, fake)
    response, _, _ = ask(sidecar, fake, "model:generate", maxTokens=5)
    result = response["result"]
    assert result["finishReason"] == "length" and len(result["content"]) <= (2 * 5 + 128) * 3


def test_an_honest_answer_at_max_tokens_is_untouched(spawn: Any, fake: FakeServer) -> None:
    # 300 tokens of ~5 bytes: within what a server honouring maxTokens=300 sends.
    words = [" token"] * 300
    fake.enqueue(Reply(chunks=words, finish_reason="length"), Reply(text="".join(words)))
    sidecar = start(spawn, fake)
    for method in ("model:stream", "model:generate"):
        result = ask(sidecar, fake, method, maxTokens=300)[0]["result"]
        assert result["content"] == "".join(words)


# -- 4. keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_an_environment_key_with_a_trailing_newline_works_and_never_shows(spawn: Any,
                                                                            fake: FakeServer) -> None:
    config = build_config({"openai": entry(fake.base_url, model="gpt-4o-mini")}, default="openai")
    sidecar = spawn(config, env={"OPENAI_API_KEY": OPENAI_KEY + "\n"})
    for method in ("model:generate", "model:stream"):
        response, _, _ = ask(sidecar, fake, method)
        assert "result" in response, response
    assert fake.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_a_key_echoed_in_pieces_never_reaches_stdout(spawn: Any, fake: FakeServer) -> None:
    cut = 11
    pieces = ["your key is ", OPENAI_KEY[:cut], OPENAI_KEY[cut:], " ok"]
    fake.enqueue(Reply(chunks=pieces), Reply(chunks=["ends with sk-test-"]))
    sidecar = start(spawn, fake)
    response, _, chunks = ask(sidecar, fake, "model:stream")
    sent = "".join(c["content"] for c in chunks)
    assert sent == "your key is [redacted] ok" == response["result"]["content"]
    for piece in (OPENAI_KEY[:cut], OPENAI_KEY[cut:]):
        assert not any(piece.encode() in line for line in stream_lines(sidecar)), piece
    # A held-back beginning of a key is sent at the end when no key follows.
    response, _, chunks = ask(sidecar, fake, "model:stream")
    assert "".join(c["content"] for c in chunks) == "ends with sk-test-" == response["result"]["content"]


# -- 5. text split across events and reads --------------------------------------------------


def _event(content: str, finish: str = "null") -> bytes:
    return (b'data: {"choices":[{"index":0,"delta":{"content":"' + content.encode() + b'"},"finish_reason":'
            + finish.encode() + b'}]}\n\n')


def test_a_surrogate_pair_split_across_events_is_joined(spawn: Any, fake: FakeServer) -> None:
    body = (_event("a \\ud83d") + _event("\\ude00 b \\ud83d") + _event("") + _event(" lone \\ude00 end", '"stop"')
            + b"data: [DONE]\n\n")
    fake.enqueue(Raw(body=body, content_type="text/event-stream"))
    sidecar = start(spawn, fake)
    response, _, chunks = ask(sidecar, fake, "model:stream")
    expected = "a \U0001F600 b \ufffd lone \ufffd end"
    assert response["result"]["content"] == expected, response
    assert "".join(c["content"] for c in chunks) == expected


@pytest.mark.parametrize("fake", ["llamacpp", "anthropic", "ollama"], indirect=True)
def test_a_character_split_across_reads_arrives_whole(spawn: Any, fake: FakeServer) -> None:
    text = "h\u00e9llo \U0001F600 \u4e2d\u6587"
    fake.enqueue(Drip(interval_s=0.002, text=text, chunk_size=1), Drip(interval_s=0.002, text=text, chunk_size=1))
    sidecar = start(spawn, fake)
    for method in ("model:stream", "model:generate"):
        assert ask(sidecar, fake, method)[0]["result"]["content"] == text


# -- 6. a local server that is not running -----------------------------------------------


def test_a_dead_local_server_is_named(spawn: Any, fake: FakeServer) -> None:
    with refusing_port() as port:
        dead = f"http://127.0.0.1:{port}/v1"
        config = build_config({"box": entry(dead, model=LLAMA, retries=2), "backup": provider_entry(fake)},
                              default="box", chain=["backup"])
        sidecar = spawn(config)
        for method in ("model:generate", "model:stream"):
            response = sidecar.call(method, {"request": {"prompt": "hi"},
                                             "selection": {"provider": "box", "fallback": False}})
            kind, message = error_of(response)
            assert kind == "ModelError" and response["error"]["code"] == -32004
            assert f"box: the local server at {dead} is not running" in message
            assert len(response["error"]["data"]["attempts"]) == 1  # not retried: it is not running
        response = sidecar.call("model:generate", {"request": {"prompt": "hi"},
                                                   "selection": {"provider": "box", "fallback": True}})
        attempts = response["result"]["metadata"]["attempts"]
        assert [a["provider"] for a in attempts] == ["box", "backup"]
        assert attempts[0]["error"]["type"] == "ModelError"
        health = sidecar.result("model:health")["providers"]
        assert health["box"]["available"] is False and health["backup"]["available"] is True


def test_the_deadline_spans_the_retries_of_structured_output(spawn: Any, fake: FakeServer) -> None:
    # Each call answers something that is not JSON after 1.4 s; three calls take 4.2 s,
    # but the request's deadline is 2 s for all of them together.
    slow = Reply(text="not json at all", delay_s=1.4)
    fake.enqueue(slow, slow, slow)
    sidecar = start(spawn, fake, deadlineMs=2000, entry={"timeoutMs": 3000})
    started = time.monotonic()
    response = sidecar.call("model:generate", {
        "request": {"prompt": "hello"}, "selection": {"provider": "hostile", "fallback": False},
        "responseFormat": {"type": "json", "maxRetries": 2}}, timeout=30)
    elapsed = time.monotonic() - started
    assert "error" in response, response
    assert elapsed < 3.2, (elapsed, response)
    assert len(fake.requests) == 2  # the third call never started: no time was left


def test_a_local_server_not_running_at_start_is_cooled_down(spawn: Any, fake: FakeServer) -> None:
    # The start-up refresh of model lists marks it, so the first requests go elsewhere.
    with refusing_port() as port:
        dead = f"http://127.0.0.1:{port}/v1"
        config = build_config({"box": entry(dead, model=LLAMA), "backup": provider_entry(fake)}, default="box",
                              chain=["backup"])
        sidecar = spawn(config)
        deadline = time.monotonic() + 10
        box: dict[str, Any] = {}
        while time.monotonic() < deadline:
            box = sidecar.result("model:health")["providers"]["box"]
            if box.get("coolDownMs"):
                break
            time.sleep(0.1)
        assert box.get("coolDownMs", 0) > 0 and box["available"] is False, box


def test_a_dead_local_server_is_not_tried_again_with_its_other_models(spawn: Any, fake: FakeServer) -> None:
    with refusing_port() as port:
        box = entry(f"http://127.0.0.1:{port}/v1", model=LLAMA, models=[LLAMA, "other-model"], retries=2)
        config = build_config({"box": box, "backup": provider_entry(fake)}, default="box", chain=["backup"])
        sidecar = spawn(config)
        response = sidecar.call("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": "box"}})
        attempts = response["result"]["metadata"]["attempts"]
        assert [a["provider"] for a in attempts] == ["box", "backup"], attempts
