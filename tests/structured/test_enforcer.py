"""The enforcer never returns a success whose value fails the schema (hypothesis), and
counts its rounds: 1 + maxRetries calls at most, feedback between them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from sidecar.errors import StructuredOutputError
from sidecar.providers.base import Completion, Usage
from sidecar.structured.enforcer import Enforcer, FormatSpec
from tests.core.test_router import make_rig, req

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": {"type": "string", "minLength": 1},
                                      "age": {"type": "integer", "minimum": 0}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
     "required": ["when"]},
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["Ada", "", "2026-11-26T10:00:00Z", "not a date", "a", "b"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "age", "when", "tags", "extra"]), inner, max_size=4),
    max_leaves=8,
)
answers = st.one_of(
    json_values.map(json.dumps),
    json_values.map(lambda v: f"Here you go:\n```json\n{json.dumps(v)}\n```"),
    json_values.map(lambda v: f"The answer is {json.dumps(v)} as asked."),
    json_values.map(lambda v: json.dumps(v)[:-1]),  # cut short
    st.text(max_size=40),
)


def enforce(schema: dict[str, Any], outputs: list[str]) -> Any:
    rig = make_rig()
    rig.scripts["ollama"].actions = [Completion(o, "m", "stop", Usage(1, 1)) for o in outputs]
    spec = FormatSpec("json", schema, "answer", max_retries=len(outputs) - 1)
    return rig, asyncio.run(Enforcer(rig.router).run(req(), rig.decision("ollama"), spec, tag="t"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SCHEMAS), st.lists(answers, min_size=1, max_size=3))
def test_no_success_is_ever_invalid(schema: dict[str, Any], outputs: list[str]) -> None:
    try:
        _rig, enforced = enforce(schema, outputs)
    except StructuredOutputError as exc:
        assert exc.extra["validationErrors"] and "lastContent" in exc.extra
        return
    assert Draft202012Validator(schema, format_checker=FormatChecker()).is_valid(enforced.parsed)


def test_rounds_are_counted_and_feedback_is_sent() -> None:
    bad, good = '{"name": "Ada", "age": -1}', '{"name": "Ada", "age": 1}'
    rig, enforced = enforce(SCHEMAS[0], [bad, good])
    assert enforced.parsed == {"name": "Ada", "age": 1}
    _first, second = rig.scripts["ollama"].requests
    assert second.messages[-2].content == bad and "/age" in second.messages[-1].content
    with pytest.raises(StructuredOutputError):
        enforce(SCHEMAS[0], [bad, bad, bad])
