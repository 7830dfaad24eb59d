"""Bounds on what a provider may send, and the clean-up of the text it streams.

A broken or hostile server can send a line that never ends, a body of any size, far more
text than ``maxTokens`` asked for, half of a UTF-16 surrogate pair per event, or the API
key back in pieces. Everything here is per answer and costs O(1) per received byte:

* :class:`AnswerGuard` takes the text pieces of one answer, joins surrogate pairs split
  across events, scrubs the provider's secrets (also when a key is split across pieces),
  counts the answer's size and its output tokens, and says when to stop.
* :data:`DEFAULT_MAX_RESPONSE_BYTES` bounds one SSE line or event, one NDJSON line, one
  non-streamed body and the text of one answer (config ``maxResponseBytes``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from sidecar.errors import ModelError
from sidecar.secrets import StreamScrubber

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ERROR_BODY_BYTES",
    "OUTPUT_TOKEN_SLACK",
    "AnswerGuard",
    "SurrogateJoiner",
    "output_token_ceiling",
    "oversized",
]

#: One line/event, one body, one answer's text: 8 MiB is ~16 times the longest answer a
#: current model can give (128k output tokens of ~4 bytes), and keeps every stdout line
#: the sidecar writes a few MiB at most.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: An error body is only read for its message: the first 64 KiB are plenty.
ERROR_BODY_BYTES = 64 * 1024
#: Output tokens allowed beyond twice ``maxTokens`` before the answer is cut.
OUTPUT_TOKEN_SLACK = 128
#: Tokens are counted as :func:`sidecar.core.tokens.estimate_text` counts them: one per
#: 3 UTF-8 bytes, which errs high (English and code run ~4 bytes a token).
_BYTES_PER_TOKEN = 3

_HIGH_SURROGATE = re.compile("[\ud800-\udbff]$")
_SURROGATE = re.compile("[\ud800-\udfff]")


def output_token_ceiling(max_tokens: int | None) -> int | None:
    """Estimated output tokens after which an answer is cut: ``2 * maxTokens + 128``.

    The margin keeps an honest server, whose tokens our estimate counts up to ~1.5 times,
    well clear of the cut; a server ignoring ``maxTokens`` is stopped near it.
    """
    return None if max_tokens is None else 2 * max_tokens + OUTPUT_TOKEN_SLACK


def oversized(provider: str, model: str | None, what: str, limit: int) -> ModelError:
    """The error of a response that passed a size bound (retrying sends the same)."""
    return ModelError(
        f"{provider}: the provider sent an oversized response ({what} over {limit} bytes)",
        provider=provider, model_id=model, retryable=False,
    )


class SurrogateJoiner:
    """Joins UTF-16 surrogate pairs split across pieces; lone halves become U+FFFD.

    ``orjson`` refuses a lone surrogate escape, so a payload carrying one is parsed by
    the standard library (see :func:`sidecar.providers.framing.loads_body`), which keeps it
    as a lone code point. A server that cuts its text by UTF-16 units (as JavaScript's
    ``String.slice`` does) sends ``"\\ud83d"`` at the end of one delta and ``"\\ude00"``
    at the start of the next.
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        if _HIGH_SURROGATE.search(text):
            self._held, text = text[-1], text[:-1]
        return _fix_surrogates(text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return _fix_surrogates(held)


def _fix_surrogates(text: str) -> str:
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class AnswerGuard:
    """The text pieces of one answer, cleaned and counted (see the module docstring).

    ``feed`` returns the text to pass on now (possibly empty: a piece that may be the
    start of a secret is held back until the next piece or ``flush``). It raises
    :class:`ModelError` once the answer's text passes ``max_bytes``; ``cut`` turns true
    once it passes the output-token ceiling, and the caller ends the answer there with
    ``finish_reason="length"``.
    """

    def __init__(self, *, provider: str, model: str | None, secrets: Iterable[str | None],
                 max_bytes: int, max_tokens: int | None) -> None:
        self._provider = provider
        self._model = model
        self._joiner = SurrogateJoiner()
        self._scrubber = StreamScrubber(secrets)
        self._max_bytes = max_bytes
        ceiling = output_token_ceiling(max_tokens)
        self._max_output_bytes = None if ceiling is None else ceiling * _BYTES_PER_TOKEN
        self.received_bytes = 0
        self.cut = False

    @property
    def output_tokens(self) -> int:
        """Estimated output tokens received so far."""
        return math.ceil(self.received_bytes / _BYTES_PER_TOKEN)

    def feed(self, text: str) -> str:
        text = self._joiner.feed(text)
        self.received_bytes += len(text.encode("utf-8"))
        if self.received_bytes > self._max_bytes:
            raise oversized(self._provider, self._model, "answer text", self._max_bytes)
        if self._max_output_bytes is not None and self.received_bytes > self._max_output_bytes:
            self.cut = True
        return self._scrubber.feed(text)

    def flush(self) -> str:
        """What is still held back; call once, when the answer ends (or fails)."""
        return self._scrubber.feed(self._joiner.flush()) + self._scrubber.flush()

    def whole(self, text: str) -> str:
        """A non-streamed answer's text: the same checks, truncated at the token ceiling."""
        out = self.feed(text) + self.flush()
        if self.cut and self._max_output_bytes is not None:
            out = out.encode("utf-8")[: self._max_output_bytes].decode("utf-8", "ignore")
        return out
