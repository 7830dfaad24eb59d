"""pydantic validation errors as the protocol reports them: ``{path, message}`` with a
JSON pointer over the wire names (``data.errors`` of ``InvalidParams``)."""

from __future__ import annotations

from typing import get_args

import pydantic

from sidecar.wire.model import ResponseFormat

__all__ = ["validation_errors"]

#: Fields holding a tagged union, and their tags: pydantic puts the tag of the member it
#: tried into the error's location (``responseFormat/json_schema/schema``), which is no
#: field the host wrote.
_UNION_TAGS: dict[str, frozenset[str]] = {
    "responseFormat": frozenset(
        tag for member in get_args(get_args(ResponseFormat)[0]) for tag in get_args(member.model_fields["type"].annotation)
    ),
}


def validation_errors(exc: pydantic.ValidationError) -> list[dict[str, str]]:
    """pydantic errors as ``{path, message}`` with JSON-pointer paths over wire names."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"])
        for i in range(len(loc) - 1, 0, -1):
            if loc[i] in _UNION_TAGS.get(str(loc[i - 1]), ()):
                del loc[i]
        parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
        path = "/" + "/".join(parts) if parts else ""
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"path": path, "message": message})
    return out
