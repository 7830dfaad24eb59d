"""JSON Schema compilation (cached, formats enforced) and model-facing error lists.

``compile_schema`` checks a schema against the 2020-12 meta-schema and returns a
``Draft202012Validator`` with a ``FormatChecker`` (the ``format-nongpl`` extras make
``date-time``, ``uri``, ``duration``... real checks). A bad schema raises
:class:`sidecar.errors.InvalidParams` with paths under ``/responseFormat/schema``.

``validation_errors`` returns every error as ``{"path", "message"}`` where ``path`` is a
JSON pointer into the instance (``""`` for the root), sorted by path, at most 20.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError, best_match  # type: ignore[import-untyped]

from sidecar.errors import InvalidParams

__all__ = [
    "MAX_ERRORS",
    "compile_schema",
    "json_pointer",
    "missing_format_checkers",
    "schema_hash",
    "validation_errors",
]

MAX_ERRORS = 20
_MAX_MESSAGE = 300
_CACHE_SIZE = 256
_SCHEMA_PATH = "/responseFormat/schema"
_cache: OrderedDict[str, Any] = OrderedDict()

#: Formats whose checkers need the optional extras; a missing one would silently pass.
REQUIRED_FORMATS = (
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
)


def missing_format_checkers() -> list[str]:
    """Formats from :data:`REQUIRED_FORMATS` that this install cannot check (should be empty)."""
    return [f for f in REQUIRED_FORMATS if f not in FormatChecker().checkers]


def json_pointer(parts: Iterable[object]) -> str:
    """RFC 6901 pointer for a sequence of keys/indexes (``""`` for the root)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def schema_hash(schema: object) -> str:
    """Stable hash of a JSON value (keys sorted); raises ``TypeError`` for non-JSON values."""
    try:
        data = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc)) from exc
    return hashlib.sha256(data).hexdigest()


def _invalid(path: str, message: str) -> InvalidParams:
    return InvalidParams(
        f"invalid JSON Schema: {message}", errors=[{"path": _SCHEMA_PATH + path, "message": message}]
    )


def _check_refs(node: object, root: object, path: list[object]) -> None:
    """Reject ``$ref`` values that cannot resolve locally (remote refs, dangling pointers)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            _resolve_local(ref, root, json_pointer([*path, "$ref"]))
        for key, value in node.items():
            if key not in ("enum", "const", "default", "examples"):
                _check_refs(value, root, [*path, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_refs(value, root, [*path, i])


def _resolve_local(ref: str, root: object, where: str) -> None:
    if not ref.startswith("#"):
        raise _invalid(where, f"only local $ref values are supported, got {ref!r}")
    if ref == "#" or not ref.startswith("#/"):
        return  # the root itself, or an anchor (checked by jsonschema when used)
    target: object = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise _invalid(where, f"$ref {ref!r} does not resolve")


def compile_schema(schema: dict[str, Any]) -> Any:
    """A cached ``Draft202012Validator`` (with a real ``FormatChecker``) for ``schema``.

    Raises :class:`InvalidParams` when ``schema`` is not a valid 2020-12 JSON Schema.
    """
    if not isinstance(schema, dict):
        raise _invalid("", "the schema must be a JSON object")
    try:
        key = schema_hash(schema)
    except TypeError as exc:
        raise _invalid("", f"the schema is not JSON-serialisable ({exc})") from exc
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    try:
        Draft202012Validator.check_schema(schema, format_checker=FormatChecker())
    except SchemaError as exc:
        raise _invalid(json_pointer(exc.absolute_path), _short(str(exc.message))) from None
    except Exception as exc:  # a checker crashing on odd input must not crash the sidecar
        raise _invalid("", _short(f"{type(exc).__name__}: {exc}")) from None
    _check_refs(schema, schema, [])
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    _cache[key] = validator
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return validator


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _message(error: Any) -> str:
    text = str(error.message)
    if error.validator in ("anyOf", "oneOf") and error.context:
        typed = [e for e in error.context if e.validator != "type"]  # branches of the right type
        closest = best_match(typed or error.context)
        where = json_pointer(closest.absolute_path) or "(root)"
        text = f"{_short(text)}; closest alternative failed at {where}: {_short(str(closest.message))}"
    return _short(text)


def validation_errors(validator: Any, instance: object) -> list[dict[str, str]]:
    """Every error of ``instance`` as ``{"path", "message"}``, sorted by path, at most 20.

    An error while evaluating the schema (e.g. an unresolvable anchor) is reported as a
    root error, so the caller never mistakes it for success.
    """
    try:
        found = [
            {"path": json_pointer(e.absolute_path), "message": _message(e)}
            for e in validator.iter_errors(instance)
        ]
    except Exception as exc:
        return [{"path": "", "message": _short(f"the schema could not be evaluated: {exc}")}]
    found.sort(key=lambda e: (e["path"], e["message"]))
    return found[:MAX_ERRORS]
