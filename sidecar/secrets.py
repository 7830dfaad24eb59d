"""API-key hygiene: previews for ``model:get-config`` and scrubbing of every output.

The :class:`Redactor` knows every key in use (from config and the environment) and
replaces it wherever it would leave the process: protocol lines, log lines, error
messages. Log lines are also scrubbed of anything shaped like a provider key.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = [
    "MIN_SECRET_LEN",
    "REDACTED",
    "Redactor",
    "StreamScrubber",
    "is_preview",
    "is_sensitive_header",
    "preview",
    "secret_variants",
]

REDACTED = "[redacted]"
_ELLIPSIS = "\u2026"
_KEY_SHAPE = re.compile(r"\b(sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{12,})")
_SENSITIVE_FIELD = re.compile(r"(api[_-]?key|authorization|secret|password|token$|x-api-key)", re.I)
#: Keys shorter than this are never shown in part, and are not scrubbed from output
#: either: a placeholder like "ollama" or "none" is no secret, and replacing such a short
#: string wherever it occurs would corrupt ordinary text and JSON keys.
_MIN_PREVIEW_LEN = 12
_NOT_VISIBLE = re.compile(r"[^\x21-\x7e]+")
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


def secret_variants(secrets: Iterable[str | None]) -> set[str]:
    """Every form of each secret worth scrubbing: as given, without surrounding whitespace
    (a key read from a file or an environment variable often ends in a newline; servers
    and libraries quote it without), and the parts between characters that are not
    visible ASCII. Short values are left out."""
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        # A character a header cannot carry comes back escaped (``\\x01``, ``\\n``) when
        # a server or library quotes the key: the runs around it are scrubbed on their own.
        for form in (secret, secret.strip(), *_NOT_VISIBLE.split(secret)):
            if len(form) >= MIN_SECRET_LEN:
                found.add(form)
    return found


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
            known.update(secret_variants(secrets))
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


class StreamScrubber:
    """Replaces secrets in a text that arrives in pieces, also across piece boundaries.

    ``feed`` returns what can be passed on now: the text so far with every whole secret
    replaced, minus the longest tail that is the beginning of a secret (held back until
    the next piece shows whether the secret follows). ``flush`` returns the held tail at
    the end. Ordinary text is never delayed; text ending in ``sk-`` is.
    """

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = tuple(sorted(secret_variants(secrets), key=len, reverse=True))
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._secrets:
            return text
        text = self._held + text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        hold = self._partial_tail(text)
        self._held = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest tail of ``text`` that a secret starts with."""
        longest = 0
        for secret in self._secrets:
            # Only tails longer than the longest found so far, and shorter than the secret.
            at = text.find(secret[0], max(0, len(text) - len(secret) + 1), len(text) - longest)
            while at != -1:
                if secret.startswith(text[at:]):
                    longest = len(text) - at
                    break
                at = text.find(secret[0], at + 1, len(text) - longest)
        return longest
