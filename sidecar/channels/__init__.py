"""Channels: one thin handler per protocol method, calling services, no wire framing.

:func:`build_channels` is the method table; its keys are the ``channels`` list that
``sidecar:ready`` announces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.channels import config, discover, generate, health, lifecycle, models, pull, select, usage
from sidecar.transport.dispatcher import Channel

if TYPE_CHECKING:
    from sidecar.app import Services

__all__ = ["build_channels"]


def build_channels(services: Services) -> dict[str, Channel]:
    table: list[Channel] = [
        *generate.channels(services),
        *models.channels(services),
        *select.channels(services),
        *usage.channels(services),
        *config.channels(services),
        *health.channels(services),
        *lifecycle.channels(services),
        *discover.channels(services),
        *pull.channels(services),
    ]
    return {channel.name: channel for channel in table}
