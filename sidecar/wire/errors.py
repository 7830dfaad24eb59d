"""pydantic validation errors as the protocol reports them: ``{path, message}`` with a
JSON pointer over the wire names (``data.errors`` of ``InvalidParams``)."""

from __future__ import annotations

from typing import get_args

import pydantic

from sidecar.wire.model import ChatTurn, ContentPart, ResponseFormat

__all__ = ["validation_errors"]

#: Fields holding a tagged union, and their tags: pydantic puts the tag of the member it
#: tried into the error's location (``responseFormat/json_schema/schema``), which is no
#: field the host wrote.
_UNION_TAGS: dict[str, frozenset[str]] = {
    "responseFormat": frozenset(
        tag for member in get_args(get_args(ResponseFormat)[0]) for tag in get_args(member.model_fields["type"].annotation)
    ),
    "messages": frozenset(
        tag for member in get_args(get_args(ChatTurn)[0]) for tag in get_args(member.model_fields["role"].annotation)
    ),
    "content": frozenset(
        {"string", "parts"}
        | {tag for member in get_args(get_args(ContentPart)[0]) for tag in get_args(member.model_fields["type"].annotation)}
    ),
    "toolChoice": frozenset({"mode", "named"}),
}


def _without_tags(loc: tuple[int | str, ...]) -> list[int | str]:
    """``loc`` without the tags pydantic inserts after a union field or its list index
    (at most one tag at each such place: a field named like a tag stays)."""
    out: list[int | str] = []
    tagged = False
    for part in loc:
        key = out[-1] if out else None
        if isinstance(key, int) and len(out) > 1:
            key = out[-2]
        if not tagged and isinstance(part, str) and isinstance(key, str) and part in _UNION_TAGS.get(key, ()):
            tagged = True
            continue
        out.append(part)
        tagged = False
    return out


def validation_errors(exc: pydantic.ValidationError) -> list[dict[str, str]]:
    """pydantic errors as ``{path, message}`` with JSON-pointer paths over wire names."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = _without_tags(err["loc"])
        parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
        path = "/" + "/".join(parts) if parts else ""
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"path": path, "message": message})
    return out
