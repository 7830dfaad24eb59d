"""``model:health``: per provider, reachable or not, why, how fast, and its limits; the
config file's and the usage ledger's state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sidecar.core.config import ConfigManager, redact_url
from sidecar.core.pool import ProviderPool
from sidecar.core.ratelimit import LimiterBook
from sidecar.core.stats import StatsBook
from sidecar.errors import SidecarError
from sidecar.local import loaded
from sidecar.local.managed import ServerManager
from sidecar.providers.base import Provider
from sidecar.providers.http import probe_problem
from sidecar.providers.ollama import OllamaProvider
from sidecar.store.ledger import Ledger
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.kinds import KINDS
from sidecar.wire.methods import (
    EmptyParams,
    HealthResult,
    LedgerHealth,
    LimiterState,
    ProviderHealth,
    ProviderRateLimit,
)

__all__ = ["HealthSources", "channels"]

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class HealthSources:
    """What ``model:health`` reports on."""

    pool: ProviderPool
    stats: StatsBook
    limits: LimiterBook
    servers: ServerManager
    config: ConfigManager
    ledger: Ledger


def channels(sources: HealthSources) -> list[Channel]:
    async def health(_params: EmptyParams, _ctx: RequestContext) -> HealthResult:
        pool = sources.pool
        providers = [p for name in pool.settings() if (p := pool.get(name)) is not None]
        limiters = sources.limits.states()
        probes = await asyncio.gather(*(_probe(sources, p, limiters.get(p.name, {}).get("inFlight", 0))
                                        for p in providers))
        loads = await asyncio.gather(*(_loading(sources, p) for p in providers))
        result = {provider.name: _provider_health(sources, provider, problem, available, limiters).model_copy(
                      update=_state(available, loading))
                  for provider, (available, problem), loading in zip(providers, probes, loads, strict=True)}
        for name in sources.config.config.provider_names():
            if name not in result:
                result[name] = ProviderHealth(available=False, enabled=False, local=False,
                                              lastError="disabled in config")
        ledger = sources.ledger.status()
        return HealthResult(providers=result, config=sources.config.status(), ledger=LedgerHealth(
            status=ledger.status, path=str(ledger.path), problem=ledger.problem,
            movedAside=None if ledger.moved_aside is None else str(ledger.moved_aside), pending=ledger.pending))

    return [Channel("model:health", EmptyParams, health)]


async def _probe(sources: HealthSources, provider: Provider, in_flight: int) -> tuple[bool, str | None]:
    """Whether the provider answers now, and why not."""
    if KINDS[provider.settings.kind].needs_key and not provider.settings.api_key:
        return False, "no API key configured"
    if in_flight:
        # Serving our requests right now is the freshest answer; a single-slot local
        # server (llama-cpp-python) would queue the probe behind them, or worse.
        return sources.stats.available(provider.name), None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            ok = await provider.is_available()
    except TimeoutError:
        return False, f"no answer within {PROBE_TIMEOUT_S:.0f} s"
    if ok:
        return True, None
    server = sources.servers.server(provider.name)
    if server is not None and server.gave_up:
        return False, server.last_error
    explained = probe_problem(provider.client)  # a certificate or proxy problem, named
    if explained is not None:
        return False, f"{provider.name}: {explained}"
    why = sources.servers.unavailable.get(provider.name)
    return False, (f"not reachable at {redact_url(provider.settings.base_url)}"
                   + (f"; the embedded model server cannot run here: {why}" if why else ""))


async def _loading(sources: HealthSources, provider: Provider) -> list[str]:
    """The models ``provider`` is loading now: a managed server starting loads its default
    model; Ollama loads a model that a request or a preload of ours waits for and that
    ``/api/ps`` does not list yet."""
    server = sources.servers.server(provider.name)
    if server is not None and server.state == "starting":
        return [provider.settings.default_model]
    waiting = sorted(model for (name, model) in loaded.pending if name == provider.name)
    if not waiting or not isinstance(provider, OllamaProvider):
        return []
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            running = await provider.running_models()
    except (SidecarError, TimeoutError):
        return []  # cannot tell loading from generating
    return [m for m in waiting if m not in running and (":" in m or m + ":latest" not in running)]


def _state(available: bool, loading: list[str]) -> dict[str, Any]:
    if loading:
        return {"state": "loading", "loading_models": loading}
    return {"state": "ready" if available else "down"}


def _provider_health(sources: HealthSources, provider: Provider, problem: str | None, available: bool,
                     limiters: dict[str, dict[str, Any]]) -> ProviderHealth:
    stats = sources.stats.get(provider.name)
    snapshot = provider.last_rate_limit
    return ProviderHealth(
        available=available,
        enabled=True,
        local=provider.settings.local,
        lastError=problem or stats.last_error,
        latencyMsP50=stats.latency_p50(),
        errorRate=stats.error_rate(),
        rateLimit=ProviderRateLimit(
            remainingRequests=snapshot.remaining_requests,
            remainingTokens=snapshot.remaining_tokens,
            resetRequestsMs=snapshot.reset_requests_ms,
            resetTokensMs=snapshot.reset_tokens_ms,
        ) if snapshot else None,
        coolDownMs=sources.stats.down_for_ms(provider.name),
        limiter=LimiterState.model_validate(limiters[provider.name]) if provider.name in limiters else None,
        modelLimiters={key.split("/", 1)[1]: LimiterState.model_validate(state)
                       for key, state in limiters.items()
                       if key.startswith(provider.name + "/")} or None,
        server=sources.servers.health(provider.name),
        insecureSkipVerify=True if provider.settings.insecure_skip_verify else None,
        proxy=redact_url(provider.settings.proxy) if provider.settings.proxy else None,
    )
