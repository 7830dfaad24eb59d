"""What the routing layers share: the run of one request and the try of one attempt.

A :class:`Run` is created once per routed request and read by every layer; it gathers
the attempt records and errors the chain decides on. A :class:`Try` is one attempt on
one candidate: the layers below retry (admission, billing, the call itself) fill it in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.core.planner import Decision
from sidecar.core.registry import ModelProfile
from sidecar.errors import AttemptRecord, BudgetExceededError, ProviderError
from sidecar.providers.base import Completion, Provider, ProviderRequest, ToolCallDelta
from sidecar.wire.model import ModelRequest

__all__ = ["Call", "Outcome", "Run", "Shape", "StreamSink", "StreamState", "Try"]

#: ``shape(candidate, request) -> request``: per-candidate changes to the provider request.
Shape = Callable[[ModelProfile, ProviderRequest], ProviderRequest]


class StreamSink(Protocol):
    """Where a stream's pieces go: text, tool-call deltas, or a restart marker."""

    async def __call__(self, content: str, model: str | None, *, restart: bool = False,
                       tool_calls: tuple[ToolCallDelta, ...] = ()) -> None: ...


@dataclass(slots=True)
class StreamState:
    """Where a streamed request stands towards the host."""

    sink: StreamSink
    sent_any: bool = False
    started: float = 0.0
    first_chunk_at: float | None = None
    #: A fallback after text went out: the next text is preceded by a restart chunk.
    needs_restart: bool = False


@dataclass(slots=True)
class Run:
    """One routed request: its inputs, and the record the fallback chain keeps."""

    request: ModelRequest
    decision: Decision
    stream: StreamState | None
    tag: str
    deadline: float
    shape: Shape | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    errors: list[ProviderError] = field(default_factory=list)
    #: Providers attempted at least once, and those that failed as a whole.
    tried: set[str] = field(default_factory=set)
    failed_wide: set[str] = field(default_factory=set)
    #: The budget's refusal, if a candidate was skipped for it.
    budget_error: BudgetExceededError | None = None


@dataclass(slots=True)
class Try:
    """One attempt on one candidate."""

    candidate: ModelProfile
    provider: Provider
    #: The last candidate of the chain waits for admission as long as the deadline allows.
    last: bool = True
    #: Text (and tool-call arguments) this attempt has produced so far (a cut stream is billed for it).
    produced: list[str] = field(default_factory=list)
    #: Tokens the attempt really used, once known (corrects the limiter's window).
    used_tokens: int | None = None
    #: When the provider call itself began (after admission and reservation).
    started_at: float | None = None
    #: What the attempt was billed (estimated when the server reported no usage).
    cost_usd: float | None = None


class Call(Protocol):
    """One layer of an attempt: admission → billing → the provider call."""

    async def __call__(self, run: Run, attempt: Try) -> Completion: ...


@dataclass(slots=True)
class Outcome:
    """A successful routed call, with everything the response metadata needs."""

    completion: Completion
    candidate: ModelProfile
    attempts: list[AttemptRecord]
    latency_ms: float
    ttft_ms: float | None
    cost_usd: float
    decision: Decision
