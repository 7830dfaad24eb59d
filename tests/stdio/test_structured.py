"""Structured output through stdio and the fake providers: native parameters, local
validation, retries with feedback, extraction, truncation, streaming partials, XML."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.structured.grammar_profiles import lower_for_grammar
from tests.fakes import Reply
from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "email": {"type": "string", "format": "email"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
GOOD = {"name": "Ada", "age": 36}


def ask(provider: str, fmt: dict[str, Any] | None = None, **request: Any) -> dict[str, Any]:
    return {"request": {"prompt": "Extract the person: Ada, 36 years old.", **request},
            "selection": {"provider": provider, "fallback": False},
            "responseFormat": fmt or {"type": "json_schema", "schema": SCHEMA, "name": "person"}}


@pytest.mark.parametrize(("provider", "key", "mechanism"), [
    ("openai", "response_format", "openai-strict"),
    ("anthropic", "output_config", "anthropic-json-output"),
    ("ollama", "format", "ollama-format"),
    ("local-llm", "response_format", "openai-compatible-json-schema"),
])
def test_each_provider_gets_its_native_mechanism(spawn: Spawn, fakes: dict[str, Any], provider: str,
                                                 key: str, mechanism: str) -> None:
    fakes[provider].enqueue(Reply(json.dumps(GOOD)))
    sidecar = spawn(fake_config(fakes))
    response = sidecar.call("model:generate", ask(provider))
    assert_wire_valid(response, "model:generate")
    result = response["result"]
    assert result["parsed"] == GOOD
    assert result["metadata"]["structuredMechanism"] == mechanism
    body = fakes[provider].requests[0].json
    assert key in body
    if provider == "openai":
        strict = body["response_format"]["json_schema"]
        assert strict["strict"] is True and strict["name"] == "person"
        assert sorted(strict["schema"]["required"]) == ["age", "email", "name"]  # optionals made required
    if provider == "ollama":
        assert body["format"] == lower_for_grammar(SCHEMA).schema  # llama.cpp's converter behind it
    system = body.get("system") or body["messages"][0]["content"]
    assert "JSON" in system


def test_forced_tool_for_models_without_native_json(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    params = ask("anthropic")
    params["selection"]["modelId"] = "claude-3-5-haiku-20241022"
    sidecar.call("model:generate", params)
    body = fakes["anthropic"].requests[0].json
    assert body["tool_choice"] == {"type": "tool", "name": "person", "disable_parallel_tool_use": True}
    assert body["tools"][0]["input_schema"] == SCHEMA


def test_invalid_then_valid_succeeds_with_feedback_in_the_second_request(spawn: Spawn,
                                                                         fakes: dict[str, Any]) -> None:
    fakes["ollama"].enqueue(Reply('{"name": "Ada", "age": "thirty-six"}'), Reply(json.dumps(GOOD)))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask("ollama"))
    assert result["parsed"] == GOOD
    _first, second = fakes["ollama"].requests
    turns = second.json["messages"]
    assert turns[-2] == {"role": "assistant", "content": '{"name": "Ada", "age": "thirty-six"}'}
    assert "/age" in turns[-1]["content"] and "integer" in turns[-1]["content"]
    assert [a.get("structuredAttempt") for a in result["metadata"]["attempts"]] == [0, 1]


def test_never_complying_fails_after_exactly_one_plus_max_retries(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].set_default(Reply("I cannot do JSON, sorry."))
    sidecar = spawn(fake_config(fakes))
    fmt = {"type": "json_schema", "schema": SCHEMA, "maxRetries": 1}
    error = sidecar.call("model:generate", ask("ollama", fmt))["error"]
    assert (error["code"], error["data"]["type"]) == (-32007, "StructuredOutputError")
    assert error["data"]["lastContent"] == "I cannot do JSON, sorry."
    assert error["data"]["validationErrors"] and error["data"]["cause"] == "invalid"
    assert len(fakes["ollama"].requests) == 2


@pytest.mark.parametrize("text", [
    "```json\n" + json.dumps(GOOD) + "\n```",
    "Sure! Here is the person:\n" + json.dumps(GOOD) + "\nLet me know if you need more.",
])
def test_fenced_and_prose_wrapped_json_is_extracted(spawn: Spawn, fakes: dict[str, Any], text: str) -> None:
    fakes["ollama"].enqueue(Reply(text))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask("ollama"))
    assert result["parsed"] == GOOD and result["metadata"]["repaired"] is False
    assert len(fakes["ollama"].requests) == 1


def test_small_syntax_faults_are_repaired_and_flagged(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].enqueue(Reply('{"name": "Ada", "age": 36,}'))
    sidecar = spawn(fake_config(fakes))
    result = sidecar.result("model:generate", ask("ollama"))
    assert result["parsed"] == GOOD and result["metadata"]["repaired"] is True


def test_truncated_output_is_reported_as_truncation(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].set_default(Reply('{"name": "Ada", "a', finish_reason="length"))
    sidecar = spawn(fake_config(fakes))
    error = sidecar.call("model:generate", ask("ollama", {"type": "json", "maxRetries": 0}))["error"]
    assert error["data"]["type"] == "StructuredOutputError" and error["data"]["cause"] == "truncated"


def test_formats_are_really_checked(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].set_default(Reply('{"name": "Ada", "age": 36, "email": "not-an-email"}'))
    sidecar = spawn(fake_config(fakes))
    error = sidecar.call("model:generate", ask("ollama", {"type": "json_schema", "schema": SCHEMA,
                                                          "maxRetries": 0}))["error"]
    assert any(e["path"] == "/email" for e in error["data"]["validationErrors"])


def test_stream_sends_partial_values_and_validates_the_end(spawn: Spawn, fakes: dict[str, Any]) -> None:
    pieces = ['{"name": ', '"Ada", ', '"age": 36', "}"]
    fakes["ollama"].enqueue(Reply("".join(pieces), chunks=pieces))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask("ollama"))
    response = sidecar.response(request_id)
    assert response["result"]["parsed"] == GOOD
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    partials = [c["partial"] for c in chunks if "partial" in c]
    assert partials and partials[-1] == GOOD
    assert any(p != GOOD for p in partials)  # partial objects along the way


def test_invalid_schema_and_unknown_template_are_invalid_params(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    bad = sidecar.call("model:generate", ask("ollama", {"type": "json_schema", "schema": {"type": "nope"}}))
    assert bad["error"]["data"]["type"] == "InvalidParams"
    assert bad["error"]["data"]["errors"][0]["path"].startswith("/responseFormat/schema")
    missing = sidecar.call("model:generate", ask("ollama", {"type": "template", "template": "ghost"}))
    assert missing["error"]["data"]["errors"][0]["path"] == "/responseFormat/template"
    assert fakes["ollama"].requests == []


def test_a_named_template_from_config(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].enqueue(Reply(json.dumps(GOOD)))
    config = fake_config(fakes, formatTemplates={"person": {"schema": SCHEMA, "instructions": "Use ISO units."}})
    sidecar = spawn(config)
    result = sidecar.result("model:generate", ask("ollama", {"type": "template", "template": "person"}))
    assert result["parsed"] == GOOD
    body = fakes["ollama"].requests[0].json
    assert "Use ISO units." in body["messages"][0]["content"]
    assert body["format"] == lower_for_grammar(SCHEMA).schema


XSD = """<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="person"><xs:complexType><xs:sequence>
    <xs:element name="name" type="xs:string"/><xs:element name="age" type="xs:integer"/>
  </xs:sequence></xs:complexType></xs:element>
</xs:schema>"""


def test_xml_is_checked_for_form_root_and_xsd(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fakes["ollama"].enqueue(Reply("Here: <person><name>Ada</name><age>old</age></person>"),
                            Reply("<person><name>Ada</name><age>36</age></person>"))
    sidecar = spawn(fake_config(fakes))
    fmt = {"type": "xml", "rootElement": "person", "xsd": XSD}
    result = sidecar.result("model:generate", ask("ollama", fmt))
    assert "<age>36</age>" in result["content"] and len(fakes["ollama"].requests) == 2
    fakes["ollama"].set_default(Reply("<animal/>"))
    error = sidecar.call("model:generate", ask("ollama", {"type": "xml", "rootElement": "person",
                                                          "maxRetries": 0}))["error"]
    assert error["data"]["type"] == "StructuredOutputError"


def test_a_long_json_stream_previews_as_it_grows_not_on_every_chunk(spawn: Spawn, fakes: dict[str, Any]) -> None:
    # Regression: every chunk re-parsed all the text so far (quadratic, on the event loop)
    # and carried the whole value, so a long answer cost minutes and gigabytes of stdout.
    pieces = ["["] + ["12345678,"] * 3000 + ["0]"]
    fakes["ollama"].enqueue(Reply("".join(pieces), chunks=pieces))
    sidecar = spawn(fake_config(fakes))
    request_id = sidecar.start("model:stream", ask("ollama", {"type": "json_schema", "schema": {"type": "array"}}))
    response = sidecar.response(request_id, timeout=60)
    assert len(response["result"]["parsed"]) == 3001
    chunks = [m["params"]["chunk"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    previews = [c for c in chunks if "partial" in c]
    # Every chunk of the first 4 KiB (~455 here), then one per quarter of growth.
    assert 400 < len(previews) < 520, len(previews)
    assert len(previews[-1]["partial"]) > 2000  # previews keep coming as the text grows
