"""Extract, safely parse and check XML answers.

``check_xml`` strips prose and Markdown fences around the outermost element (keeping an
``<?xml?>`` declaration or ``<!DOCTYPE>`` in front of it, so that DTDs are rejected
explicitly), parses with ``defusedxml`` (DTDs, entity declarations and external
references forbidden: no billion laughs, no XXE), checks the root element name and
validates against an XSD with ``xmlschema`` (``defuse="always"``, no remote resources).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import xmlschema
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml.ElementTree import fromstring  # type: ignore[import-untyped]

from sidecar.errors import InvalidParams

__all__ = ["XmlInvalid", "XmlResult", "check_xml", "compile_xsd"]

_MAX_ERRORS = 20
_MAX_MESSAGE = 300
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_START = re.compile(r"<([A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)(?=[\s/>])")
_PROLOG = re.compile(r"<\?xml\b|<!DOCTYPE\b", re.IGNORECASE)
_xsd_cache: dict[str, xmlschema.XMLSchema] = {}


@dataclass(frozen=True)
class XmlResult:
    """The extracted XML text and the local name of its root element."""

    text: str
    root: str


class XmlInvalid(ValueError):
    """The answer is not acceptable XML; ``errors`` are ``{"path", "message"}`` entries."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(e["message"] for e in errors[:3]))
        self.errors = errors


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def compile_xsd(xsd: str) -> xmlschema.XMLSchema:
    """A cached schema for ``xsd``; raises :class:`InvalidParams` (path ``/responseFormat/xsd``)."""
    key = hashlib.sha256(xsd.encode("utf-8", "surrogatepass")).hexdigest()
    schema = _xsd_cache.get(key)
    if schema is None:
        try:
            schema = xmlschema.XMLSchema(xsd.strip(), defuse="always", allow="none")
        except Exception as exc:  # xmlschema raises many types for a bad XSD; none may crash us
            message = _short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise InvalidParams(
                f"invalid XSD: {message}", errors=[{"path": "/responseFormat/xsd", "message": message}]
            ) from None
        if len(_xsd_cache) > 64:
            _xsd_cache.clear()
        _xsd_cache[key] = schema
    return schema


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def _extract(text: str, root_element: str | None) -> str:
    """The outermost element (with any prolog right before it), prose and fences removed."""
    text = _THINK.sub("", text.lstrip("\ufeff").strip(), count=1).strip()
    fence = _FENCE.search(text)
    if fence is not None and "<" in fence.group(1):
        text = fence.group(1).strip()
    start = None
    for match in _START.finditer(text):
        if root_element is None or _local(match.group(1)) == _local(root_element):
            start = match
            break
    if start is None:
        if root_element is not None and _START.search(text):
            raise XmlInvalid([{"path": "", "message": f"expected a <{root_element}> root element"}])
        raise XmlInvalid([{"path": "", "message": "no XML element found in the answer"}])
    name = start.group(1)
    closes = list(re.finditer(rf"</{re.escape(name)}\s*>", text))
    end = closes[-1].end() if closes and closes[-1].start() > start.start() else -1
    if end < 0:
        self_close = text.find("/>", start.end())
        next_tag = text.find("<", start.end())
        end = self_close + 2 if self_close >= 0 and (next_tag < 0 or self_close < next_tag) else len(text)
    begin = start.start()
    prolog = _PROLOG.search(text, 0, begin)
    if prolog is not None:
        begin = prolog.start()
    return text[begin:end]


def _parse(xml: str) -> Element:
    try:
        root: Element = fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise XmlInvalid(
            [{"path": "", "message": f"unsafe XML rejected ({type(exc).__name__}): {_short(str(exc))}"}]
        ) from None
    except ParseError as exc:
        raise XmlInvalid([{"path": "", "message": f"XML is not well-formed: {_short(str(exc))}"}]) from None
    except Exception as exc:
        raise XmlInvalid([{"path": "", "message": f"XML could not be parsed: {_short(str(exc))}"}]) from None
    return root


def _xsd_errors(schema: xmlschema.XMLSchema, root: Element) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    try:
        for error in schema.iter_errors(root):
            path: Any = getattr(error, "path", None)
            message = str(error.reason or error.message)
            expected = getattr(error.validator, "prefixed_name", None)
            if str(error.message).startswith("failed decoding") and expected:
                message = f"{message} (expected a valid {expected})"
            errors.append({"path": str(path or ""), "message": _short(message)})
            if len(errors) >= _MAX_ERRORS:
                break
    except Exception as exc:
        errors.append({"path": "", "message": f"XSD validation failed: {_short(str(exc))}"})
    return errors


def check_xml(text: str, *, root_element: str | None = None, xsd: str | None = None) -> XmlResult:
    """Extract and check the XML in ``text``; raises :class:`XmlInvalid` (or
    :class:`InvalidParams` for an invalid ``xsd``)."""
    schema = compile_xsd(xsd) if xsd is not None else None
    xml = _extract(text, root_element)
    root = _parse(xml)
    name = _local(root.tag)
    if root_element is not None and name != _local(root_element):
        raise XmlInvalid(
            [{"path": "/" + name, "message": f"root element is <{name}>, expected <{root_element}>"}]
        )
    if schema is not None:
        errors = _xsd_errors(schema, root)
        if errors:
            raise XmlInvalid(errors)
    return XmlResult(xml, name)
