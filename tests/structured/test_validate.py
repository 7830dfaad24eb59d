"""compile_schema / validation_errors: formats checked, errors readable, bad schemas typed."""

from __future__ import annotations

import pytest

from sidecar.errors import InvalidParams
from sidecar.structured.validate import compile_schema, missing_format_checkers, validation_errors

PERSON = {
    "type": "object",
    "properties": {
        "age": {"type": "integer"},
        "born": {"type": "string", "format": "date-time"},
        "mail": {"type": "string", "format": "email"},
        "site": {"type": "string", "format": "uri"},
        "ip": {"type": "string", "format": "ipv4"},
        "id": {"type": "string", "format": "uuid"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["age"],
}


def test_valid_instance_has_no_errors() -> None:
    v = compile_schema(PERSON)
    ok = {"age": 3, "born": "2024-01-02T03:04:05Z", "mail": "a@b.c", "site": "https://x.org/a",
          "ip": "10.0.0.1", "id": "12345678-1234-5678-1234-567812345678"}  # fmt: skip
    assert validation_errors(v, ok) == []


@pytest.mark.parametrize(
    ("field", "bad"),
    [("born", "yesterday"), ("born", "2024-13-40T00:00:00Z"), ("mail", "not-an-email"),
     ("site", "not a uri"), ("ip", "999.1.1.1"), ("id", "xyz")],
)  # fmt: skip
def test_formats_are_really_checked(field: str, bad: str) -> None:
    errors = validation_errors(compile_schema(PERSON), {"age": 1, field: bad})
    assert [e["path"] for e in errors] == [f"/{field}"]


def test_no_format_checker_missing() -> None:
    assert missing_format_checkers() == []


def test_messages_paths_and_order() -> None:
    errors = validation_errors(compile_schema(PERSON), {"tags": ["a", 5]})
    assert errors == [
        {"path": "", "message": "'age' is a required property"},
        {"path": "/tags/1", "message": "5 is not of type 'string'"},
    ]
    assert validation_errors(compile_schema(PERSON), {"age": "abc"}) == [
        {"path": "/age", "message": "'abc' is not of type 'integer'"}
    ]


def test_errors_capped_at_20_and_pointer_escaped() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    assert len(validation_errors(compile_schema(schema), ["x"] * 50)) == 20
    odd = {"type": "object", "properties": {"a/b~c": {"type": "integer"}}}
    assert validation_errors(compile_schema(odd), {"a/b~c": "x"})[0]["path"] == "/a~1b~0c"


def test_anyof_message_names_closest_branch() -> None:
    schema = {"anyOf": [{"type": "object", "required": ["k"]}, {"type": "integer"}]}
    (error,) = validation_errors(compile_schema(schema), {})
    assert "'k' is a required property" in error["message"]


def test_cache_returns_same_validator_for_equal_schemas() -> None:
    a = compile_schema({"type": "object", "required": ["x"]})
    b = compile_schema({"required": ["x"], "type": "object"})
    assert a is b


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"type": "nope"}, "/responseFormat/schema/type"),
        ({"properties": {"a": {"pattern": "("}}}, "/responseFormat/schema/properties/a/pattern"),
        ({"$ref": "https://example.com/s.json"}, "/responseFormat/schema/$ref"),
        ({"items": {"$ref": "#/$defs/missing"}}, "/responseFormat/schema/items/$ref"),
        ({"minimum": "x"}, "/responseFormat/schema/minimum"),
    ],
)
def test_invalid_schema_is_invalid_params(schema: dict[str, object], path: str) -> None:
    with pytest.raises(InvalidParams) as info:
        compile_schema(schema)
    assert info.value.message.startswith("invalid JSON Schema: ")
    assert info.value.errors[0]["path"] == path


def test_non_json_schema_is_invalid_params() -> None:
    with pytest.raises(InvalidParams):
        compile_schema({"type": {1, 2}})
