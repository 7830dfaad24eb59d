"""What each server's schema engine accepts, in one place, and the lowering to it.

The sidecar validates every answer against the caller's WHOLE schema, so a keyword
left out of the schema sent to a server costs at most a retry; a keyword a server
cannot take costs the request, or (llama-cpp-python's server) the server process. Each
profile therefore sends only what its engine is known to handle:

* ``LLAMA_CPP`` (OpenAI-compatible servers and Ollama, whose ``format`` goes to
  llama.cpp's JSON-Schema-to-GBNF converter): an allowlist, built node by node. What the
  converter mishandles is dropped or rewritten: regex patterns outside the safe subset of
  :mod:`.safe_regex` (its escapes such as ``\\.`` or ``\\d`` make a grammar llama.cpp
  cannot parse, which kills llama-cpp-python's server), property names and enum/const
  strings holding ``"``, ``\\`` or control characters (quoted into the grammar unescaped),
  ``$ref`` (inlined: the converter leaves recursive reference names unsanitised and a
  reference cycle without a bracket in between is left-recursive), length and item bounds
  above :data:`MAX_BOUND` (the converter unrolls them), empty schemas (the converter
  reads ``{}`` as "an object") and everything it ignores anyway.
* ``OPENAI_STRICT``: the keywords, formats and limits of OpenAI's Structured Outputs
  strict mode (used by :func:`sidecar.structured.lower.openai_strict_schema`).

:func:`lower_for_grammar` returns the lowered schema and every dropped keyword with its
JSON pointer in the original schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.structured.safe_regex import Unsupported, lower_pattern, to_grammar_pattern

__all__ = [
    "LLAMA_CPP",
    "MAX_BOUND",
    "OPENAI_STRICT",
    "Dropped",
    "Lowered",
    "lower_for_grammar",
    "profile_for",
]

LLAMA_CPP = "llama.cpp"
OPENAI_STRICT = "openai-strict"
NATIVE = "native"  # the server takes the schema as given (Anthropic)


def profile_for(kind: str) -> str:
    """The schema profile of a provider kind: custom servers are assumed llama.cpp-based
    (llama.cpp, llama-cpp-python, LM Studio's GGUF engine); vLLM takes the same subset."""
    return {"custom": LLAMA_CPP, "ollama": LLAMA_CPP, "openai": OPENAI_STRICT}.get(kind, NATIVE)


# --- OpenAI strict mode (Structured Outputs "Supported schemas") ---------------------
STRICT_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
STRICT_KEEP = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "anyOf", "enum", "const", "$defs",
    "definitions", "$ref", "description", "title", "pattern", "format", "multipleOf", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
})  # fmt: skip
#: Dropped from the strict wire schema (still enforced by local validation).
STRICT_DROP = frozenset({
    "$schema", "$id", "$comment", "default", "examples", "minLength", "maxLength", "uniqueItems",
    "minProperties", "maxProperties", "readOnly", "writeOnly", "deprecated", "contentMediaType",
    "contentEncoding",
})  # fmt: skip
STRICT_MAX_DEPTH = 10
STRICT_MAX_PROPERTIES = 5000
STRICT_MAX_ENUM = 1000

# --- llama.cpp's JSON-Schema-to-GBNF converter ----------------------------------------
#: Largest minLength/maxLength/minItems/maxItems sent; the converter unrolls a bound into
#: that many nested grammar groups.
MAX_BOUND = 64
_MAX_DEPTH = 24
_MAX_NODES = 2000
_MAX_PROPERTIES = 64  # per object: the converter's optional-property rules grow quadratically
_MAX_ENUM = 256
_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
#: "Any JSON value" in a form the converter understands (it reads ``{}`` as an object).
_ANY: dict[str, Any] = {"type": ["string", "number", "boolean", "null", "object", "array"]}
_GRAMMAR_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
#: Formats the converter has no grammar for, sent as a pattern whose every match is a
#: valid instance of the format (narrower than the format: the grammar can only help).
FORMAT_PATTERNS = {
    "email": r"^[A-Za-z0-9._+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$",
    "uri": r"^https?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(/[A-Za-z0-9._~-]+)*/?$",
    "ipv4": r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$",
    "hostname": r"^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}$",
}
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "$anchor",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "contentMediaType", "contentEncoding",
})  # fmt: skip
_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")


@dataclass(frozen=True, slots=True)
class Dropped:
    """A keyword left out of the lowered schema; ``path`` points at its node."""

    path: str
    keyword: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "keyword": self.keyword, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Lowered:
    schema: dict[str, Any]
    dropped: tuple[Dropped, ...]


def safe_text(text: object) -> bool:
    """True when the converter can quote ``text`` into a grammar literal: no ``"``,
    ``\\`` or control character (quoted unescaped), no character outside the BMP
    (becomes a surrogate pair no token can produce), not empty."""
    return (
        isinstance(text, str) and text != ""
        and all(0x20 <= ord(c) < 0xD800 or 0xE000 <= ord(c) <= 0xFFFF for c in text)
        and '"' not in text and "\\" not in text
    )


def _safe_value(value: object, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(value, str):
        return value == "" or safe_text(value)
    if isinstance(value, list):
        return all(_safe_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(safe_text(k) and _safe_value(v, depth + 1) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float))


@dataclass
class _Lowerer:
    root: dict[str, Any]
    dropped: list[Dropped] = field(default_factory=list)
    nodes: int = 0

    def drop(self, path: str, keyword: str, reason: str) -> None:
        self.dropped.append(Dropped(path, keyword, reason))

    def node(self, schema: object, path: str, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        self.nodes += 1
        if schema is True or schema == {}:
            return dict(_ANY)
        if not isinstance(schema, dict):
            self.drop(path, "false" if schema is False else "schema", "not an object schema: sent as any value")
            return dict(_ANY)
        if depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            self.drop(path, "*", "schema too deep or too large: sent as any value")
            return dict(_ANY)
        if "$ref" in schema:
            return self.reference(schema, path, depth, refs)
        out: dict[str, Any] = {}
        # additionalProperties last: it depends on whether properties were kept
        for key, value in sorted(schema.items(), key=lambda item: item[0] == "additionalProperties"):
            if key in _ANNOTATIONS:
                continue
            handler = _HANDLERS.get(key)
            if handler is None:
                self.drop(path, key, "not enforced by the llama.cpp grammar converter")
            else:
                handler(self, out, value, _At(path, key), (schema, depth, refs))
        self.fix_object(schema, out, path)
        self.fix_bounds(out, path)
        if not out.keys() & {"type", "enum", "const", "anyOf", "properties", "items", "pattern"}:
            out.update(_ANY)
        return out

    def reference(self, schema: dict[str, Any], path: str, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        ref = schema["$ref"]
        for key in schema.keys() - _ANNOTATIONS - {"$ref"}:
            self.drop(path, key, "next to $ref: left to local validation")
        target = _resolve(self.root, ref)
        if target is None or ref in refs:
            self.drop(path, "$ref", "recursive or unresolvable reference: sent as any value")
            return dict(_ANY)
        return self.node(target, path, depth + 1, (*refs, ref))

    def fix_object(self, schema: dict[str, Any], out: dict[str, Any], path: str) -> None:
        """Keys the caller's schema allows but the grammar would not: required names that
        are not properties, or more properties than listed (minProperties)."""
        if "properties" not in out:
            if "required" in schema:
                self.drop(path, "required", "no properties sent: checked locally")
            return
        required = schema.get("required")
        required = required if isinstance(required, list) else []
        wanted = schema.get("minProperties", 0)
        needs_more = any(name not in out["properties"] for name in required) or (
            isinstance(wanted, int) and wanted > len(out["properties"]))
        if needs_more and "additionalProperties" not in out:
            out["additionalProperties"] = True

    def fix_bounds(self, out: dict[str, Any], path: str) -> None:
        for low_key, high_key in (("minLength", "maxLength"), ("minItems", "maxItems")):
            low, high = out.get(low_key), out.get(high_key)
            if low is not None and high is not None and low > high:
                for key in (low_key, high_key):
                    del out[key]
                    self.drop(path, key, "minimum above maximum")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _resolve(root: dict[str, Any], ref: object) -> object:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    target: object = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            return None
    return target


_Context = tuple[dict[str, Any], int, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _At:
    """Where a keyword is: the pointer of its schema node, and the keyword."""

    node: str
    key: str

    @property
    def inside(self) -> str:
        return f"{self.node}/{_escape(self.key)}"


def _type(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    kinds = value if isinstance(value, list) else [value]
    if kinds and all(k in _TYPES for k in kinds):
        out["type"] = value if isinstance(value, str) else list(dict.fromkeys(kinds))
    else:
        low.drop(at.node, at.key, "unknown type")


def _properties(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    schema, depth, refs = ctx
    if not isinstance(value, dict) or len(value) > _MAX_PROPERTIES or not all(safe_text(k) for k in value):
        low.drop(at.node, at.key, "a property name the grammar cannot quote, or too many: any object")
        return
    out["properties"] = {k: low.node(v, f"{at.inside}/{_escape(k)}", depth + 1, refs) for k, v in value.items()}
    required = schema.get("required")
    if isinstance(required, list):
        out["required"] = [name for name in required if name in value]


def _skip(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    """Handled by another keyword's handler (``required`` with ``properties``)."""


def _additional(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    schema, depth, refs = ctx
    if "properties" in schema and not isinstance(schema["properties"], dict):
        return
    if isinstance(schema.get("properties"), dict) and "properties" not in out:
        low.drop(at.node, at.key, "properties were dropped")
        return
    out["additionalProperties"] = value if isinstance(value, bool) else low.node(value, at.inside, depth + 1, refs)


def _items(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    _schema, depth, refs = ctx
    out["items"] = low.node(value, at.inside, depth + 1, refs)


def _union(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    schema, depth, refs = ctx
    keyword = at.key
    if keyword == "oneOf":
        if "anyOf" in schema:
            low.drop(at.node, keyword, "next to anyOf: left to local validation")
            return
        low.drop(at.node, keyword, "sent as anyOf (exactly-one is checked locally)")
    if not isinstance(value, list) or not value:
        low.drop(at.node, keyword, "empty")
        return
    out["anyOf"] = [low.node(v, f"{at.inside}/{i}", depth + 1, refs) for i, v in enumerate(value)]


def _enum(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    if isinstance(value, list) and 0 < len(value) <= _MAX_ENUM and all(_safe_value(v) for v in value):
        out["enum"] = value
    else:
        low.drop(at.node, at.key, "empty, too long, or a string the grammar cannot quote")


def _const(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    if _safe_value(value):
        out["const"] = value
    else:
        low.drop(at.node, at.key, "a string the grammar cannot quote")


def _pattern(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    if not isinstance(value, str):
        low.drop(at.node, at.key, "not a string")
        return
    try:
        out["pattern"], loosened = lower_pattern(value)
    except Unsupported as exc:
        low.drop(at.node, at.key, f"outside the grammar-safe regex subset ({exc})")
        return
    if loosened:
        low.drop(at.node, at.key, f"sent without its {', '.join(loosened)}: checked locally")


def _format(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    schema = ctx[0]
    if value in _GRAMMAR_FORMATS:
        out["format"] = value
    elif value in FORMAT_PATTERNS and "pattern" not in schema:
        out["pattern"] = to_grammar_pattern(FORMAT_PATTERNS[value])
    else:
        low.drop(at.node, at.key, "no grammar for this format: checked locally")


def _bound(low: _Lowerer, out: dict[str, Any], value: Any, at: _At, ctx: _Context) -> None:
    keyword = at.key
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_BOUND:
        out[keyword] = value
    else:
        low.drop(at.node, keyword, f"above {MAX_BOUND}: checked locally")


_HANDLERS = {
    "type": _type, "properties": _properties, "required": _skip, "additionalProperties": _additional,
    "items": _items, "anyOf": _union, "oneOf": _union, "enum": _enum, "const": _const,
    "pattern": _pattern, "format": _format, **dict.fromkeys(_BOUNDS, _bound),
}  # fmt: skip


def lower_for_grammar(schema: dict[str, Any]) -> Lowered:
    """``schema`` reduced to what llama.cpp's converter handles, and what was dropped."""
    lowerer = _Lowerer(schema)
    lowered = lowerer.node(schema, "", 0, ())
    return Lowered(lowered, tuple(lowerer.dropped))
