"""``sidecar:shutdown``: answer ``{}`` once every other request has been answered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import EmptyParams, EmptyResult

if TYPE_CHECKING:
    from sidecar.app import Services

__all__ = ["channels"]


def channels(services: Services) -> list[Channel]:
    async def shutdown(_params: EmptyParams, ctx: RequestContext) -> EmptyResult:
        await services.begin_shutdown(keep=ctx.request_id)
        return EmptyResult()

    return [Channel("sidecar:shutdown", EmptyParams, shutdown)]
