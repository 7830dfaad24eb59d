"""Find the JSON value in a model's text, telling truncation apart from small syntax faults.

Order (first success wins):

1. the whole text (BOM, whitespace and leading ``<think>...</think>`` blocks stripped);
2. the body of the first fenced block (```json or ```), or the rest of the text after an
   unclosed fence;
3. the first balanced top-level ``{...}``/``[...]`` span that parses (string-aware bracket
   matching; an opening bracket only counts when what follows looks like JSON, so prose
   such as ``(see [1])`` or ``{this}`` is skipped);
4. an unclosed span whose text stops mid-value (inside a string, after ``:``/``,``/a key,
   in a number or a partial literal) raises ``ExtractionFailed(truncated=True)``;
5. ``json_repair`` on the best candidate span (a balanced span that did not parse, or an
   unclosed span that stops after a complete value, i.e. only closing brackets missing);
   the result is flagged ``repaired=True``. Text with no ``{``/``[`` is never repaired.

Repaired values can contain invented data: callers must still validate them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import json_repair
import orjson

__all__ = ["ExtractResult", "ExtractionFailed", "extract_json", "loads_strict", "strip_wrappers"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n")
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_KEY_START = re.compile(r"""\s*(?:["'}]|[A-Za-z_$][\w$-]*\s*:)""")
_ARRAY_START = re.compile(r"""\s*(?:["'{\[\]\-0-9]|true\b|false\b|null\b)""")
_LONG_INT = re.compile(r"\d{19,}")  # orjson would turn these into floats
_LITERALS = ("true", "false", "null")
_MAX_CANDIDATES = 200


@dataclass(frozen=True)
class ExtractResult:
    """The extracted value, whether ``json_repair`` changed it, where it was found
    (``"whole"``, ``"fence"``, ``"prose"``) and the JSON text it came from."""

    value: object
    repaired: bool
    source: str
    text: str = ""


class ExtractionFailed(ValueError):
    """No JSON value could be extracted; ``truncated`` when the text stops mid-value."""

    def __init__(self, reason: str, truncated: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.truncated = truncated


def loads_strict(text: str) -> object:
    """Parse strict JSON (orjson; stdlib when integers may exceed 64 bits). NaN/Infinity rejected."""
    if _LONG_INT.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None

    def _no_constants(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None


def strip_wrappers(text: str) -> str:
    """Remove a BOM, surrounding whitespace and a leading ``<think>`` block."""
    text = text.lstrip("\ufeff").strip()
    return _THINK.sub("", text, count=1).strip()


_Accept = Callable[[object], bool] | None


@dataclass
class _Span:
    start: int
    end: int | None  # exclusive; None when the text ends inside the span
    complete: bool  # for unclosed spans: the text stops right after a complete value


def _scan(s: str, start: int) -> _Span:
    """Match the bracket opened at ``start``, skipping double-quoted strings."""
    stack: list[str] = []
    in_str = esc = is_key = False
    prev = ""  # last significant token: a bracket, ",", ":", "k" (key), "v" (string value), "w"
    word = ""
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
                prev = "k" if is_key else "v"
            continue
        if c == '"':
            in_str = True
            is_key = bool(stack) and stack[-1] == "{" and prev in ("{", ",")
        elif c in "{[":
            stack.append(c)
            prev = c
        elif c in "}]":
            want = "{" if c == "}" else "["
            while stack and stack[-1] != want:
                stack.pop()  # mismatched closer: the span is malformed, repair decides
            if stack:
                stack.pop()
            prev = c
            if not stack:
                return _Span(start, i + 1, True)
        elif c in ",:":
            prev = c
        elif not c.isspace():
            word = word + c if prev == "w" else c
            prev = "w"
    complete = not in_str and (prev in ("v", "}", "]") or (prev == "w" and word in _LITERALS))
    return _Span(start, None, complete)


_Found = ExtractResult | tuple[_Span | None, bool]


def _looks_like_json(s: str, i: int) -> bool:
    pattern = _KEY_START if s[i] == "{" else _ARRAY_START
    return pattern.match(s, i + 1) is not None


def _search(region: str, source: str, accept: _Accept, rejected: list[ExtractResult]) -> _Found:
    """An accepted parsed span, or (best repair candidate, whether the text stops mid-value).

    Spans that parse but are not accepted are appended to ``rejected``.
    """
    candidate: _Span | None = None
    i = 0
    tried = 0
    while i < len(region) and tried < _MAX_CANDIDATES:
        if region[i] not in "{[" or not _looks_like_json(region, i):
            i += 1
            continue
        tried += 1
        span = _scan(region, i)
        if span.end is None:
            return (span if span.complete else candidate, not span.complete)
        body = region[span.start : span.end]
        try:
            result = ExtractResult(loads_strict(body), False, source, body)
        except ValueError:
            candidate = candidate or span
        else:
            if accept is None or accept(result.value):
                return result
            rejected.append(result)
        i = span.end
    return candidate, False


def _fence_body(text: str) -> str | None:
    match = _FENCE.search(text)
    if match is None:
        return None
    close = text.find("```", match.end())
    return text[match.end() :] if close < 0 else text[match.end() : close]


def _repair(span_text: str, source: str) -> ExtractResult:
    try:
        value = json_repair.repair_json(span_text, return_objects=True)
    except Exception as exc:  # json_repair is best-effort; never let it crash us
        raise ExtractionFailed(f"JSON could not be repaired: {exc}") from None
    if not isinstance(value, dict | list) or (not value and len(span_text.strip()) > 2):
        raise ExtractionFailed("the JSON in the answer is malformed and could not be repaired")
    return ExtractResult(value, True, source, span_text)


def extract_json(text: str, accept: Callable[[object], bool] | None = None) -> ExtractResult:
    """Extract the JSON value from ``text``; raises :class:`ExtractionFailed`.

    ``accept`` (e.g. "validates against the schema") lets a later candidate win over an
    earlier one that parses but is not accepted; when none is accepted, the first value
    that parsed is returned (so the caller reports its validation errors).
    """
    stripped = strip_wrappers(text)
    if not stripped:
        raise ExtractionFailed("the answer is empty")
    rejected: list[ExtractResult] = []

    def _whole(region: str, source: str) -> ExtractResult | None:
        try:
            result = ExtractResult(loads_strict(region), False, source, region)
        except ValueError:
            return None
        if accept is None or accept(result.value):
            return result
        rejected.append(result)
        return None

    found_whole = _whole(stripped, "whole")
    if found_whole is not None:
        return found_whole
    body = _fence_body(stripped)
    regions = [(body.strip(), "fence"), (stripped, "prose")] if body is not None else [(stripped, "prose")]
    for region, source in regions:
        if source == "fence" and region and (found_fence := _whole(region, source)) is not None:
            return found_fence
        found = _search(region, source, accept, rejected)
        if isinstance(found, ExtractResult):
            return found
        if rejected:
            continue
        candidate, truncated = found
        if truncated:
            raise ExtractionFailed(
                "the answer stops in the middle of a JSON value (cut off?)", truncated=True
            )
        if candidate is not None:
            end = candidate.end if candidate.end is not None else len(region)
            return _repair(region[candidate.start : end], source)
    if rejected:
        return rejected[0]
    if "{" not in stripped and "[" not in stripped:
        raise ExtractionFailed("no JSON found")
    raise ExtractionFailed("no JSON object or array found in the answer")
