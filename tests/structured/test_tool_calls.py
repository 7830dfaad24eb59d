"""Tool calls judged against the offered tools: never an invalid call in a success."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.providers.base import ToolCall
from sidecar.structured.tools import check_calls, tool_feedback

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "minLength": 1},
                                             "unit": {"enum": ["C", "F"]}},
           "required": ["city"], "additionalProperties": False}
SCHEMAS = {"get_weather": WEATHER, "noop": {"type": "object"}}


def test_a_valid_call_is_parsed_and_keeps_its_id() -> None:
    check = check_calls([ToolCall("call_1", "get_weather", '{"city": "Paris"}')], SCHEMAS)
    assert check.errors == []
    assert [(c.id, c.name, c.arguments) for c in check.calls] == [("call_1", "get_weather", {"city": "Paris"})]


def test_unknown_tool_bad_arguments_and_non_json_are_errors_with_paths() -> None:
    check = check_calls([ToolCall("a", "get_wether", "{}"), ToolCall("b", "get_weather", '{"city": ""}'),
                         ToolCall("c", "get_weather", "city=Paris"), ToolCall("d", "get_weather", "[1]")], SCHEMAS)
    assert check.calls == []
    paths = [e["path"] for e in check.errors]
    assert paths == ["/toolCalls/0/name", "/toolCalls/1/arguments/city", "/toolCalls/2/arguments",
                     "/toolCalls/3/arguments"]
    assert "get_weather" in check.errors[0]["message"]  # the offered names help the model


def test_small_syntax_faults_are_repaired_like_structured_output() -> None:
    check = check_calls([ToolCall("a", "get_weather", '{"city": "Oslo",}')], SCHEMAS)
    assert check.errors == [] and check.repaired and check.calls[0].arguments == {"city": "Oslo"}


def test_empty_arguments_are_the_empty_object_and_ids_are_made_unique() -> None:
    check = check_calls([ToolCall("", "noop", ""), ToolCall("x", "noop", "{}"), ToolCall("x", "noop", " ")], SCHEMAS)
    ids = [c.id for c in check.calls]
    assert check.errors == [] and len(set(ids)) == 3 and all(ids) and ids[1] == "x"
    assert all(c.arguments == {} for c in check.calls)


def test_at_most_one_call_when_parallel_calls_are_off() -> None:
    calls = [ToolCall("a", "noop", "{}"), ToolCall("b", "noop", "{}")]
    assert check_calls(calls, SCHEMAS, at_most_one=True).errors[0]["path"] == "/toolCalls"
    assert check_calls(calls, SCHEMAS).errors == []


def test_strict_mode_nulls_for_optional_fields_are_dropped_before_validation() -> None:
    call = ToolCall("a", "get_weather", '{"city": "Rome", "unit": null}')
    assert check_calls([call], SCHEMAS).errors  # null is not C or F
    check = check_calls([call], SCHEMAS, nullable_optionals=True)
    assert check.errors == [] and check.calls[0].arguments == {"city": "Rome"}


def test_feedback_quotes_the_call_and_the_errors() -> None:
    call = ToolCall("a", "get_weather", '{"city": 3}')
    text = tool_feedback([call], check_calls([call], SCHEMAS).errors)
    assert "get_weather" in text and '{"city": 3}' in text and "/toolCalls/0/arguments/city" in text
    assert "must call" in tool_feedback([], [], missing=True)


def test_feedback_for_a_call_under_tool_choice_none_asks_for_text() -> None:
    call = ToolCall("a", "get_weather", '{"city": "Rome"}')
    errors = [{"path": "/toolCalls", "message": "no tool may be called now (toolChoice none)"}]
    text = tool_feedback([call], errors, forbidden=True)
    assert "get_weather" in text and "toolChoice none" in text and "answer in text" in text
    assert "Call the tool again" not in text


#: Property schemas, each with a strategy of values valid for it (hypothesis-jsonschema's
#: object strategy fails with this hypothesis release).
_VALUES: list[tuple[dict[str, Any], Any]] = [
    ({"type": "string"}, st.text(max_size=5)),
    ({"type": "integer", "minimum": 0}, st.integers(0, 99)),
    ({"type": "boolean"}, st.booleans()),
    ({"type": "number", "maximum": 10}, st.floats(-5, 10, allow_nan=False)),
    ({"enum": ["a", "b"]}, st.sampled_from(["a", "b"])),
    ({"type": "string", "maxLength": 3}, st.text(max_size=3)),
    ({"type": "array", "items": {"type": "integer"}}, st.lists(st.integers(-3, 3), max_size=3)),
]
_SCALARS = st.sampled_from([schema for schema, _ in _VALUES])


def _valid(schema: dict[str, Any]) -> Any:
    props = schema["properties"]
    pick = {json.dumps(s, sort_keys=True): v for s, v in _VALUES}
    return st.fixed_dictionaries(
        {k: pick[json.dumps(props[k], sort_keys=True)] for k in schema["required"]},
        optional={k: pick[json.dumps(v, sort_keys=True)] for k, v in props.items() if k not in schema["required"]})
_SCHEMAS = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), _SCALARS, min_size=1, max_size=4).flatmap(
    lambda props: st.builds(lambda req, extra: {"type": "object", "properties": props, "required": req,
                                               "additionalProperties": extra},
                            st.lists(st.sampled_from(sorted(props)), unique=True), st.booleans()))
_JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-5, 20) | st.text(max_size=5),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                     max_size=3), max_leaves=8)


@st.composite
def _answer(draw: Any, schema: dict[str, Any]) -> str:
    """What a model might send: a valid instance, a random JSON value, a mangled text."""
    kind = draw(st.sampled_from(["valid", "random", "mangled"]))
    if kind == "valid":
        return json.dumps(draw(_valid(schema)))
    text = json.dumps(draw(_JSONISH))
    if kind == "mangled":
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", ",", "}", "'", "\n```"]))
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), schema=_SCHEMAS, name=st.sampled_from(["tool", "other"]))
def test_no_success_ever_holds_an_invalid_call(data: Any, schema: dict[str, Any], name: str) -> None:
    arguments = data.draw(_answer(schema))
    check = check_calls([ToolCall("id", name, arguments)], {"tool": schema})
    if not check.errors:
        (call,) = check.calls
        assert call.name == "tool"
        jsonschema.Draft202012Validator(schema).validate(call.arguments)  # an independent check
    else:
        assert check.calls == []


def test_arguments_nested_too_deeply_are_an_error_not_a_crash() -> None:
    deep = "[" * 300 + "]" * 300
    check = check_calls([ToolCall("a", "noop", '{"x": ' + deep + "}")], SCHEMAS)
    assert check.calls == [] and "nested deeper than 64" in check.errors[0]["message"]
    ok = "[" * 60 + "]" * 60
    assert check_calls([ToolCall("a", "noop", '{"x": ' + ok + "}")], SCHEMAS).errors == []
