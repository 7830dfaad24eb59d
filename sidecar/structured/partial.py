"""Previews of partial JSON while streaming.

``parse_partial`` closes open strings, arrays and objects (via ``json_repair``) and returns
the value so far, or None when there is nothing usable yet. Previews are for display:
never validate or return them as results.
"""

from __future__ import annotations

import json_repair

from sidecar.structured.extract import strip_wrappers

__all__ = ["parse_partial"]


def parse_partial(text: str) -> object | None:
    """The JSON object/array parsed so far in ``text``, or None. Never raises."""
    try:
        body = strip_wrappers(text)
        starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
        if not starts:
            return None
        body = body[min(starts) :]
        fence = body.find("```")
        if fence >= 0:
            body = body[:fence]
        value = json_repair.repair_json(body, return_objects=True, stream_stable=True)
        return value if isinstance(value, dict | list) else None
    except Exception:
        return None
