"""Tool calls checked against the tools offered: the same validator and repair as
structured output.

A call is valid when it names an offered tool and its arguments, read as JSON (small
syntax faults repaired, as for a ``responseFormat``), are an object that validates
against that tool's ``parameters``. :func:`check_calls` returns the calls with parsed
arguments, or the list of errors (JSON pointers under ``/toolCalls/<i>``) that goes back
to the model. Ids are made unique within the answer (a missing or repeated id gets one
made here), so a host can always answer each call by its id.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar.structured.extract import ExtractionFailed, extract_json
from sidecar.structured.lower import drop_added_nulls
from sidecar.structured.validate import compile_schema, validation_errors

__all__ = ["CheckedCall", "ToolCheck", "check_calls", "tool_feedback"]

_FEEDBACK_LIMIT = 6000
#: Deeper arguments are refused: a host's own parser, and the response's serialiser,
#: have limits too (the sidecar reads host messages up to 128 levels).
MAX_ARGUMENT_DEPTH = 64


class ToolCall(Protocol):
    """A call as the model made it (``arguments``: the JSON text it produced)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def arguments(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CheckedCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class ToolCheck:
    """The verdict on one answer's calls: all valid (``calls``), or ``errors``."""

    calls: list[CheckedCall] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    repaired: bool = False


def check_calls(calls: Sequence[ToolCall], schemas: Mapping[str, dict[str, Any]], *,
                nullable_optionals: bool = False, at_most_one: bool = False) -> ToolCheck:
    """Check every call; ``nullable_optionals``: the provider saw a strict form of the
    schemas in which optional fields became nullable (their ``null`` is dropped first)."""
    check = ToolCheck()
    seen: set[str] = set()
    if at_most_one and len(calls) > 1:
        check.errors.append({"path": "/toolCalls", "message": f"{len(calls)} calls, but at most one was asked for"})
    for i, call in enumerate(calls):
        where = f"/toolCalls/{i}"
        schema = schemas.get(call.name)
        if schema is None:
            offered = ", ".join(sorted(schemas)) or "none"
            check.errors.append({"path": f"{where}/name", "message": f"no tool named {call.name!r} (offered: {offered})"})
            continue
        value, repaired, problem = _arguments(call.arguments)
        if problem is not None:
            check.errors.append({"path": f"{where}/arguments", "message": problem})
            continue
        check.repaired = check.repaired or repaired
        if nullable_optionals:
            value = drop_added_nulls(value, schema)
        errors = validation_errors(compile_schema(schema), value)
        check.errors.extend({"path": f"{where}/arguments{e['path']}", "message": e["message"]} for e in errors)
        call_id = call.id if call.id and call.id not in seen else f"call_{secrets.token_hex(6)}"
        seen.add(call_id)
        check.calls.append(CheckedCall(call_id, call.name, value))
    if check.errors:
        check.calls = []
    return check


def _arguments(text: str) -> tuple[Any, bool, str | None]:
    """(value, repaired, problem) of a call's argument text."""
    if not text.strip():
        return {}, False, None  # no arguments at all: the empty object
    try:
        extracted = extract_json(text)
    except ExtractionFailed as exc:
        return None, False, f"the arguments are not JSON ({exc.reason})"
    if not isinstance(extracted.value, dict):
        return None, False, "the arguments must be a JSON object"
    if _deeper_than(extracted.value, MAX_ARGUMENT_DEPTH):
        return None, False, f"the arguments are nested deeper than {MAX_ARGUMENT_DEPTH} levels"
    return extracted.value, extracted.repaired, None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def tool_feedback(calls: Sequence[ToolCall], errors: list[dict[str, str]], *, missing: bool = False,
                  forbidden: bool = False) -> str:
    """The next user turn after invalid calls (or no call where one was required;
    ``forbidden``: calls where none may be made, toolChoice "none")."""
    if missing:
        return "You must call one of the offered tools now. Answer with a tool call, not text."
    lines = ["Your tool call was not allowed and was not run:" if forbidden
             else "Your tool call was invalid and was not run:"]
    for call in calls[:5]:
        args = call.arguments if len(call.arguments) <= 800 else call.arguments[:800] + " ...[truncated]"
        lines.append(f"- you called {call.name!r} with arguments: {args}")
    lines.append("Errors:")
    lines.extend(f"- {e['path']}: {e['message'][:300]}" for e in errors[:20])
    lines.append("Do not call any tool now: answer in text." if forbidden
                 else "Call the tool again with arguments that satisfy its parameters schema.")
    return "\n".join(lines)[:_FEEDBACK_LIMIT]
