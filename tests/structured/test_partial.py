"""parse_partial: streaming previews, never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.structured.partial import parse_partial


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", None),
        ("Sure, here", None),
        ('{"a": "hel', {"a": "hel"}),
        ('```json\n[1, 2, {"b": "x', [1, 2, {"b": "x"}]),
        ('{"a": [1, 2]}\n```', {"a": [1, 2]}),
    ],
)
def test_partial_values(text: str, value: object) -> None:
    assert parse_partial(text) == value


def test_prefixes_of_a_document_never_raise() -> None:
    doc = '{"items": [{"id": 1, "name": "a\\"b"}, {"id": 2}], "ok": true, "n": -1.5e3}'
    for i in range(len(doc) + 1):
        out = parse_partial(doc[:i])
        assert out is None or isinstance(out, dict | list)
    assert parse_partial(doc) == {"items": [{"id": 1, "name": 'a"b'}, {"id": 2}], "ok": True, "n": -1500.0}


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_never_raises(text: str) -> None:
    parse_partial(text)
