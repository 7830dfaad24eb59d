"""Tool calls on the real embedded model (SmolLM2-135M served by llama-cpp-python).

llama-cpp-python's server, with the chat template the model file carries (ChatML),
constrains a call forced by name (``tool_choice: {"type": "function", ...}``) with a
grammar built from the tool's parameters, so a 135M model still produces arguments
that match the schema. It ignores ``"required"`` (it answers in text), so the
compatible provider sends ``"required"`` with one tool as that tool by name. These
tests go host → sidecar subprocess → real model, and assert what the sidecar
guarantees, not the model's wording. Skipped like ``test_local_model.py`` without the
``[local]`` extra (never in CI: ``SIDECAR_REQUIRE_LOCAL_MODEL=1``).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.stdio.conftest import Spawn
from tests.stdio.test_local_model import MODEL, config, local_model

__all__ = ["local_model"]  # the module-scoped fixture, shared by import

pytestmark = [pytest.mark.stdio, pytest.mark.localmodel, pytest.mark.timeout(180)]

WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 40},
                       "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
READ_FILE = {
    "name": "read_file",
    "description": "Read a text file of the project.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "minLength": 1, "maxLength": 60}},
        "required": ["path"],
        "additionalProperties": False,
    },
}
PROMPT = "What is the weather in Paris, in celsius?"
RESULT = "18 degrees celsius, sunny."


def tool_request(choice: Any, tools: list[dict[str, Any]] | None = None, prompt: str = PROMPT,
                 **extra: Any) -> dict[str, Any]:
    return {"request": {"prompt": prompt, "maxTokens": 60, "temperature": 0, "tools": tools or [WEATHER],
                        "toolChoice": choice, **extra}}


def assert_valid_call(result: dict[str, Any], tool: dict[str, Any]) -> dict[str, Any]:
    """The one call of ``result``: names ``tool``, arguments valid against its schema."""
    assert result["model"] == MODEL and result["metadata"]["provider"] == "local-llm"
    assert result["finishReason"] == "tool_calls"
    (call,) = result["toolCalls"]
    assert call["name"] == tool["name"] and call["id"]
    assert isinstance(call["arguments"], dict)
    jsonschema.validate(call["arguments"], tool["parameters"])
    return dict(call)


def test_a_call_forced_by_name_has_valid_arguments(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    result = sidecar.result("model:generate", tool_request({"name": "get_weather"}), timeout=120)
    assert_valid_call(result, WEATHER)
    # The grammar made it valid on the first attempt: no retry with feedback was needed.
    assert len(result["metadata"]["attempts"]) == 1


def test_required_with_one_tool_is_forced_too(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    result = sidecar.result("model:generate", tool_request("required", [READ_FILE],
                                                           "Show me the project's README.md file."), timeout=120)
    assert_valid_call(result, READ_FILE)


def test_a_forced_call_streams_as_tool_call_deltas(spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    request_id = sidecar.start("model:stream", tool_request({"name": "get_weather"}))
    result = sidecar.response(request_id, timeout=120)["result"]
    call = assert_valid_call(result, WEATHER)
    chunks = [n["params"] for n in sidecar.notifications("model:stream-chunk", request_id)]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    deltas = [d for c in chunks for d in c["chunk"].get("toolCalls") or ()]
    assert len(deltas) > 1  # piece by piece, as the server produced it
    assert {d["index"] for d in deltas} == {0}
    assert deltas[0]["name"] == "get_weather" and deltas[0]["id"] == call["id"]
    assert json.loads("".join(d["argumentsDelta"] for d in deltas)) == call["arguments"]
    assert chunks[-1]["chunk"]["done"] is True


def test_a_whole_tool_turn_the_model_calls_the_host_answers_the_model_replies(
        spawn: Spawn, local_model: str) -> None:
    sidecar = spawn(config(local_model))
    first = sidecar.result("model:generate", tool_request({"name": "get_weather"}), timeout=120)
    call = assert_valid_call(first, WEATHER)
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "", "toolCalls": [call]},
    ]

    def answer(result_text: str) -> dict[str, Any]:
        turns = [*messages, {"role": "tool", "toolCallId": call["id"], "content": result_text}]
        return dict(sidecar.result("model:generate", {"request": {
            "prompt": "", "messages": turns, "maxTokens": 48, "temperature": 0,
            "tools": [WEATHER], "toolChoice": "none"}}, timeout=120))

    second = answer(RESULT)
    assert second["content"].strip()
    assert not second.get("toolCalls")
    assert second["finishReason"] in ("stop", "length")
    # The tool turn reaches the model's prompt: a longer result makes a longer prompt.
    longer = answer(RESULT + " Light wind from the west, humidity forty percent, no rain expected.")
    assert longer["usage"]["promptTokens"] >= second["usage"]["promptTokens"] + 8
