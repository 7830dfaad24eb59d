"""API-key hygiene: previews for ``model:get-config`` and scrubbing of every output.

The :class:`Redactor` knows every key in use (from config and the environment) and
replaces it wherever it would leave the process: protocol lines, log lines, error
messages. Log lines are also scrubbed of anything shaped like a provider key.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson

__all__ = ["MIN_SECRET_LEN", "REDACTED", "Redactor", "is_preview", "is_sensitive_header", "preview"]

REDACTED = "[redacted]"
_ELLIPSIS = "\u2026"
_KEY_SHAPE = re.compile(r"\b(sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{12,})")
_SENSITIVE_FIELD = re.compile(r"(api[_-]?key|authorization|secret|password|token$|x-api-key)", re.I)
#: Keys shorter than this are never shown in part, and are not scrubbed from output
#: either: a placeholder like "ollama" or "none" is no secret, and replacing such a short
#: string wherever it occurs would corrupt ordinary text and JSON keys.
_MIN_PREVIEW_LEN = 12
MIN_SECRET_LEN = _MIN_PREVIEW_LEN


def preview(key: str) -> str:
    """``"sk-…abcd"``: the first three and last four characters, or just ``"…"``."""
    if len(key) < _MIN_PREVIEW_LEN:
        return _ELLIPSIS
    return f"{key[:3]}{_ELLIPSIS}{key[-4:]}"


def is_sensitive_header(name: str) -> bool:
    """Whether a configured header carries a credential (previewed and scrubbed like a key)."""
    lowered = name.lower()
    return any(word in lowered for word in ("auth", "key", "token", "secret", "cookie"))


def is_preview(value: str) -> bool:
    """Whether a string sent back by a host is a redacted preview, not a new key."""
    return _ELLIPSIS in value


class Redactor:
    """Replaces known secrets in text, bytes and structures. Thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._needles: tuple[tuple[bytes, bytes], ...] = ()

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            known = set(self._secrets)
            known.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)
            # Longest first, so a key that contains another is replaced whole.
            self._secrets = tuple(sorted(known, key=len, reverse=True))
            needles = []
            for secret in self._secrets:
                raw = secret.encode("utf-8")
                needles.append((raw, REDACTED.encode()))
                escaped = orjson.dumps(secret)[1:-1]
                if escaped != raw:
                    needles.append((escaped, REDACTED.encode()))
            self._needles = tuple(needles)

    def scrub_bytes(self, data: bytes) -> bytes:
        for needle, replacement in self._needles:
            if needle in data:
                data = data.replace(needle, replacement)
        return data

    def scrub_text(self, text: str, *, shapes: bool = False) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if shapes and "sk-" in text:
            text = _KEY_SHAPE.sub(REDACTED, text)
        return text

    def scrub(self, value: Any, *, shapes: bool = False) -> Any:
        """Scrub a JSON-like structure; values of key-like fields are dropped entirely."""
        if isinstance(value, str):
            return self.scrub_text(value, shapes=shapes)
        if isinstance(value, dict):
            return {
                k: (REDACTED if isinstance(k, str) and _SENSITIVE_FIELD.search(k) and v else
                    self.scrub(v, shapes=shapes))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub(v, shapes=shapes) for v in value]
        return value
