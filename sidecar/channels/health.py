"""``model:health``: per provider, reachable or not, why, how fast, and its limits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidecar.core.config import redact_url
from sidecar.providers.base import Provider
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import (
    EmptyParams,
    HealthResult,
    LedgerHealth,
    LimiterState,
    ProviderHealth,
    ProviderRateLimit,
)

if TYPE_CHECKING:
    from sidecar.app import Services

__all__ = ["channels"]

PROBE_TIMEOUT_S = 3.0


def channels(services: Services) -> list[Channel]:
    async def probe(provider: Provider, in_flight: int) -> tuple[bool, str | None]:
        if provider.settings.kind in ("openai", "anthropic") and not provider.settings.api_key:
            return False, "no API key configured"
        if in_flight:
            # Serving our requests right now is the freshest answer; a single-slot local
            # server (llama-cpp-python) would queue the probe behind them, or worse.
            return services.stats.available(provider.name), None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                ok = await provider.is_available()
        except TimeoutError:
            return False, f"no answer within {PROBE_TIMEOUT_S:.0f} s"
        if ok:
            return True, None
        server = services.servers.server(provider.name)
        if server is not None and server.gave_up:
            return False, server.last_error
        why = services.servers.unavailable.get(provider.name)
        return False, (f"not reachable at {redact_url(provider.settings.base_url)}"
                       + (f"; the embedded model server cannot run here: {why}" if why else ""))

    async def health(_params: EmptyParams, _ctx: RequestContext) -> HealthResult:
        enabled = services.pool.settings()
        providers = [p for name in enabled if (p := services.pool.get(name)) is not None]
        limiters = services.limits.states()
        probes = await asyncio.gather(*(probe(p, limiters.get(p.name, {}).get("inFlight", 0)) for p in providers))
        result: dict[str, ProviderHealth] = {}
        for provider, (available, problem) in zip(providers, probes, strict=True):
            stats = services.stats.get(provider.name)
            snapshot = provider.last_rate_limit
            result[provider.name] = ProviderHealth(
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
                coolDownMs=services.stats.down_for_ms(provider.name),
                limiter=LimiterState.model_validate(limiters[provider.name]) if provider.name in limiters else None,
                modelLimiters={key.split("/", 1)[1]: LimiterState.model_validate(state)
                               for key, state in limiters.items()
                               if key.startswith(provider.name + "/")} or None,
                server=services.servers.health(provider.name),
            )
        for name in services.config.config.provider_names():
            if name not in result:
                result[name] = ProviderHealth(available=False, enabled=False, local=False,
                                              lastError="disabled in config")
        ledger = services.ledger.status()
        return HealthResult(providers=result, config=services.config.status(), ledger=LedgerHealth(
            status=ledger.status, path=str(ledger.path), problem=ledger.problem,
            movedAside=None if ledger.moved_aside is None else str(ledger.moved_aside), pending=ledger.pending))

    return [Channel("model:health", EmptyParams, health)]
