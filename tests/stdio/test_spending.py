"""Choosing and spending through stdio: model:select, model:usage, budget alerts and
blocking, rate limits, and the ledger across a kill -9."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.fakes import Error, Reply
from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.harness import SidecarProcess
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio

PAID_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def paid_config(fakes: dict[str, Any], *, daily: float | None = None, **top: Any) -> dict[str, Any]:
    """Only the llama.cpp fake, priced by an override at $1000 per 1M tokens each way."""
    config = fake_config(fakes, defaultProvider="local-llm", fallbackChain=["local-llm"], **top)
    config["modelOverrides"] = {f"local-llm/{PAID_MODEL}": {"inputPer1M": 1000.0, "outputPer1M": 1000.0}}
    if daily is not None:
        config["budget"] = {"dailyLimit": daily, "alertThreshold": 0.1}
    return config


def test_select_explains_the_choice_without_calling_a_model(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    params = {"request": {"prompt": "what does this regex do: ^(?:a|b)+$"}}
    response = sidecar.call("model:select", params)
    assert_wire_valid(response, "model:select")
    result = response["result"]
    assert result["taskType"] == "code_explanation"
    assert result["reasons"][0].startswith("task: code_explanation")
    assert len(result["candidates"]) >= 4 and result["fallbacks"]
    assert all(server.requests == [] for server in fakes.values())
    # The same request with a task override and another priority.
    other = sidecar.result("model:select", {"request": {**params["request"], "taskType": "planning"},
                                            "selection": {"priority": "cost", "localOnly": True}})
    assert other["taskType"] == "planning"
    assert all(c["local"] for c in other["candidates"] if "excluded" not in c)


def test_every_response_carries_task_type_and_reasons(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", {"request": {"prompt": "make sure parse() handles empty input"}})
    assert result["metadata"]["taskType"] == "testing"
    assert any(r.startswith("chosen") for r in result["metadata"]["selectionReasons"])


def test_a_burst_never_spends_past_the_daily_limit(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["local-llm"].set_default(Reply("ok", usage=(10, 10), delay_s=0.05))
    sidecar = spawn(paid_config(fakes, daily=0.5))
    # Worst case per call: ~100 prompt bytes + 50 output tokens at $1000/1M ≈ $0.15.
    ids = [sidecar.start("model:generate", {"request": {"prompt": "hi there", "maxTokens": 50}})
           for _ in range(20)]
    answers = [sidecar.response(i) for i in ids]
    ok = [a for a in answers if "result" in a]
    blocked = [a for a in answers if "error" in a]
    assert ok and blocked
    assert all(a["error"]["data"]["type"] == "BudgetExceededError" for a in blocked)
    usage = sidecar.result("model:usage")
    assert usage["daily"]["spentUsd"] <= 0.5
    assert usage["daily"]["reservedUsd"] == 0
    assert usage["byProvider"]["local-llm"]["requests"] == len(ok) == len(fakes["local-llm"].requests)
    assert usage["daily"]["spentUsd"] == pytest.approx(len(ok) * 20 * 1000 / 1e6)
    alerts = [m for m in sidecar.backlog if m.get("method") == "model:budget-alert"]
    assert len(alerts) == 1 and alerts[0]["params"]["period"] == "daily"


def test_not_blocking_lets_requests_through_and_says_over(spawn: Spawn, fakes: dict[str, Any]) -> None:
    config = paid_config(fakes, daily=0.00001)
    config["budget"]["blockOnLimit"] = False
    sidecar = spawn(config)
    assert "result" in sidecar.call("model:generate", {"request": {"prompt": "hi", "maxTokens": 5}})
    usage = sidecar.result("model:usage")
    assert usage["daily"]["over"] is True and usage["daily"]["remainingUsd"] == 0


def test_usage_survives_a_restart(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(paid_config(fakes, daily=100))
    sidecar.result("model:generate", {"request": {"prompt": "hi", "maxTokens": 5}})
    before = sidecar.result("model:usage")
    assert sidecar.close() == 0
    again = spawn(data_dir=sidecar.data_dir)
    assert again.result("model:usage")["daily"]["spentUsd"] == before["daily"]["spentUsd"] > 0


def test_kill_9_under_load_loses_no_settled_record(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["local-llm"].set_default(Reply("ok", usage=(10, 10), delay_s=0.02))
    data_dir = None
    answered_ok = 0
    for round_no in range(3):
        sidecar = spawn(paid_config(fakes, daily=1000), data_dir=data_dir)
        data_dir = sidecar.data_dir
        # Answers spread over ~0.8 s (settles committed together would otherwise all be
        # done by the time the first answer is read, and the kill would cut nothing).
        for k in range(40):
            fakes["local-llm"].enqueue(Reply("ok", usage=(10, 10), delay_s=0.02 * (k + 1)))
        ids = [sidecar.start("model:generate", {"request": {"prompt": f"r{round_no}", "maxTokens": 5}})
               for _ in range(40)]
        sidecar.response(ids[0])  # the sidecar is serving; now kill it mid-burst
        time.sleep(0.05 * round_no)
        sidecar.proc.send_signal(signal.SIGKILL)
        sidecar.proc.wait(5)
        time.sleep(0.2)
        answered_ok += 1 + sum(1 for m in list(sidecar.backlog) + _drain(sidecar)
                               if m.get("id") in ids and "result" in m)
    after = spawn(data_dir=data_dir)
    usage = after.result("model:usage")
    # Every answer the host saw was settled before it was sent; nothing stays reserved.
    settled = usage["byProvider"]["local-llm"]["requests"]
    assert 3 <= answered_ok <= settled <= len(fakes["local-llm"].requests)
    assert settled < 120  # the kills really cut the bursts short
    assert usage["daily"]["reservedUsd"] == 0


def _drain(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    out = []
    while True:
        item = sidecar.messages.get(timeout=2)
        if item is None:
            return out
        out.append(item)


def test_retry_after_pauses_every_concurrent_call(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["openai"].enqueue(Error(429, headers={"retry-after": "1"}))
    fakes["openai"].set_default(Reply("ok", delay_s=0.3))
    sidecar = spawn(fake_config(fakes))
    params = {"request": {"prompt": "hi"}, "selection": {"provider": "openai", "fallback": False}}
    first = sidecar.start("model:generate", params)
    fakes["openai"].wait_for_requests(1)
    time.sleep(0.1)
    second = sidecar.start("model:generate", params)
    assert "result" in sidecar.response(first) and "result" in sidecar.response(second)
    requests = fakes["openai"].requests
    limited_at = requests[0].received_at
    assert all(r.received_at - limited_at >= 0.95 for r in requests[1:])


def test_a_local_limit_that_would_wait_too_long_is_a_rate_limit_error(spawn: Spawn, fakes: dict[str, Any]) -> None:
    config = fake_config(fakes, deadlineMs=1500)
    config["providers"]["ollama"]["rateLimit"] = {"maxRequests": 1, "windowMs": 60000, "maxRetries": 0}
    sidecar = spawn(config)
    params = {"request": {"prompt": "hi"}, "selection": {"provider": "ollama", "fallback": False}}
    assert "result" in sidecar.call("model:generate", params)
    started = time.monotonic()
    error = sidecar.call("model:generate", params)["error"]
    assert error["data"]["type"] == "RateLimitError" and error["data"]["retryAfterMs"] > 50_000
    assert time.monotonic() - started < 1.0  # refused at once, not after waiting
    assert len(fakes["ollama"].requests) == 1
    health = sidecar.result("model:health")["providers"]["ollama"]
    assert health["limiter"]["maxRequests"] == 1 and health["limiter"]["windowRequests"] == 1
    assert health["coolDownMs"] == 0  # our own limit does not count against the provider


def test_a_blocked_request_carries_the_usage(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(paid_config(fakes, daily=0.00001))
    error = sidecar.call("model:generate", {"request": {"prompt": "hi", "maxTokens": 5}})["error"]
    assert (error["code"], error["data"]["type"]) == (-32006, "BudgetExceededError")
    assert error["data"]["usage"]["daily"]["limitUsd"] == 0.00001
    assert error["data"]["attempts"][0]["provider"] == "local-llm"
    assert fakes["local-llm"].requests == []
