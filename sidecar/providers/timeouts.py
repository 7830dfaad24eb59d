"""The time limits of one attempt, from its provider entry.

``timeoutMs`` bounds the silence between two stream chunks, and a non-streamed call of a
remote provider as a whole. ``firstTokenTimeoutMs`` bounds the wait for the first chunk,
which on a local server may include loading the model: Ollama loads a model on the first
request for it, a managed server loads it when it starts. A non-streamed call waits for
the load and then the whole answer: it gets both.
"""

from __future__ import annotations

import dataclasses

from sidecar.providers.base import ProviderSettings

__all__ = ["DEFAULT_TIMEOUT_MS", "LOCAL_FIRST_TOKEN_S", "Timeouts", "timeouts"]

#: ``timeoutMs`` when the provider entry sets none.
DEFAULT_TIMEOUT_MS = 120_000
#: The first-token timeout of a local provider without ``firstTokenTimeoutMs`` (at least
#: its ``timeoutMs``): a model load takes seconds to minutes with the model and the disk.
LOCAL_FIRST_TOKEN_S = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """The time limits of one attempt, in seconds."""

    #: Streaming: until the first delta (a model load included).
    first: float
    #: Streaming: the longest silence between two deltas after the first (``timeoutMs``).
    silence: float
    #: Not streaming: the whole answer (a load, then the generation); also the longest
    #: single read of the HTTP client, which never cuts an attempt shorter.
    whole: float


def timeouts(settings: ProviderSettings) -> Timeouts:
    """The limits for ``settings``' provider (see the module docstring)."""
    silence = (settings.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
    if settings.first_token_timeout_ms is not None:
        first = settings.first_token_timeout_ms / 1000
    elif settings.local:
        first = max(silence, LOCAL_FIRST_TOKEN_S)
    else:
        return Timeouts(silence, silence, silence)
    return Timeouts(first, silence, first + silence)
