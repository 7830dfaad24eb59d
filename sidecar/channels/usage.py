"""``model:usage``: spend today and this month, limits, remaining, per provider and model."""

from __future__ import annotations

from typing import Any

from sidecar.core.budget import BudgetManager
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import EmptyParams

__all__ = ["channels"]


def channels(budget: BudgetManager) -> list[Channel]:
    async def usage(_params: EmptyParams, _ctx: RequestContext) -> dict[str, Any]:
        return await budget.usage()

    return [Channel("model:usage", EmptyParams, usage)]
