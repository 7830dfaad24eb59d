"""``model:usage``: spend today and this month, limits, remaining, per provider and model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import EmptyParams

if TYPE_CHECKING:
    from sidecar.app import Services

__all__ = ["channels"]


def channels(services: Services) -> list[Channel]:
    async def usage(_params: EmptyParams, _ctx: RequestContext) -> dict[str, Any]:
        return await services.budget.usage()

    return [Channel("model:usage", EmptyParams, usage)]
