"""Loopback fake LLM provider servers for the sidecar's tests.

`FakeServer` speaks the OpenAI, Anthropic, Ollama or llama.cpp wire protocol on
127.0.0.1 (as recorded in ``reference/wire-reference.md``), records every request
and answers chat requests from a script of behaviours (`Reply`, `Error`, `Hang`,
`CutStream`, `Drip`, `MidStreamError`, `Raw`, `Malformed`, `Flood`, and `Cycle`
for a flapping provider). See README.md.
"""

from __future__ import annotations

from .behaviours import (
    DEFAULT_TEXT,
    Behaviour,
    CutStream,
    Cycle,
    Drip,
    Error,
    FakeToolCall,
    Flood,
    Hang,
    Malformed,
    MidStreamError,
    Raw,
    Reply,
)
from .recording import RecordedRequest
from .render_openai import mask_key
from .server import DEFAULT_MODELS, KINDS, FakeServer, refusing_port, self_signed_context

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TEXT",
    "KINDS",
    "Behaviour",
    "CutStream",
    "Cycle",
    "Drip",
    "Error",
    "FakeServer",
    "FakeToolCall",
    "Flood",
    "Hang",
    "Malformed",
    "MidStreamError",
    "Raw",
    "RecordedRequest",
    "Reply",
    "mask_key",
    "refusing_port",
    "self_signed_context",
]
