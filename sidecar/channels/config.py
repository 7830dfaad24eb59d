"""``model:get-config`` and ``model:set-config``: previews only, never a stored key."""

from __future__ import annotations

from typing import Any

from sidecar.core.config import ConfigManager
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import EmptyParams, SetConfigParams

__all__ = ["channels"]


def channels(manager: ConfigManager) -> list[Channel]:
    async def get_config(_params: EmptyParams, _ctx: RequestContext) -> dict[str, Any]:
        await manager.refresh()  # another sidecar on the same data dir may have written it
        return manager.preview()

    async def set_config(params: SetConfigParams, _ctx: RequestContext) -> dict[str, Any]:
        return await manager.patch(params.config)

    return [
        Channel("model:get-config", EmptyParams, get_config),
        Channel("model:set-config", SetConfigParams, set_config),
    ]
