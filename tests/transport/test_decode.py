"""decode_line: the cheap duplicate-key bound never misses one, and depth is measured right."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.transport.decode import MAX_DEPTH, decode_line, pointer

# Keys and strings rich in what could fool the bound: colons, escapes, quotes, unicode.
_text = st.text(alphabet=st.sampled_from(['a', 'b', ':', '"', '\\', 'é', ' ', '\u2028']), max_size=4)


def _render(value: Any, escape: bool) -> str:
    """JSON text of ``value``; objects are lists of pairs, so keys may repeat."""
    if isinstance(value, tuple):
        pairs = ",".join(f"{_string(k, escape)}:{_render(v, escape)}" for k, v in value)
        return "{" + pairs + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v, escape) for v in value) + "]"
    if isinstance(value, str):
        return _string(value, escape)
    return json.dumps(value)


def _string(text: str, escape: bool) -> str:
    out = json.dumps(text, ensure_ascii=False)
    return out.replace(":", "\\u003a") if escape else out


_values = st.recursive(
    st.none() | st.integers(-5, 5) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.lists(st.tuples(_text, inner), max_size=4).map(tuple),
    max_leaves=20,
)


def _has_duplicates(value: Any) -> bool:
    if isinstance(value, tuple):
        keys = [k for k, _v in value]
        return len(keys) != len(set(keys)) or any(_has_duplicates(v) for _k, v in value)
    if isinstance(value, list):
        return any(_has_duplicates(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(value=st.lists(st.tuples(_text, _values), max_size=4).map(tuple), escape=st.booleans())
def test_duplicates_are_found_exactly(value: Any, escape: bool) -> None:
    decoded = decode_line(_render(value, escape).encode())
    assert bool(decoded.duplicates) == _has_duplicates(value)


def test_duplicate_paths_point_at_the_repeated_key() -> None:
    line = b'{"a":[{"x":1},{"y":{"k":1,"k":2}}],"a2":{"\\u006b":1,"k":2}}'
    assert {pointer(p) for p in decode_line(line).duplicates} == {"/a/1/y/k", "/a2/k"}


def test_a_normal_request_takes_no_slow_path() -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "model:generate",
                       "params": {"request": {"prompt": "a: b: c", "context": {"u": "http://h:1/"}}}}).encode()
    assert decode_line(line).duplicates == ()


@pytest.mark.parametrize(("levels", "deep"), [(MAX_DEPTH, False), (MAX_DEPTH + 1, True), (1000, True)])
def test_depth_counts_every_array_and_object(levels: int, deep: bool) -> None:
    line = b"[" * levels + b"]" * levels
    too_deep = decode_line(line).too_deep
    assert (too_deep is not None) == deep
    if too_deep is not None:
        assert too_deep == (0,) * MAX_DEPTH
