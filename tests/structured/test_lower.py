"""Strict-mode lowering, null dropping, native request fields, instructions and feedback."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.structured.grammar_profiles import lower_for_grammar
from sidecar.structured.lower import (
    drop_added_nulls,
    feedback,
    instructions,
    native_params,
    openai_strict_schema,
)
from sidecar.structured.validate import compile_schema, validation_errors

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer"},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "note": {"type": ["string", "null"]},
        "addr": {"$ref": "#/$defs/Addr"},
    },
    "required": ["name"],
    "$defs": {"Addr": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def test_optional_becomes_required_and_nullable() -> None:
    strict = openai_strict_schema(SCHEMA)
    assert strict is not None
    assert strict["required"] == ["name", "age", "kind", "note", "addr"]
    assert strict["additionalProperties"] is False
    props = strict["properties"]
    assert props["name"] == {"type": "string"}  # minLength dropped from the wire, enforced locally
    assert props["age"] == {"type": ["integer", "null"]}
    assert props["kind"] == {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]}
    assert props["note"] == {"type": ["string", "null"]}
    assert props["addr"] == {"anyOf": [{"$ref": "#/$defs/Addr"}, {"type": "null"}]}
    addr = strict["$defs"]["Addr"]
    assert addr["additionalProperties"] is False and addr["required"] == ["city"]
    assert addr["properties"]["city"] == {"type": ["string", "null"]}
    assert "additionalProperties" not in SCHEMA  # the input is not mutated


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "oneOf": [{"required": ["a"]}]},
        {"type": "object", "properties": {"a": {"allOf": [{"type": "string"}]}}},
        {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
        {"type": "object", "if": {"required": ["a"]}, "then": {}},
        {"type": "object", "additionalProperties": True},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "object", "properties": {"u": {"type": "string", "format": "uri"}}},
        {"type": "object", "properties": {"free": {}}},
        {"anyOf": [{"type": "object"}]},
    ],
)
def test_not_strict_compatible_returns_none(schema: dict[str, Any]) -> None:
    assert openai_strict_schema(schema) is None


def test_drop_added_nulls_then_original_schema_validates() -> None:
    answer = {"name": "Ada", "age": None, "kind": None, "note": None, "addr": {"city": None}}
    cleaned = drop_added_nulls(answer, SCHEMA)
    assert cleaned == {"name": "Ada", "note": None, "addr": {}}  # note accepted null originally
    assert validation_errors(compile_schema(SCHEMA), cleaned) == []
    assert drop_added_nulls({"name": None}, SCHEMA) == {"name": None}  # required: left for validation


def test_native_params_openai() -> None:
    body, used = native_params("openai", SCHEMA, name="my schema!", model="gpt-4o", supports_native=True)
    assert used == "openai-strict"
    spec = body["response_format"]["json_schema"]
    assert spec["name"] == "my_schema_" and spec["strict"] is True
    assert spec["schema"] == openai_strict_schema(SCHEMA)
    fallback = ({"response_format": {"type": "json_object"}}, "openai-json-object")
    assert native_params("openai", {"type": "array"}, name="x", model="m", supports_native=True) == fallback
    assert native_params("openai", None, name="x", model="m", supports_native=True) == fallback


def test_native_params_anthropic_ollama_custom() -> None:
    body, used = native_params("anthropic", SCHEMA, name="r", model="claude", supports_native=True)
    assert (body, used) == ({"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
                            "anthropic-json-output")  # fmt: skip
    body, used = native_params("anthropic", SCHEMA, name="r" * 80, model="claude", supports_native=False)
    assert used == "anthropic-forced-tool"
    assert body["tools"][0] == {"name": "r" * 64, "description": "Return the result.", "input_schema": SCHEMA}
    assert body["tool_choice"] == {"type": "tool", "name": "r" * 64, "disable_parallel_tool_use": True}
    assert native_params("anthropic", None, name="r", model="c", supports_native=True) == ({}, "instructions")
    lowered = lower_for_grammar(SCHEMA).schema  # llama.cpp's converter behind both
    assert native_params("ollama", SCHEMA, name="r", model="m", supports_native=True) == (
        {"format": lowered}, "ollama-format")  # fmt: skip
    assert native_params("ollama", None, name="r", model="m", supports_native=True) == (
        {"format": "json"},
        "ollama-format",
    )
    body, used = native_params("custom", SCHEMA, name="r", model="m", supports_native=True)
    assert used == "openai-compatible-json-schema"
    assert body == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": lowered}}
    }
    assert native_params("custom", None, name="r", model="m", supports_native=True)[0] == {
        "response_format": {"type": "json_object"}}  # fmt: skip


def test_instructions_and_feedback() -> None:
    text = instructions({"type": "object"}, "json")
    assert "only a JSON value" in text and '{"type":"object"}' in text
    xml = instructions(None, "xml", root_element="person", xsd="<xs:schema/>")
    assert "well-formed XML" in xml and "<person>" in xml and "<xs:schema/>" in xml
    errors = [{"path": "/age", "message": "'abc' is not of type 'integer'"}, {"path": "", "message": "m"}]
    msg = feedback('{"age": "abc"}', errors, False)
    assert msg.startswith("Your previous answer was not valid:")
    assert "- /age: 'abc' is not of type 'integer'" in msg and "- (root): m" in msg
    assert msg.rstrip().endswith("Fix these errors and answer again with only the corrected JSON.")
    huge = feedback("x" * 100_000, errors * 50, False)
    assert len(huge.encode()) < 4096 and huge.endswith("only the corrected JSON.")
    assert "cut off" in feedback('{"a": ', [], True)
