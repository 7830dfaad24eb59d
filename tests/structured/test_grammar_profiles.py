"""Lowering for llama.cpp's grammar converter: what is dropped is reported, what is sent
is safe. "Safe" is checked twice: structurally (every pattern in the converter-safe form,
every quoted string quotable, bounds small, no $ref), and, when llama-cpp-python is
installed, by llama.cpp's own grammar parser on what the installed converter makes of it
(``grammar_oracle``), which is where the server died."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import FormatChecker  # type: ignore[import-untyped]

from sidecar.structured import safe_regex
from sidecar.structured.grammar_profiles import (
    FORMAT_PATTERNS,
    MAX_BOUND,
    lower_for_grammar,
    profile_for,
    safe_text,
)
from sidecar.structured.lower import native_params, openai_strict_schema
from tests.structured import grammar_oracle

needs_llama = pytest.mark.skipif(not grammar_oracle.available(), reason="llama-cpp-python not installed")

#: Patterns of the shapes hosts send; each was checked against the real converter.
COMMON_PATTERNS = [
    r"^[0-9]+\.[0-9]+$", r"^\d{3}-\d{4}$", r"^[A-Z]{2}\d{2}$", r"^v\d+(\.\d+){2}$", r"^(red|green|blue)$",
    r"^[a-z0-9_-]{3,16}$", r"^\w+@\w+\.[a-z]{2,}$", r"^[^@\s]+@[^@\s]+$", r"^\+?[0-9 ]{7,15}$",
    r"^https?://[a-z.]+/?$", r"^#[0-9a-fA-F]{6}$", r"^\$\d+$", r"^a\/b$", r"[0-9]+", r"^(?:ab)+$",
]  # fmt: skip
#: Outside the safe subset: the pattern is dropped (and reported), never sent.
REFUSED_PATTERNS = [r"^(?P<n>a)$", r"^(?i)a$", r"^\x0A$", r"^a\\b$", '^a"b$', r"^a{5,2}$", r"^\u00e9$", r"^a\tb$",
                    r"^(a)\1$", r"^a{100}$", "^é$"]  # fmt: skip


def _prop(**schema: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"v": schema}, "required": ["v"]}


def _walk(node: object, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(pointer, node) of every schema object in a lowered schema."""
    if not isinstance(node, dict):
        return []
    found = [(path, node)]
    for key, sub in (node.get("properties") or {}).items():
        found += _walk(sub, f"{path}/properties/{key}")
    for key in ("items", "additionalProperties"):
        found += _walk(node.get(key), f"{path}/{key}")
    for i, sub in enumerate(node.get("anyOf") or []):
        found += _walk(sub, f"{path}/anyOf/{i}")
    return found


_CANONICAL = re.compile(r"\^(?:[A-Za-z0-9()|*+?{},]|\[(?:\\x[0-9A-F]{2}(?:-\\x[0-9A-F]{2})?)+\])+\$")


def assert_safe(lowered: dict[str, Any]) -> None:
    json.dumps(lowered)
    for path, node in _walk(lowered):
        assert "$ref" not in node and "oneOf" not in node and "allOf" not in node, path
        if "pattern" in node:
            assert _CANONICAL.fullmatch(node["pattern"]), (path, node["pattern"])
            assert safe_regex.to_grammar_pattern(node["pattern"]) == node["pattern"]  # a fixed point
        assert all(safe_text(k) for k in node.get("properties", {})), path
        for key in ("minLength", "maxLength", "minItems", "maxItems"):
            assert key not in node or 0 <= node[key] <= MAX_BOUND, (path, key)
        assert node != {}, path  # the converter reads {} as "an object"


def test_profiles_in_one_place() -> None:
    assert profile_for("custom") == profile_for("ollama") == "llama.cpp"
    assert profile_for("openai") == "openai-strict" and profile_for("anthropic") == "native"


@pytest.mark.parametrize("pattern", COMMON_PATTERNS)
def test_common_patterns_are_rewritten_not_dropped(pattern: str) -> None:
    lowered = lower_for_grammar(_prop(type="string", pattern=pattern))
    assert lowered.dropped == ()
    sent = lowered.schema["properties"]["v"]["pattern"]
    assert_safe(lowered.schema)
    assert "\\." not in sent and "\\d" not in sent and "\\w" not in sent


@pytest.mark.parametrize("pattern", REFUSED_PATTERNS)
def test_patterns_outside_the_subset_are_dropped_and_reported(pattern: str) -> None:
    lowered = lower_for_grammar(_prop(type="string", pattern=pattern, minLength=1))
    assert lowered.schema["properties"]["v"] == {"type": "string", "minLength": 1}
    assert [(d.path, d.keyword) for d in lowered.dropped] == [("/properties/v", "pattern")]


def test_assertions_are_left_out_and_reported() -> None:
    lowered = lower_for_grammar(_prop(type="string", pattern=r"^(?=.*[0-9])[a-z0-9]{6,}\b$"))
    assert lowered.schema["properties"]["v"]["pattern"] == r"^[\x30-\x39\x61-\x7A]{6,}$"
    (dropped,) = lowered.dropped
    assert (dropped.path, dropped.keyword) == ("/properties/v", "pattern")
    assert "look-around" in dropped.reason and "word boundary" in dropped.reason


@given(data=st.data(), fmt=st.sampled_from(sorted(FORMAT_PATTERNS)))
@settings(max_examples=100, deadline=None)
def test_formats_sent_as_patterns_only_match_valid_instances(data: st.DataObject, fmt: str) -> None:
    sent = lower_for_grammar(_prop(type="string", format=fmt))
    assert sent.dropped == ()
    example = data.draw(st.from_regex(sent.schema["properties"]["v"]["pattern"], fullmatch=True))
    assert FormatChecker().conforms(example, fmt), (fmt, example)


def test_every_dropped_keyword_is_reported_with_its_node() -> None:
    schema = {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 1000},
        "required": ["id", "tags", "who", "ghost"],
        "minProperties": 1,
        "properties": {
            "id": {"type": "integer", "minimum": 1, "multipleOf": 2},
            "tags": {"type": "array", "items": {"type": "string", "format": "email"}, "uniqueItems": True,
                     "maxItems": 500},
            "who": {"oneOf": [{"const": 'say "hi"'}, {"enum": ["a", "b"]}]},
            "when": {"type": "string", "format": "date", "not": {"const": "2020-01-01"}},
            "text": {"type": "string", "minLength": 5, "maxLength": 2},
            "node": {"$ref": "#/$defs/Node"},
        },
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
    }  # fmt: skip
    lowered = lower_for_grammar(schema)
    assert {(d.path, d.keyword) for d in lowered.dropped} == {
        ("", "minProperties"), ("/additionalProperties", "maxLength"),
        ("/properties/id", "minimum"), ("/properties/id", "multipleOf"),
        ("/properties/tags", "uniqueItems"), ("/properties/tags", "maxItems"),
        ("/properties/who", "oneOf"), ("/properties/who/oneOf/0", "const"),
        ("/properties/when", "not"),
        ("/properties/text", "minLength"), ("/properties/text", "maxLength"),
        ("/properties/node/properties/next", "$ref"),
    }  # fmt: skip
    sent = lowered.schema
    assert sent["required"] == ["id", "tags", "who"]  # "ghost" allowed through additionalProperties
    assert sent["additionalProperties"] == {"type": "string"}
    ghost = lower_for_grammar({"type": "object", "additionalProperties": False, "required": ["a"],
                               "properties": {"a": {"type": "string"}}, "minProperties": 2})
    assert ghost.schema["additionalProperties"] is False  # as the caller said (unsatisfiable anyway)
    assert [d.keyword for d in ghost.dropped] == ["minProperties"]
    open_object = lower_for_grammar({"type": "object", "required": ["a", "b"], "properties": {"a": {}}})
    assert open_object.schema["additionalProperties"] is True and open_object.dropped == ()
    assert sent["properties"]["when"] == {"type": "string", "format": "date"}
    assert sent["properties"]["node"]["properties"]["next"]["type"][0] == "string"  # any value
    assert_safe(sent)


@pytest.mark.parametrize("schema", [
    _prop(enum=['say "hi"', "b"]), _prop(enum=["a\bb"]), _prop(const='x"y'), _prop(enum=[]), _prop(anyOf=[]),
    {"type": "object", "properties": {'a"b': {"type": "string"}}},
    _prop(type="string", maxLength=5000), _prop(type="array", items={"type": "integer"}, maxItems=5000),
    _prop(type="string", pattern=r"^[0-9]+\.[0-9]+$"), _prop(type="string", pattern=r"^[\d]+$"),
    _prop(type="string", pattern=r"^\w+@\w+$"), _prop(type="string", pattern=r"^a\/b$"),
    _prop(type="string", pattern=r"^\$\d$"),
])  # fmt: skip
@needs_llama
def test_schemas_that_break_the_converter_are_safe_once_lowered(schema: dict[str, Any]) -> None:
    assert not grammar_oracle.accepts(schema)  # as sent before: the server's parser refuses it
    lowered = lower_for_grammar(schema).schema
    assert_safe(lowered)
    assert grammar_oracle.accepts(lowered)


# --- properties -------------------------------------------------------------------------
_PIECES = [
    "a", "Z", "0", "-", "_", " ", "@", ".", "/", '"', "\\\\", "é", "\\.", "\\d", "\\w", "\\s", "\\D", "\\S",
    "\\-", "\\/", "\\$", "\\^", "\\b", "\\x41", "\\t", "[a-z]", "[^a]", "[\\d.]", "[.-]", "[-_a-f]", "(", ")",
    "(?:", "(?=", "|", "*", "+", "?", "{2}", "{1,3}", "{0,}", "{,4}", "{70}", "{2,1}", "*?", "^", "$",
]  # fmt: skip


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


regexes = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=10).map("".join).filter(_compiles)


@given(pattern=regexes)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_regexes_lower_to_safe_and_narrower_patterns(pattern: str) -> None:
    lowered = lower_for_grammar(_prop(type="string", pattern=pattern))
    assert_safe(lowered.schema)
    sent = lowered.schema["properties"]["v"].get("pattern")
    if sent is None:
        assert [d.keyword for d in lowered.dropped] == ["pattern"]
        return
    if grammar_oracle.available():
        assert grammar_oracle.accepts(lowered.schema), (pattern, sent)


@given(pattern=regexes, data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_what_the_rewritten_pattern_matches_the_original_matches(pattern: str, data: st.DataObject) -> None:
    try:
        sent, loosened = safe_regex.lower_pattern(pattern)
    except safe_regex.Unsupported:
        return
    if loosened:  # assertions left out: the grammar may accept more, by design
        return
    example = data.draw(st.from_regex(sent, fullmatch=True))
    assert re.search(pattern, example), (pattern, sent, example)


_names = st.sampled_from(["a", "b", "id", "a b", "a-b", "root", "space", "string", "char", "dot", "1", "-",
                         'q"', "x\\y", "", "tab\t", "é", "😀"])  # fmt: skip
_leaves = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])},
                          optional={"pattern": regexes, "minLength": st.integers(0, 3000),
                                    "maxLength": st.integers(0, 3000), "format": st.sampled_from(
                                        ["date", "email", "uri", "uuid", "date-time"])}),
    st.fixed_dictionaries({"enum": st.lists(st.one_of(_names, st.integers(), st.none()), max_size=4)}),
    st.fixed_dictionaries({"const": _names}),
    st.just({}), st.just(True),
)  # fmt: skip
schemas = st.recursive(_leaves, lambda inner: st.one_of(
    st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(_names, inner, max_size=4)},
                          optional={"required": st.lists(_names, max_size=3),
                                    "additionalProperties": st.one_of(st.booleans(), inner)}),
    st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                          optional={"minItems": st.integers(0, 3000), "maxItems": st.integers(0, 3000)}),
    st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
    st.fixed_dictionaries({"oneOf": st.lists(inner, min_size=1, max_size=3)}),
), max_leaves=12)  # fmt: skip


@given(schema=schemas)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_schemas_lower_to_grammars_llama_cpp_parses(schema: Any) -> None:
    root = schema if isinstance(schema, dict) else {}
    lowered = lower_for_grammar(root)
    assert_safe(lowered.schema)
    if grammar_oracle.available():
        assert grammar_oracle.accepts(lowered.schema), (root, lowered.schema)


def test_native_params_lower_for_ollama_and_compatible_servers_only() -> None:
    schema = _prop(type="string", pattern=r"^[0-9]+\.[0-9]+$")
    dropped: list[Any] = []
    for kind, key in (("custom", "response_format"), ("ollama", "format")):
        body, _ = native_params(kind, schema, name="r", model="m", supports_native=True, dropped=dropped)
        sent = body[key]["json_schema"]["schema"] if kind == "custom" else body[key]
        assert sent["properties"]["v"]["pattern"] == r"^[\x30-\x39]+[\x2E][\x30-\x39]+$"
    assert dropped == []
    lookahead = _prop(type="string", pattern=r"^(?P<n>a)$")
    native_params("ollama", lookahead, name="r", model="m", supports_native=True, dropped=dropped)
    assert [d.keyword for d in dropped] == ["pattern"]
    body, _ = native_params("anthropic", lookahead, name="r", model="m", supports_native=True)
    assert body["output_config"]["format"]["schema"] == lookahead  # Anthropic: as given


def test_openai_strict_keeps_portable_patterns_only() -> None:
    kept = openai_strict_schema({**_prop(type="string", pattern=r"^\d+\.\d+$"), "additionalProperties": False})
    assert kept is not None and kept["properties"]["v"]["pattern"] == r"^\d+\.\d+$"
    dropped = openai_strict_schema({**_prop(type="string", pattern=r"^(?=a)a\1$"), "additionalProperties": False})
    assert dropped is not None and dropped["properties"]["v"] == {"type": "string"}
