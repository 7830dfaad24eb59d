"""Property: whenever extraction + validation report success, the value really validates.

Instances come from ``hypothesis_jsonschema.from_schema`` for a few fixed schemas, are
serialised, wrapped (prose, fences) and mutated (cut, characters dropped or inserted),
then run through ``extract_json`` + ``validation_errors`` (and the strict-mode null
dropping). A success is re-checked with an independent, uncached validator.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]

from sidecar.structured.extract import ExtractionFailed, extract_json
from sidecar.structured.lower import drop_added_nulls
from sidecar.structured.validate import compile_schema, validation_errors

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 10**6},
            "email": {"type": "string", "format": "email"},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        },
        "required": ["id", "when"],
        "additionalProperties": False,
    },
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"k": {"enum": ["a", "b"]}, "v": {"type": ["number", "null"]}},
            "required": ["k"],
        },
        "minItems": 1,
        "maxItems": 4,
    },
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "child": {"$ref": "#/$defs/node"},
        },
        "required": ["name"],
        "$defs": {"node": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}},
    },
]


def instances(schema: dict[str, Any], root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Valid instances: objects and arrays composed here, leaves from ``from_schema``.

    (hypothesis-jsonschema 0.23.1 cannot generate objects with hypothesis >= 6.1xx:
    ``'many' object has no attribute 'more'``.)
    """
    root = root or schema
    if "$ref" in schema:
        return instances(root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], root)
    if schema.get("type") == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: instances(v, root) for k, v in props.items() if k in required},
            optional={k: instances(v, root) for k, v in props.items() if k not in required},
        )
    if schema.get("type") == "array":
        return st.lists(
            instances(schema["items"], root),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 4),
        )
    return from_schema(schema)


WRAPPERS = ["{}", "Here is the JSON:\n{}\nThanks!", "```json\n{}\n```", "Sure. ```\n{}\n``` done", "  {}  "]


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], object, str, bool]:
    schema = draw(st.sampled_from(SCHEMAS))
    instance = draw(instances(schema))
    raw = json.dumps(instance, indent=draw(st.sampled_from([None, 2])))
    text = draw(st.sampled_from(WRAPPERS)).replace("{}", raw)
    mutated = draw(st.booleans())
    if mutated:
        op = draw(st.sampled_from(["cut", "drop", "insert"]))
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        if op == "cut":
            text = text[:pos]
        elif op == "drop":
            text = text[:pos] + text[pos + 1 :]
        else:
            text = text[:pos] + draw(st.sampled_from(list(",:'\"{}[]x1 "))) + text[pos:]
    return schema, instance, text, mutated


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_success_implies_valid(case: tuple[dict[str, Any], object, str, bool]) -> None:
    schema, instance, text, mutated = case
    independent = Draft202012Validator(schema, format_checker=FormatChecker())
    try:
        result = extract_json(text)
    except ExtractionFailed as exc:
        assert mutated, f"unmutated text failed: {exc.reason}"
        return
    if not mutated:
        assert result.value == instance and not result.repaired
    for value in (result.value, drop_added_nulls(result.value, schema)):
        if validation_errors(compile_schema(schema), value) == []:
            assert independent.is_valid(value), "a value reported valid is not valid"
        else:
            assert not independent.is_valid(value)


@settings(max_examples=100, deadline=None)
@given(instances(SCHEMAS[0]), st.data())
def test_cut_inside_a_string_is_truncation(instance: Any, data: st.DataObject) -> None:
    raw = json.dumps(instance)
    quote = raw.index('"when": "') + len('"when": "') + 2  # inside the date-time value
    cut = data.draw(st.integers(quote, quote + 10))
    try:
        extract_json("Result:\n" + raw[:cut])
    except ExtractionFailed as exc:
        assert exc.truncated
    else:
        raise AssertionError("a cut-off answer was reported as a success")
