"""``sidecar:shutdown``: answer ``{}`` once every other request has been answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import EmptyParams, EmptyResult, RequestId

__all__ = ["SHUTDOWN", "channels"]

SHUTDOWN = "sidecar:shutdown"


def channels(begin_shutdown: Callable[[RequestId], Awaitable[None]]) -> list[Channel]:
    """``begin_shutdown(keep)`` stops accepting and cancels every request but ``keep``."""

    async def shutdown(_params: EmptyParams, ctx: RequestContext) -> EmptyResult:
        await begin_shutdown(ctx.request_id)
        return EmptyResult()

    return [Channel(SHUTDOWN, EmptyParams, shutdown)]
