"""``model:discover``: the local model servers running on this machine.

The probes are :func:`sidecar.local.discovery.discover`'s; this channel only says which
of the servers an enabled provider entry already points at. Nothing is written: the
host decides what to add to the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import structlog

from sidecar.core.pool import ProviderPool
from sidecar.local.discovery import DEFAULT_PORTS, PORTS_ENV, FoundServer, PortSpec, discover, parse_ports
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import is_loopback_url
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import DiscoveredServer, DiscoverResult, EmptyParams

__all__ = ["channels", "configured_port", "ports_to_probe"]

log = structlog.get_logger("sidecar.discovery")


def ports_to_probe(env: Mapping[str, str]) -> tuple[PortSpec, ...]:
    """:data:`PORTS_ENV` when it is set and valid, else the usual ports (a bad value is logged)."""
    value = env.get(PORTS_ENV)
    if value is None:
        return DEFAULT_PORTS
    try:
        return parse_ports(value)
    except ValueError as exc:
        log.warning("discover_ports_ignored", reason=str(exc))
        return DEFAULT_PORTS


def configured_port(settings: ProviderSettings) -> int | None:
    """The loopback port a provider entry points at; None for a remote or odd URL."""
    if not is_loopback_url(settings.base_url):
        return None
    try:
        parts = urlsplit(settings.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None


def _entry_for(server: FoundServer, entries: list[ProviderSettings]) -> str | None:
    """The provider pointing at ``server``; an Ollama entry wins for an Ollama server."""
    matches = [s for s in entries if configured_port(s) == server.port]
    matches.sort(key=lambda s: (s.kind == "ollama") != (server.kind == "ollama"))
    return matches[0].name if matches else None


def channels(pool: ProviderPool, env: Mapping[str, str]) -> list[Channel]:
    """``env``: the sidecar's environment (:data:`PORTS_ENV` replaces the usual ports)."""

    async def discover_servers(_params: EmptyParams, _ctx: RequestContext) -> DiscoverResult:
        found = await discover(ports_to_probe(env))
        entries = list(pool.settings().values())
        servers = []
        for server in found:
            provider = _entry_for(server, entries)
            servers.append(DiscoveredServer(kind=server.kind, baseURL=server.base_url, models=list(server.models),
                                            configured=provider is not None, provider=provider))
        return DiscoverResult(servers=servers)

    return [Channel("model:discover", EmptyParams, discover_servers)]
