"""One inbound line to a message: orjson's strict parse, plus the two checks it lacks.

* **Duplicate keys.** orjson keeps the last of two equal keys without a word; RFC 8259
  says names "SHOULD be unique" and leaves the outcome to the parser, so a host and the
  sidecar could read one line differently (a second ``id``, a second ``apiKey``). Lines
  with duplicate keys are refused. Finding them exactly needs a second, slower parse
  (``json.loads`` with ``object_pairs_hook``), so a cheap bound decides first whether it
  can be needed: every object member has exactly one ``:`` outside strings, so
  ``colons in the line - colons inside the parsed strings + escaped colons (\\u003a)``
  bounds the members the line really holds; when that equals the members parsed, no key
  was dropped. Only lines with an escaped colon or a real duplicate take the slow path.
* **Depth.** orjson parses up to 1024 levels but serialises only 255, and Python code
  that walks a value recursively (copies, merges, schema checks) fails well before 1024
  levels. A message nested deeper than :data:`MAX_DEPTH` arrays and objects is refused
  before it reaches a handler, wherever the deep value is (its duplicate keys are then
  not looked for: the slow parse would recurse that deep).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import orjson

__all__ = ["MAX_DEPTH", "Decoded", "Path", "decode_line", "pointer"]

#: Arrays and objects nested in one message, the envelope's own object included.
MAX_DEPTH = 128

Path = tuple[str | int, ...]


class Decoded(NamedTuple):
    """A parsed line and what is wrong with its shape (paths from the message root)."""

    message: Any
    #: Each duplicated key, as the path of the object holding it plus the key.
    duplicates: tuple[Path, ...] = ()
    #: The first array or object deeper than :data:`MAX_DEPTH`, if any.
    too_deep: Path | None = None


def decode_line(line: bytes) -> Decoded:
    """Parse one line.

    Raises:
        orjson.JSONDecodeError: not JSON, not UTF-8, NaN/Infinity, or deeper than 1024.
    """
    message = orjson.loads(line)
    if type(message) is not dict and type(message) is not list:
        return Decoded(message)
    members, string_colons, depth = _survey(message)
    if depth > MAX_DEPTH:
        return Decoded(message, too_deep=_deep_path(message))
    bound = line.count(b":") - string_colons + line.count(b"\\u003a") + line.count(b"\\u003A")
    if bound <= members:
        return Decoded(message)
    return Decoded(message, duplicates=_find_duplicates(line))


def pointer(path: Path) -> str:
    """A JSON pointer (RFC 6901) for ``path``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _survey(root: dict[str, Any] | list[Any]) -> tuple[int, int, int]:
    """Object members, ``:`` inside keys and strings, and the nesting depth of ``root``.

    Level by level, with exact type checks (orjson builds plain dicts, lists and strs):
    this runs on every line.
    """
    members = colons = depth = 0
    level: list[Any] = [root]
    while level and depth <= MAX_DEPTH:
        depth += 1
        below: list[Any] = []
        for value in level:
            if type(value) is dict:
                members += len(value)
                for key, item in value.items():
                    colons += key.count(":")
                    kind = type(item)
                    if kind is str:
                        colons += item.count(":")
                    elif kind is dict or kind is list:
                        below.append(item)
                continue
            for item in value:
                kind = type(item)
                if kind is str:
                    colons += item.count(":")
                elif kind is dict or kind is list:
                    below.append(item)
        level = below
    if level:
        depth += 1  # containers below the limit remain: refused anyway, no need to look further
    return members, colons, depth


def _deep_path(root: Any) -> Path:
    """A path deeper than :data:`MAX_DEPTH`: inside ``params`` when there is one there (so
    the error names the host's field), else wherever it is."""
    params = root.get("params") if isinstance(root, dict) else None
    if isinstance(params, dict | list):
        found = _deep_under(params, ("params",))
        if found is not None:
            return found
    return _deep_under(root, ()) or ()


def _deep_under(root: Any, start: Path) -> Path | None:
    stack: list[tuple[Any, Path]] = [(root, start)]
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            return path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((item, (*path, key)) for key, item in items if isinstance(item, dict | list))
    return None


class _Pairs(dict[str, Any]):
    """An object from the slow parse that remembers which of its keys came twice."""

    __slots__ = ("repeated",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.repeated: list[str] = []
        if len(self) != len(pairs):
            seen: set[str] = set()
            for key, _value in pairs:
                if key in seen and key not in self.repeated:
                    self.repeated.append(key)
                seen.add(key)


def _zero(_text: str) -> int:
    return 0


def _find_duplicates(line: bytes) -> tuple[Path, ...]:
    # Within MAX_DEPTH, so the C scanner's recursion stays far from Python's limit.
    # Numbers are not needed: skip their conversion (and int()'s 4300-digit limit).
    root = json.loads(line, object_pairs_hook=_Pairs, parse_int=_zero, parse_float=_zero)
    found: list[Path] = []
    stack: list[tuple[Any, Path]] = [(root, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Pairs):
            found.extend((*path, key) for key in value.repeated)
            stack.extend((item, (*path, key)) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in reversed(list(enumerate(value))))
    return tuple(found)
