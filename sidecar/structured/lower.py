"""Provider-native structured-output request fields, prompt instructions and retry feedback.

OpenAI strict mode needs every property in ``required`` and ``additionalProperties:
false`` on every object. :func:`openai_strict_schema` therefore makes optional properties
*nullable* and required: the model may return ``null`` for them. Validate strict-mode
answers against the ORIGINAL schema after :func:`drop_added_nulls`, which removes a
``null`` only where the property was optional and the original schema rejects ``null``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from sidecar.structured import safe_regex
from sidecar.structured.grammar_profiles import (
    LLAMA_CPP,
    STRICT_DROP,
    STRICT_FORMATS,
    STRICT_KEEP,
    STRICT_MAX_DEPTH,
    STRICT_MAX_ENUM,
    STRICT_MAX_PROPERTIES,
    Dropped,
    lower_for_grammar,
    profile_for,
)

__all__ = [
    "drop_added_nulls",
    "feedback",
    "instructions",
    "native_params",
    "openai_strict_schema",
    "sanitize_name",
]

_FEEDBACK_LIMIT = 4000


class _NotStrict(Exception):
    pass


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind) or None in node.get("enum", [1]):
        return node
    if isinstance(kind, str) and not {"enum", "const", "anyOf", "$ref"} & node.keys():
        return {**node, "type": [kind, "null"]}
    if isinstance(kind, list) and not {"enum", "const", "anyOf", "$ref"} & node.keys():
        return {**node, "type": [*kind, "null"]}
    return {"anyOf": [node, {"type": "null"}]}


def _strict(node: object, depth: int, counts: list[int]) -> dict[str, Any]:
    if not isinstance(node, dict) or depth > STRICT_MAX_DEPTH:
        raise _NotStrict
    unknown = node.keys() - STRICT_KEEP - STRICT_DROP
    if unknown:
        raise _NotStrict(sorted(unknown))
    out = {k: v for k, v in node.items() if k in STRICT_KEEP}
    if "$ref" in out:
        ref = out["$ref"]
        if (
            not isinstance(ref, str)
            or not ref.startswith("#")
            or out.keys() - {"$ref", "description", "title"}
        ):
            raise _NotStrict("$ref")
        return {"$ref": ref}
    if "format" in out and out["format"] not in STRICT_FORMATS:
        raise _NotStrict("format")
    if "pattern" in out and not _portable_pattern(out["pattern"]):
        del out["pattern"]  # look-around, back-references...: left to local validation
    if "enum" in out:
        counts[1] += len(out["enum"])
    if not ({"type", "anyOf", "enum", "const"} & out.keys()):
        raise _NotStrict("free-form value")
    kind = out.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "object" in kinds or "properties" in out:
        if "object" not in kinds or out.get("additionalProperties", False) is not False:
            raise _NotStrict("open object")
        props = out.get("properties", {})
        required = set(out.get("required", []))
        counts[0] += len(props)
        new_props = {}
        for key, sub in props.items():
            lowered = _strict(sub, depth + 1, counts)
            new_props[key] = lowered if key in required else _nullable(lowered)
        out.update(properties=new_props, required=list(props), additionalProperties=False)
    if "items" in out:
        out["items"] = _strict(out["items"], depth + 1, counts)
    elif "array" in kinds:
        raise _NotStrict("array without items")
    if "anyOf" in out:
        out["anyOf"] = [_strict(sub, depth + 1, counts) for sub in out["anyOf"]]
    for key in ("$defs", "definitions"):
        if key in out:
            out[key] = {name: _strict(sub, depth + 1, counts) for name, sub in out[key].items()}
    return out


def _portable_pattern(pattern: object) -> bool:
    """Within the safe regex subset, assertions (look-around, ``\\b``) included."""
    try:
        tree = safe_regex.parse(pattern) if isinstance(pattern, str) else None
    except safe_regex.Unsupported:
        return False
    return tree is not None and not {"look-around", "word boundary"} & set(tree.loosened)


def openai_strict_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """``schema`` rewritten for OpenAI strict mode, or None when that is not possible.

    None for: a root that is not ``type: object``, ``oneOf``/``allOf``/``not``/``if``,
    ``additionalProperties`` other than false, ``patternProperties``, unsupported formats,
    free-form values, remote ``$ref`` and schemas beyond OpenAI's size limits.
    """
    if not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema:
        return None
    counts = [0, 0]
    try:
        lowered = _strict(copy.deepcopy(schema), 0, counts)
    except (_NotStrict, AttributeError, TypeError):
        return None
    if counts[0] > STRICT_MAX_PROPERTIES or counts[1] > STRICT_MAX_ENUM:
        return None
    return lowered


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(node.get("$ref"), str) and node["$ref"].startswith("#") and seen < 32:
        target: Any = root
        for raw in node["$ref"][1:].split("/")[1:]:
            target = (
                target.get(raw.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            )
        if not isinstance(target, dict):
            break
        node, seen = target, seen + 1
    return node


def drop_added_nulls(value: object, original_schema: dict[str, Any]) -> object:
    """Remove ``null`` values that OpenAI strict mode allowed only because it made an
    optional property nullable (original schema: optional and not accepting null)."""
    base = Draft202012Validator(original_schema)

    def walk(val: object, node: object) -> object:
        if not isinstance(node, dict):
            return val
        node = _resolve(node, original_schema)
        if isinstance(val, dict) and isinstance(node.get("properties"), dict):
            required = set(node.get("required", []))
            out: dict[str, Any] = {}
            for key, item in val.items():
                sub = node["properties"].get(key)
                if (
                    item is None
                    and sub is not None
                    and key not in required
                    and not base.evolve(schema=sub).is_valid(None)
                ):
                    continue
                out[key] = walk(item, sub) if sub is not None else item
            val = out
        elif isinstance(val, list) and isinstance(node.get("items"), dict):
            val = [walk(item, node["items"]) for item in val]
        for branch in node.get("anyOf", []) if isinstance(node.get("anyOf"), list) else []:
            cleaned = walk(val, branch)
            if base.evolve(schema=branch).is_valid(cleaned):
                return cleaned
        return val

    try:
        return walk(value, original_schema)
    except Exception:  # a malformed schema is reported by validation, not here
        return value


def sanitize_name(name: str) -> str:
    """A name matching ``^[a-zA-Z0-9_-]{1,64}$``."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64] or "response"


def native_params(
    kind: str, schema: dict[str, Any] | None, *, name: str, model: str, supports_native: bool,
    dropped: list[Dropped] | None = None,
) -> tuple[dict[str, Any], str]:
    """(fields to merge into the provider request body, mechanism name) for ``kind``.

    ``supports_native`` false falls back to the provider's JSON mode (OpenAI, Ollama,
    custom) or a forced tool (Anthropic). ``model`` is accepted for future per-model rules.
    Unknown kinds, and Anthropic without a schema, get ``({}, "instructions")``. Ollama and
    OpenAI-compatible servers get the schema lowered for llama.cpp's grammar converter;
    the keywords left out are appended to ``dropped``.
    """
    del model
    if profile_for(kind) == LLAMA_CPP and schema is not None and supports_native:
        lowered = lower_for_grammar(schema)
        schema = lowered.schema
        if dropped is not None:
            dropped.extend(lowered.dropped)
    name = sanitize_name(name)
    json_object = {"response_format": {"type": "json_object"}}
    if kind == "openai":
        strict = openai_strict_schema(schema) if supports_native else None
        if strict is None:
            return json_object, "openai-json-object"
        spec = {"name": name, "schema": strict, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}, "openai-strict"
    if kind == "anthropic":
        if schema is None:
            return {}, "instructions"
        if supports_native:
            return {
                "output_config": {"format": {"type": "json_schema", "schema": schema}}
            }, "anthropic-json-output"
        if schema.get("type") != "object":
            return {}, "instructions"  # tool input_schema must be an object
        tool = {"name": name, "description": "Return the result.", "input_schema": schema}
        choice = {"type": "tool", "name": name, "disable_parallel_tool_use": True}
        return {"tools": [tool], "tool_choice": choice}, "anthropic-forced-tool"
    if kind == "ollama":
        return {"format": schema if schema is not None and supports_native else "json"}, "ollama-format"
    if kind == "custom":
        if schema is None or not supports_native:
            return json_object, "openai-compatible-json-schema"
        spec = {"name": name, "schema": schema}
        return {
            "response_format": {"type": "json_schema", "json_schema": spec}
        }, "openai-compatible-json-schema"
    return {}, "instructions"


def instructions(
    schema: dict[str, Any] | None, fmt: str, *, root_element: str | None = None, xsd: str | None = None
) -> str:
    """The system-prompt addition asking for only JSON (matching ``schema``) or only XML."""
    if fmt == "xml":
        text = "Answer with only one well-formed XML document: no prose, no Markdown code fences, no DOCTYPE."
        if root_element:
            text += f" The root element must be <{root_element}>."
        if xsd:
            compact = " ".join(xsd.split())
            text += (
                f" It must be valid against this XML Schema: {compact}"
                if len(compact) <= 3000
                else " It must be valid against the XML Schema the caller supplied."
            )
        return text
    text = "Answer with only a JSON value: no prose, no Markdown code fences."
    if schema is not None:
        compact = orjson.dumps(schema).decode()
        text += f" It must be valid against this JSON Schema: {compact}"
    return text


def feedback(last_content: str, errors: list[dict[str, str]], truncated: bool, *, fmt: str = "json") -> str:
    """The retry message listing ``errors`` (kept under about 4 KB)."""
    what = "XML" if fmt == "xml" else "JSON"
    if truncated:
        head = f"Your previous answer was cut off before the {what} was complete."
        tail = f"Answer again with only the complete {what}; keep it shorter if needed."
    else:
        head = "Your previous answer was not valid:"
        tail = f"Fix these errors and answer again with only the corrected {what}."
    lines = [head]
    for error in errors[:20]:
        lines.append(f"- {error.get('path') or '(root)'}: {error.get('message', '')[:300]}")
    body = "\n".join(lines)[:2500]
    echo = last_content if len(last_content) <= 1000 else last_content[:1000] + " ...[truncated]"
    return f"{body}\nYour previous answer began:\n{echo}\n{tail}"[:_FEEDBACK_LIMIT]
