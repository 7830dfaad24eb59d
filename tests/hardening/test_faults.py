"""Faults scripted in the fake servers, each with its expected outcome.

One sidecar serves the whole module (``rig``), with one provider per fault kind, each
pointing at its own fake (or at a port that refuses, or at a TLS mismatch). Every test
chooses its provider with ``selection.provider`` (and ``fallback`` as it needs), then
checks:

* the answer: the error type (and code) the protocol promises, or a fallback's success;
* time: nothing runs past its timeout or deadline (generous bounds);
* leaks: afterwards the sidecar is back to its idle task count with no request, task or
  reservation left (``debug_state``, SIGUSR1), and the fakes hold no connection beyond
  the idle pooled ones a whole answer leaves;
* money: the ledger (``model:usage``) grew by exactly the calls the fakes served
  (``FakeServer.served``), plus one *partial* row per stream cut after text went out.

DNS failure needs a sidecar of its own: the module's sidecar runs with
``MODEL_SIDECAR_DENY_REMOTE=1`` like every test sidecar, and its guard refuses a
non-loopback host before any lookup (checked here too).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import (
    CutStream,
    Cycle,
    Drip,
    Error,
    FakeServer,
    Hang,
    Malformed,
    MidStreamError,
    Raw,
    Reply,
    refusing_port,
    self_signed_context,
)
from tests.hardening.conftest import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    assert_no_leaks,
    build_config,
    entry,
    idle_baseline,
)
from tests.stdio.harness import SidecarProcess
from tests.stdio.schemas import assert_wire_valid

pytestmark = [pytest.mark.stdio, pytest.mark.hardening]

LLAMA = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Per-attempt timeout of the providers used for timing faults.
TIMEOUT_MS = 1000
#: Explicit prices make even loopback fakes cost money, so reservations hit the ledger.
PRICE = {"inputPer1M": 1000.0, "outputPer1M": 2000.0}


@dataclass
class Rig:
    sidecar: SidecarProcess
    baseline: dict[str, Any]
    fakes: dict[str, FakeServer]
    #: Ledger rows a test expects beyond the served calls (streams billed as partial).
    partial_rows: dict[str, int] = field(default_factory=dict)

    def call(self, method: str, provider: str, *, fallback: bool = False, prompt: str = "hello there",
             timeout: float = 30, **request: Any) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
        """One request through ``provider``: (response, seconds, stream chunks)."""
        params = {"request": {"prompt": prompt, "maxTokens": 32, **request},
                  "selection": {"provider": provider, "fallback": fallback}}
        started = time.monotonic()
        request_id = self.sidecar.start(method, params)
        response = self.sidecar.response(request_id, timeout=timeout)
        elapsed = time.monotonic() - started
        assert_wire_valid(response, method if "result" in response else None)
        chunks = [m["params"] for m in self.sidecar.notifications("model:stream-chunk", request_id)]
        assert [c["seq"] for c in chunks] == list(range(len(chunks)))
        return response, elapsed, chunks

    def burst(self, method: str, provider: str, count: int, *, fallback: bool) -> list[dict[str, Any]]:
        params = {"request": {"prompt": "storm", "maxTokens": 32}, "selection": {"provider": provider,
                                                                               "fallback": fallback}}
        ids = [self.sidecar.start(method, params) for _ in range(count)]
        answers = [self.sidecar.response(i, timeout=60) for i in ids]
        for request_id in ids:
            self.sidecar.notifications("model:stream-chunk", request_id)
        return answers

    def requests(self) -> dict[str, int]:
        usage = self.sidecar.result("model:usage")
        return {name: row["requests"] for name, row in usage["byProvider"].items()}

    def served(self) -> dict[str, int]:
        return {name: len(fake.served) for name, fake in self.fakes.items()}

    def check_leaks(self, *names: str, keepalive: int = 1) -> None:
        assert_no_leaks(self.sidecar, self.baseline, [self.fakes[n] for n in names], keepalive=keepalive)


def _error(response: dict[str, Any]) -> dict[str, Any]:
    assert "error" in response, response
    data: dict[str, Any] = response["error"]["data"]
    return data


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tls = self_signed_context(tmp_path_factory.mktemp("tls"))
    fakes = {
        "slow": FakeServer("llamacpp"),
        "cut": FakeServer("llamacpp"),
        "flappy": FakeServer("llamacpp"),
        "backup": FakeServer("llamacpp"),
        "plain": FakeServer("llamacpp"),
        "selfsigned": FakeServer("llamacpp", tls=tls),
        "openai": FakeServer("openai", api_key=OPENAI_KEY),
        "anthropic": FakeServer("anthropic", api_key=ANTHROPIC_KEY),
    }
    with contextlib.ExitStack() as stack:
        for fake in fakes.values():
            stack.enter_context(fake.start())
        refused = stack.enter_context(refusing_port())
        providers = {
            "openai": entry(fakes["openai"].base_url, model="gpt-4o-mini", key=OPENAI_KEY, retries=1),
            "anthropic": entry(fakes["anthropic"].base_url, model="claude-3-5-haiku-20241022", key=ANTHROPIC_KEY,
                               retries=1),
            # A loopback server is local: its first token may wait for a model load (120 s
            # by default); here the first token gets timeoutMs too.
            "slow": entry(fakes["slow"].base_url, model=LLAMA, timeout_ms=TIMEOUT_MS, firstTokenTimeoutMs=TIMEOUT_MS),
            "cut": entry(fakes["cut"].base_url, model=LLAMA),
            "flappy": entry(fakes["flappy"].base_url, model=LLAMA, retries=1),
            "backup": entry(fakes["backup"].base_url, model=LLAMA),
            "refused": entry(f"http://127.0.0.1:{refused}/v1", model=LLAMA, retries=1),
            "remote": entry("http://nonexistent.invalid:8080/v1", model=LLAMA, local=True),
            "tls-plain": entry(f"https://127.0.0.1:{fakes['plain'].port}/v1", model=LLAMA),
            "tls-selfsigned": entry(fakes["selfsigned"].base_url, model=LLAMA),
        }
        # Only "backup" beside the pinned provider: a fallback can only go there.
        config = build_config(providers, default="backup", chain=["backup"], modelOverrides={
            f"{name}/{p['defaultModel']}": PRICE for name, p in providers.items()})
        data_dir: Path = tmp_path_factory.mktemp("faults")
        (data_dir / "config.json").write_text(json.dumps(config))
        sidecar = SidecarProcess(data_dir)
        try:
            yield Rig(sidecar, idle_baseline(sidecar), fakes)
        finally:
            code = sidecar.close()
            assert code == 0, sidecar.stderr.decode(errors="replace")[-3000:]
            sidecar.assert_clean()
            for line in sidecar.raw_lines:
                assert_wire_valid(json.loads(line))
        for fake in fakes.values():  # the sidecar is gone: every connection with it too
            assert fake.wait_for_connections(0, timeout=5), fake


@pytest.fixture(autouse=True)
def _fresh_fakes(rig: Rig) -> Iterator[None]:
    for fake in rig.fakes.values():
        fake.reset()
    before = rig.requests()
    yield
    # Money: the ledger grew by what the fakes served (the cut-stream test adds its partial).
    after = rig.requests()
    grown = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    served = rig.served()
    for name in set(grown) | set(served):
        assert grown.get(name, 0) == served.get(name, 0) + rig.partial_rows.get(name, 0), (name, grown, served)
    rig.partial_rows = {}


# -- connecting ---------------------------------------------------------------------------


def test_connection_refused_by_a_local_server_names_it_then_falls_back(rig: Rig) -> None:
    # A loopback provider is local: a refusal means its server is not running.
    response, elapsed, _ = rig.call("model:generate", "refused")
    error = _error(response)
    assert response["error"]["code"] == -32004 and error["type"] == "ModelError" and error["retryable"]
    assert "refused: the local server at http://127.0.0.1:" in response["error"]["message"]
    assert "is not running" in response["error"]["message"]
    assert len(error["attempts"]) == 1  # not retried: a server that is not running stays so
    assert elapsed < 3
    response, elapsed, _ = rig.call("model:generate", "refused", fallback=True)
    attempts = response["result"]["metadata"]["attempts"]
    assert [a["provider"] for a in attempts][-1] == "backup" and attempts[0]["error"]["type"] == "ModelError"
    assert elapsed < 3
    rig.check_leaks("backup")


def test_remote_guard_refuses_a_non_loopback_host_before_any_lookup(rig: Rig) -> None:
    response, elapsed, _ = rig.call("model:generate", "remote")
    assert _error(response)["type"] == "NetworkError"
    assert "remote connections are disabled" in response["error"]["message"]
    assert elapsed < 1


@pytest.mark.parametrize("provider, reason", [
    ("tls-plain", "TLS handshake with 127.0.0.1:"),  # the server speaks plain HTTP
    ("tls-selfsigned", "not accepted: self-signed certificate; set caFile"),
])
def test_tls_failures_are_network_errors_and_send_nothing(rig: Rig, provider: str, reason: str) -> None:
    for method in ("model:generate", "model:stream"):
        response, elapsed, chunks = rig.call(method, provider)
        assert _error(response)["type"] == "NetworkError", response
        assert reason in response["error"]["message"]
        assert elapsed < 3 and chunks == []
    fake = rig.fakes["plain" if provider == "tls-plain" else "selfsigned"]
    assert fake.requests == []  # no request got through the failed handshake
    rig.check_leaks("plain" if provider == "tls-plain" else "selfsigned", keepalive=0)


# -- timing -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["model:generate", "model:stream"])
@pytest.mark.parametrize("behaviour", [Hang(), Reply(delay_s=10)], ids=["never-answers", "read-timeout"])
def test_a_provider_that_does_not_answer_times_out_and_is_disconnected(rig: Rig, method: str, behaviour: Any) -> None:
    rig.fakes["slow"].enqueue(behaviour)
    response, elapsed, chunks = rig.call(method, "slow")
    error = _error(response)
    # Not streamed, the answer may take the first-token time (a model load) plus timeoutMs.
    limit_ms = TIMEOUT_MS if method == "model:stream" else 2 * TIMEOUT_MS
    assert error["type"] == "NetworkError" and f"{limit_ms} ms" in response["error"]["message"], response
    assert limit_ms / 1000 * 0.9 <= elapsed < limit_ms / 1000 + 2
    assert chunks == []
    (request,) = rig.fakes["slow"].requests
    assert request.disconnected.wait(3), "the upstream request was not closed"
    rig.check_leaks("slow", keepalive=0)


def test_a_stream_dripping_one_byte_a_second_hits_the_idle_timeout(rig: Rig) -> None:
    # Bytes keep arriving, but no whole chunk within timeoutMs: the silence timer is per
    # chunk, so a trickle cannot hold the request open.
    rig.fakes["slow"].enqueue(Drip(interval_s=1.0))
    response, elapsed, chunks = rig.call("model:stream", "slow")
    assert _error(response)["type"] == "NetworkError"
    assert "silent for 1000 ms" in response["error"]["message"], response
    assert elapsed < TIMEOUT_MS / 1000 + 2 and chunks == []
    assert rig.fakes["slow"].requests[0].disconnected.wait(3)
    rig.check_leaks("slow", keepalive=0)


def test_a_slow_but_steady_stream_outlives_the_timeout(rig: Rig) -> None:
    # Five chunks 0.4 s apart: 2 s in all, twice timeoutMs, yet never 1 s of silence.
    rig.fakes["slow"].enqueue(Reply("one two three four five", chunk_delay_s=0.4))
    response, elapsed, chunks = rig.call("model:stream", "slow")
    assert response["result"]["content"] == "one two three four five"
    assert elapsed > TIMEOUT_MS / 1000 and len(chunks) == 6
    rig.check_leaks("slow")


def test_the_request_deadline_bounds_a_provider_with_a_long_timeout(rig: Rig) -> None:
    # cut's timeoutMs is the default 120 s; the config's deadlineMs (1.5 s) wins.
    assert "result" in rig.sidecar.call("model:set-config", {"config": {"deadlineMs": 1500}})
    try:
        rig.fakes["cut"].enqueue(Hang())
        response, elapsed, _ = rig.call("model:generate", "cut")
        assert _error(response)["type"] == "NetworkError"
        assert "deadline of 1500 ms" in response["error"]["message"]
        assert 1.4 <= elapsed < 4
        assert rig.fakes["cut"].requests[0].disconnected.wait(3)
    finally:
        assert "result" in rig.sidecar.call("model:set-config", {"config": {"deadlineMs": None}})
    rig.check_leaks("cut", keepalive=0)


# -- broken answers -----------------------------------------------------------------------


def test_a_stream_cut_after_n_chunks_keeps_what_was_sent_and_bills_it(rig: Rig) -> None:
    rig.fakes["cut"].enqueue(CutStream(after_chunks=3, text="alpha beta gamma delta epsilon"))
    response, elapsed, chunks = rig.call("model:stream", "cut")
    error = _error(response)
    assert error["type"] == "NetworkError" and "connection broken" in response["error"]["message"]
    assert [c["chunk"]["content"] for c in chunks] == ["alpha", " beta", " gamma"]
    assert error["partialContent"] == "alpha beta gamma"
    assert elapsed < 3
    rig.partial_rows = {"cut": 1}  # billed as a partial call
    usage = rig.sidecar.result("model:usage")
    assert usage["byModel"][f"cut/{LLAMA}"]["spentUsd"] > 0 and usage["daily"]["reservedUsd"] == 0
    rig.check_leaks("cut", keepalive=0)


def test_a_non_streaming_answer_cut_in_half_is_a_network_error(rig: Rig) -> None:
    rig.fakes["cut"].enqueue(CutStream())
    response, elapsed, _ = rig.call("model:generate", "cut")
    assert _error(response)["type"] == "NetworkError" and elapsed < 3
    rig.check_leaks("cut", keepalive=0)


@pytest.mark.parametrize("method", ["model:generate", "model:stream"])
def test_a_malformed_line_is_a_model_error(rig: Rig, method: str) -> None:
    rig.fakes["cut"].enqueue(Malformed(after_chunks=2, text="one two three four"))
    response, _, chunks = rig.call(method, "cut")
    error = _error(response)
    assert response["error"]["code"] == -32004 and error["type"] == "ModelError"
    assert "malformed JSON" in response["error"]["message"]
    if method == "model:stream":
        assert error["partialContent"] == "one two" == "".join(c["chunk"]["content"] for c in chunks)
        rig.partial_rows = {"cut": 1}
    rig.check_leaks("cut")


@pytest.mark.parametrize("method", ["model:generate", "model:stream"])
def test_a_200_with_an_html_body_is_a_model_error_then_falls_back(rig: Rig, method: str) -> None:
    page = Raw(200, b"<!doctype html><html><body>Captive portal: please log in</body></html>")
    rig.fakes["cut"].enqueue(page, page)
    response, _, chunks = rig.call(method, "cut")
    assert _error(response)["type"] == "ModelError" and chunks == []
    response, _, chunks = rig.call(method, "cut", fallback=True)
    attempts = response["result"]["metadata"]["attempts"]
    assert attempts[0]["error"]["type"] == "ModelError" and attempts[-1]["provider"] == "backup"
    rig.check_leaks("cut", "backup", keepalive=2)


def test_an_error_event_mid_stream_keeps_the_partial_content(rig: Rig) -> None:
    rig.fakes["anthropic"].enqueue(MidStreamError(after_chunks=2, text="red green blue"))
    response, _, chunks = rig.call("model:stream", "anthropic")
    error = _error(response)
    assert error["type"] == "ModelError" and error["partialContent"] == "red green"
    assert len(chunks) == 2
    rig.partial_rows = {"anthropic": 1}
    rig.check_leaks("anthropic")


# -- storms and flapping ------------------------------------------------------------------


def test_a_429_storm_is_a_rate_limit_error_and_falls_back_without_amplification(rig: Rig) -> None:
    rig.fakes["openai"].set_default(Error(429, headers={"retry-after": "1"}))
    started = time.monotonic()
    answers = rig.burst("model:generate", "openai", 20, fallback=True)
    elapsed = time.monotonic() - started
    assert all("result" in a for a in answers), [a for a in answers if "error" in a][:2]
    assert {a["result"]["metadata"]["provider"] for a in answers} == {"backup"}
    for answer in answers:
        failed = [a for a in answer["result"]["metadata"]["attempts"] if "error" in a]
        assert failed and all(a["error"]["type"] == "RateLimitError" for a in failed)
    # At most 1 + maxRetries attempts each; the retry-after pause usually saves the retries.
    assert 20 <= len(rig.fakes["openai"].requests) <= 40
    assert elapsed < 15
    # Without a fallback it is the provider's own error, with the wait it asked for.
    response, _, _ = rig.call("model:generate", "openai")
    error = _error(response)
    assert response["error"]["code"] == -32002 and error["type"] == "RateLimitError"
    rig.check_leaks("openai", "backup", keepalive=20)


def test_a_529_overloaded_storm_is_retried_then_falls_back(rig: Rig) -> None:
    rig.fakes["anthropic"].set_default(Error(529))
    answers = rig.burst("model:stream", "anthropic", 20, fallback=True)
    assert all("result" in a for a in answers)
    assert {a["result"]["metadata"]["provider"] for a in answers} == {"backup"}
    overloaded = [a for answer in answers for a in answer["result"]["metadata"]["attempts"] if "error" in a]
    assert overloaded and all(a["error"]["type"] == "ModelError" for a in overloaded)
    assert all("Overloaded" in a["error"]["message"] for a in overloaded)
    assert len(rig.fakes["anthropic"].requests) <= 40  # 1 + maxRetries each at most
    response, _, _ = rig.call("model:generate", "anthropic")
    assert response["error"]["code"] == -32004 and _error(response)["type"] == "ModelError"
    assert _error(response)["status"] == 529
    rig.check_leaks("anthropic", "backup", keepalive=20)


def test_a_flapping_provider_serves_every_request_with_a_retry_or_a_fallback(rig: Rig) -> None:
    rig.fakes["flappy"].set_default(Cycle(Error(503), Reply("up again")))
    # One at a time: every first attempt meets the 503, every retry the answer.
    for _ in range(5):
        response, elapsed, _ = rig.call("model:generate", "flappy")
        attempts = response["result"]["metadata"]["attempts"]
        assert [("error" in a) for a in attempts] == [True, False] and response["result"]["content"] == "up again"
        assert elapsed < 3
    # Concurrently the rotation is shared: some requests need the fallback, none fails.
    answers = rig.burst("model:stream", "flappy", 20, fallback=True)
    assert all("result" in a for a in answers)
    providers = {a["result"]["metadata"]["provider"] for a in answers}
    assert providers <= {"flappy", "backup"}
    assert len(rig.fakes["flappy"].served) + len(rig.fakes["backup"].served) == 25
    rig.check_leaks("flappy", "backup", keepalive=20)


def test_after_all_faults_the_health_of_each_provider_says_why(rig: Rig) -> None:
    health = rig.sidecar.result("model:health")["providers"]
    assert health["refused"]["available"] is False
    assert health["backup"]["available"] is True
    assert health["local-llm"]["enabled"] is False
    # backup served the fallbacks of every test above, streams included, which give
    # their connections back to the pool: idle pooled ones, bounded by the pool.
    rig.check_leaks("backup", keepalive=20)


# -- cancelling and reconfiguring mid-flight ---------------------------------------------


def _cancel(rig: Rig, request_id: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    rig.sidecar.cancel(request_id)
    response = rig.sidecar.response(request_id, timeout=5)
    elapsed = time.monotonic() - started
    assert response["error"]["code"] == -32800 and response["error"]["data"]["type"] == "RequestCancelled"
    rig.sidecar.notifications("model:stream-chunk", request_id)
    return response, elapsed


def _start(rig: Rig, method: str, provider: str) -> Any:
    return rig.sidecar.start(method, {"request": {"prompt": "cancel me", "maxTokens": 32},
                                      "selection": {"provider": provider, "fallback": False}})


def test_a_cancel_during_a_retry_backoff_answers_at_once(rig: Rig) -> None:
    # A 503 is retried after ~0.5 s (a refused local server is not retried at all).
    rig.fakes["flappy"].enqueue(Error(503))
    request_id = _start(rig, "model:generate", "flappy")
    rig.fakes["flappy"].wait_for_requests(1)
    time.sleep(0.15)
    _, elapsed = _cancel(rig, request_id)
    assert elapsed < 0.5
    rig.check_leaks()


def test_a_cancel_while_waiting_upstream_closes_the_connection(rig: Rig) -> None:
    rig.fakes["cut"].set_default(Hang())
    ids = [_start(rig, method, "cut") for method in ("model:generate", "model:stream")]
    requests = rig.fakes["cut"].wait_for_requests(2)
    for request_id in ids:
        assert _cancel(rig, request_id)[1] < 0.5
    assert all(r.disconnected.wait(3) for r in requests)
    rig.check_leaks("cut", keepalive=0)


def test_a_cancel_mid_stream_bills_what_was_streamed(rig: Rig) -> None:
    rig.fakes["cut"].enqueue(Reply("one two three four five six", chunk_delay_s=0.3))
    request_id = _start(rig, "model:stream", "cut")
    rig.sidecar.wait_for(lambda m: m.get("method") == "model:stream-chunk"
                         and m["params"]["requestId"] == request_id and m["params"]["chunk"]["content"] == " two",
                         timeout=5)
    response, _ = _cancel(rig, request_id)
    assert response["error"]["data"]["partialContent"].startswith("one two")
    assert rig.fakes["cut"].requests[0].disconnected.wait(3)
    rig.partial_rows = {"cut": 1}
    assert rig.sidecar.result("model:usage")["daily"]["reservedUsd"] == 0
    rig.check_leaks("cut", keepalive=0)


def test_a_cancel_while_queued_on_the_local_limiter_frees_the_queue(rig: Rig) -> None:
    limit = {"providers": {"custom": {"cut": {"rateLimit": {"maxRetries": 0, "maxConcurrent": 1}}}}}
    assert "result" in rig.sidecar.call("model:set-config", {"config": limit})
    try:
        rig.fakes["cut"].set_default(Hang())
        holder = _start(rig, "model:generate", "cut")
        rig.fakes["cut"].wait_for_requests(1)
        queued = [_start(rig, method, "cut") for method in ("model:generate", "model:stream")]
        time.sleep(0.2)
        state = rig.sidecar.result("model:health")["providers"]["cut"]["limiter"]
        assert state["inFlight"] == 1 and state["queued"] == 2, state
        for request_id in queued:
            _cancel(rig, request_id)
        state = rig.sidecar.result("model:health")["providers"]["cut"]["limiter"]
        assert state["inFlight"] == 1 and state["queued"] == 0, state
        _cancel(rig, holder)
        assert len(rig.fakes["cut"].requests) == 1  # the queued ones never went upstream
    finally:
        unlimit = {"providers": {"custom": {"cut": {"rateLimit": {"maxRetries": 0, "maxConcurrent": None}}}}}
        assert "result" in rig.sidecar.call("model:set-config", {"config": unlimit})
    rig.check_leaks("cut", keepalive=0)


def test_a_provider_replaced_mid_request_finishes_then_closes_its_connections(rig: Rig) -> None:
    rig.fakes["backup"].set_default(Reply("slow but fine", delay_s=0.5))
    ids = [_start(rig, "model:generate", "backup") for _ in range(5)]
    rig.fakes["backup"].wait_for_requests(5)
    # A new timeoutMs replaces the provider object: the old one (and its pool of five
    # connections) must close once its five calls are done.
    change = {"providers": {"custom": {"backup": {"timeoutMs": 30_000}}}}
    assert "result" in rig.sidecar.call("model:set-config", {"config": change})
    try:
        assert all("result" in rig.sidecar.response(i, timeout=10) for i in ids)
        assert rig.fakes["backup"].wait_for_connections(0, timeout=5), rig.fakes["backup"].open_connections
        response, _, _ = rig.call("model:generate", "backup")
        assert response["result"]["content"] == "slow but fine"
    finally:
        assert "result" in rig.sidecar.call(
            "model:set-config", {"config": {"providers": {"custom": {"backup": {"timeoutMs": None}}}}})
    rig.check_leaks("backup", keepalive=1)


# -- DNS ----------------------------------------------------------------------------------


def test_a_host_that_does_not_resolve_is_a_network_error(hardening_spawn: Any) -> None:
    # A sidecar of its own without the remote guard, so the name really goes to the
    # resolver: `.invalid` can never resolve (RFC 6761), and the provider is `local`, so
    # no proxy from the environment is involved. Nothing else is configured.
    config = build_config({"nodns": entry("http://nonexistent.invalid:8080/v1", model="m", local=True,
                                          timeout_ms=3000)}, default="nodns")
    sidecar, baseline = hardening_spawn(config, env={"MODEL_SIDECAR_DENY_REMOTE": "0"})
    for method in ("model:generate", "model:stream"):
        started = time.monotonic()
        response = sidecar.call(method, {"request": {"prompt": "hi"}}, timeout=30)
        elapsed = time.monotonic() - started
        assert response["error"]["data"]["type"] == "NetworkError", response
        message = response["error"]["message"]
        assert "remote connections are disabled" not in message
        assert "could not connect" in message or "timed out" in message
        assert elapsed < 3 + 2  # the connect timeout (min(5 s, timeoutMs)) bounds the lookup
    assert_no_leaks(sidecar, baseline, [])
