"""extract_json: whole, fenced, prose-wrapped, repaired (flagged) and truncated (reported)."""

from __future__ import annotations

import pytest

from sidecar.structured.extract import ExtractionFailed, extract_json


@pytest.mark.parametrize(
    ("text", "value", "source"),
    [
        ('{"a": 1}', {"a": 1}, "whole"),
        ("\ufeff  [1, 2]\n", [1, 2], "whole"),
        ('<think>maybe {x</think>\n{"q": 1}', {"q": 1}, "whole"),
        ('Here you go:\n```json\n{"a": [1, 2]}\n```\nAnything else?', {"a": [1, 2]}, "fence"),
        ('```\n{"a": "b"}\n```', {"a": "b"}, "fence"),
        ('Sure! The answer is {"a": {"b": "}"}} - hope it helps.', {"a": {"b": "}"}}, "prose"),
        ('I can\'t (really) say {this}, but: {"x": true} ok', {"x": True}, "prose"),
        ('Result: [{"id": 1}, {"id": 2}].', [{"id": 1}, {"id": 2}], "prose"),
        ("123456789012345678901234567890", 123456789012345678901234567890, "whole"),
    ],
)
def test_extracts_without_repair(text: str, value: object, source: str) -> None:
    result = extract_json(text)
    assert (result.value, result.repaired, result.source) == (value, False, source)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),
        ("{'a': 'x'}", {"a": "x"}),
        ('Answer: {"a": "x"', {"a": "x"}),  # only the closing brace missing after a complete value
        ('{"a": [1, 2}', {"a": [1, 2]}),
    ],
)
def test_repaired_values_are_flagged(text: str, value: object) -> None:
    result = extract_json(text)
    assert result.value == value
    assert result.repaired is True


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Ada", "bio": "Born in 18',
        '{"a": {"b": 1}, "c": ',
        '{"a": 1, "b"',
        "[1, 2, 3",
        '{"n": 12',
        '{"ok": tr',
        'Here it is:\n```json\n{"items": [{"id": 1}, {"id"',
    ],
)
def test_truncation_is_reported_not_repaired(text: str) -> None:
    with pytest.raises(ExtractionFailed) as info:
        extract_json(text)
    assert info.value.truncated is True


@pytest.mark.parametrize("text", ["", "   ", "hello world", "I don't know.", "I like {braces} (a lot)"])
def test_prose_without_json_fails(text: str) -> None:
    with pytest.raises(ExtractionFailed) as info:
        extract_json(text)
    assert info.value.truncated is False


def test_no_json_found_reason() -> None:
    with pytest.raises(ExtractionFailed, match="no JSON found"):
        extract_json("The weather is nice today.")


def test_nan_is_not_json() -> None:
    result = extract_json('{"a": NaN}')
    assert result.repaired is True  # never passed through as a strict parse


def test_accept_prefers_a_later_candidate() -> None:
    text = 'See [1] and then {"x": 1}'
    assert extract_json(text).value == [1]
    assert extract_json(text, accept=lambda v: isinstance(v, dict)).value == {"x": 1}
    assert extract_json(text, accept=lambda v: False).value == [1]
