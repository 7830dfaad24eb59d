"""Cold loads are not failures, through stdio: a local model that is loading gets a
first-token timeout long enough for the load (``firstTokenTimeoutMs``, 120 s by default
for local providers), apart from the silence timeout between chunks (``timeoutMs``);
``preload`` loads it after start-up; ``model:health`` says "loading"."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fakes import FakeServer, Reply
from tests.stdio.conftest import Spawn
from tests.stdio.harness import SidecarProcess

pytestmark = pytest.mark.stdio

OFF = {"defaultModel": "off", "enabled": False}


def ollama_only(fake: FakeServer, **entry: Any) -> dict[str, Any]:
    return {
        "providers": {
            "openai": {"baseURL": "https://api.openai.com/v1", **OFF},
            "anthropic": {"baseURL": "https://api.anthropic.com", **OFF},
            "ollama": {"baseURL": fake.base_url, "defaultModel": "llama3.2", "rateLimit": {"maxRetries": 0},
                       **entry},
            "custom": {"local-llm": {"baseURL": "http://127.0.0.1:8080/v1", **OFF}},
        },
        "defaultProvider": "ollama", "fallbackChain": [],
    }


def stream(sidecar: SidecarProcess, timeout: float = 20) -> dict[str, Any]:
    return sidecar.call("model:stream", {"request": {"prompt": "hi"}}, timeout=timeout)


@pytest.fixture
def ollama() -> Any:
    with FakeServer("ollama").start() as fake:
        yield fake


def test_a_slow_first_token_of_a_local_model_is_a_load_not_a_failure(spawn: Spawn, ollama: FakeServer) -> None:
    # timeoutMs 500 is the silence between chunks; the load before the first one may take
    # the local default of 120 s. Streamed and not.
    sidecar = spawn(ollama_only(ollama, timeoutMs=500))
    ollama.enqueue(Reply("warm now", delay_s=1.5), Reply("again", delay_s=1.5))
    assert stream(sidecar)["result"]["content"] == "warm now"
    answer = sidecar.call("model:generate", {"request": {"prompt": "hi"}})
    assert answer["result"]["content"] == "again", answer


def test_first_token_timeout_is_configurable(spawn: Spawn, ollama: FakeServer) -> None:
    sidecar = spawn(ollama_only(ollama, timeoutMs=5000, firstTokenTimeoutMs=300))
    ollama.enqueue(Reply("late", delay_s=2))
    started = time.monotonic()
    answer = stream(sidecar)
    assert answer["error"]["data"]["type"] == "NetworkError", answer
    assert "silent for 300 ms before the first chunk" in answer["error"]["message"]
    assert time.monotonic() - started < 1.8


def test_silence_after_the_first_chunk_is_still_bounded_by_timeout_ms(spawn: Spawn, ollama: FakeServer) -> None:
    sidecar = spawn(ollama_only(ollama, timeoutMs=500, firstTokenTimeoutMs=10_000))
    ollama.enqueue(Reply("one two three", chunk_delay_s=1.0))  # 1 s before every chunk
    answer = stream(sidecar)
    assert answer["error"]["data"]["type"] == "NetworkError", answer
    assert "silent for 500 ms" in answer["error"]["message"] and "first chunk" not in answer["error"]["message"]


def test_a_non_streamed_call_gets_the_load_time_plus_timeout_ms(spawn: Spawn, ollama: FakeServer) -> None:
    sidecar = spawn(ollama_only(ollama, timeoutMs=400, firstTokenTimeoutMs=400))
    ollama.enqueue(Reply("ok", delay_s=0.6), Reply("too late", delay_s=2))
    assert sidecar.result("model:generate", {"request": {"prompt": "hi"}})["content"] == "ok"
    answer = sidecar.call("model:generate", {"request": {"prompt": "hi"}})
    assert "no answer within 800 ms" in answer["error"]["message"], answer


def test_health_says_loading_while_ollama_loads_the_model(spawn: Spawn, ollama: FakeServer) -> None:
    ollama.renderer.load_s = 2.0  # type: ignore[attr-defined]
    ollama.enqueue(Reply("loaded", delay_s=2.0))
    sidecar = spawn(ollama_only(ollama))
    assert sidecar.result("model:health")["providers"]["ollama"]["state"] == "ready"
    request = sidecar.start("model:generate", {"request": {"prompt": "hi"}})
    ollama.wait_for_requests(1)
    health = sidecar.result("model:health")["providers"]["ollama"]
    assert health["state"] == "loading" and health["loadingModels"] == ["llama3.2"], health
    assert health["available"] is True
    assert sidecar.response(request, 10)["result"]["content"] == "loaded"
    assert sidecar.result("model:health")["providers"]["ollama"]["state"] == "ready"


def test_health_says_down_when_ollama_is_not_running(spawn: Spawn) -> None:
    with FakeServer("ollama").start() as fake:
        config = ollama_only(fake)
    sidecar = spawn(config)  # the fake is stopped: nothing listens there
    health = sidecar.result("model:health")["providers"]["ollama"]
    assert health["state"] == "down" and health["available"] is False, health


def test_preload_asks_ollama_to_load_the_default_model_with_keep_alive(spawn: Spawn, ollama: FakeServer) -> None:
    spawn(ollama_only(ollama, preload=True, keepAlive="30m"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not ollama.requests:
        time.sleep(0.05)
    (load,) = ollama.requests
    assert load.json == {"model": "llama3.2", "messages": [], "stream": False, "keep_alive": "30m"}
    assert ollama.pending == 0  # a load uses no scripted answer: nothing was generated


def test_keep_alive_goes_with_every_request(spawn: Spawn, ollama: FakeServer) -> None:
    sidecar = spawn(ollama_only(ollama, keepAlive="-1"))
    sidecar.result("model:generate", {"request": {"prompt": "hi"}})
    assert ollama.requests[-1].json["keep_alive"] == -1


def test_without_preload_nothing_is_loaded_at_start_up(spawn: Spawn, ollama: FakeServer) -> None:
    sidecar = spawn(ollama_only(ollama))
    sidecar.result("model:health")
    assert ollama.requests == []
