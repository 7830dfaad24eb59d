"""The router: runs a :class:`~sidecar.core.planner.Decision` as provider attempts.

An attempt passes through small layers, each one concern, each in its own module of
:mod:`sidecar.core.routing` (read them in this order, outside in):

* :mod:`~sidecar.core.routing.chain`: the decision's candidates in order, within the
  request's ``deadlineMs``; which error a failed request ends with.
* :mod:`~sidecar.core.routing.retry`: the attempts on one candidate, backoff, and
  whether a failure may move on to the next candidate (never after a stream sent
  text, unless ``fallbackMidStream``).
* :mod:`~sidecar.core.routing.admission`: the rate limiters admit the attempt.
* :mod:`~sidecar.core.routing.billing`: the attempt's worst case is reserved, then
  settled to what was really used.
* :mod:`~sidecar.core.routing.attempt`: the provider call itself, its timeout, and the
  stream pump to the host.

The router knows nothing of HTTP: it sees providers and typed errors only. Structured
output (:mod:`sidecar.structured.enforcer`) wraps the router, never patches its result.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sidecar.core.planner import Decision, Planner
from sidecar.core.pool import ProviderPool
from sidecar.core.routing.admission import MAX_RETRY_WAIT_MS, Admitted, Limits
from sidecar.core.routing.attempt import ProviderCall, to_provider_request
from sidecar.core.routing.billing import Billed, Budget
from sidecar.core.routing.chain import FallbackChain
from sidecar.core.routing.retry import Retrying
from sidecar.core.routing.state import Outcome, Run, Shape, StreamSink, StreamState
from sidecar.core.stats import StatsBook
from sidecar.wire.config import ModelConfig
from sidecar.wire.model import ModelRequest, ModelSelection

__all__ = [
    "MAX_RETRY_WAIT_MS",
    "Budget",
    "Limits",
    "Outcome",
    "Router",
    "Shape",
    "StreamSink",
    "to_provider_request",
]


#: The deadline shared by the routed calls of one request (see :meth:`Router.one_deadline`).
_REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)


class Router:
    """Runs decisions: the layers above, composed once."""

    def __init__(
        self,
        pool: ProviderPool,
        config: Callable[[], ModelConfig],
        stats: StatsBook,
        planner: Planner,
        *,
        budget: Budget | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.pool = pool
        self._config = config
        self.stats = stats
        self.planner = planner
        self._clock = clock
        call = Admitted(Billed(ProviderCall(pool, clock, lambda: config().max_response_bytes), budget), limits,
                        clock)
        retrying = Retrying(call, pool, stats, clock=clock, sleep=sleep, rand=rand)
        self._chain = FallbackChain(retrying, clock)

    @contextmanager
    def one_deadline(self) -> Iterator[None]:
        """Every routed call inside the block shares one ``deadlineMs``, counted from now:
        structured output routes one request several times (retries with feedback), and
        the deadline bounds them together."""
        token = _REQUEST_DEADLINE.set(self._clock() + self._config().deadline_ms / 1000)
        try:
            yield
        finally:
            _REQUEST_DEADLINE.reset(token)

    def select_provider(self, request: ModelRequest, selection: ModelSelection | None) -> Decision:
        """The decision for ``request``: first candidate, fallbacks, reasons (no call made)."""
        return self.planner.decide(request, selection)

    async def generate(self, request: ModelRequest, decision: Decision, *, tag: str = "",
                       shape: Shape | None = None) -> Outcome:
        """Run ``decision`` without streaming (``shape`` adapts each attempt's request)."""
        return await self._route(request, decision, None, tag, shape)

    async def stream(self, request: ModelRequest, decision: Decision, sink: StreamSink, *, tag: str = "",
                     shape: Shape | None = None) -> Outcome:
        """Run ``decision``, passing every text delta to ``sink`` as it arrives."""
        return await self._route(request, decision, StreamState(sink), tag, shape)

    async def _route(self, request: ModelRequest, decision: Decision, stream: StreamState | None,
                     tag: str, shape: Shape | None) -> Outcome:
        cfg = self._config()
        started = self._clock()
        if stream is not None:
            stream.started = started
        deadline = _REQUEST_DEADLINE.get()
        if deadline is None:
            deadline = started + cfg.deadline_ms / 1000
        run = Run(request, decision, stream, tag, deadline, shape)
        outcome = await self._chain.run(run, cfg, started)
        self.planner.registry.note_served(outcome.candidate.provider, outcome.candidate.model,
                                          outcome.completion.model)
        return outcome
