"""``model:list-models``: every provider's models merged with the registry.

Providers are asked concurrently, each within a short deadline
(:class:`~sidecar.core.model_lists.ModelLister`); one that cannot be reached contributes
its configured models marked ``available: false`` and never fails the whole call.
Answers are cached for a minute unless ``refresh`` is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.core.model_lists import ModelLister
from sidecar.errors import InvalidParams
from sidecar.providers.base import Provider
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import ListModelsParams, ListModelsResult
from sidecar.wire.model import Capability, CostPer1k, ModelInfo

__all__ = ["channels"]

_CAPS = {c.value for c in Capability}


def channels(lister: ModelLister, provider_names: Callable[[], list[str]]) -> list[Channel]:
    pool, registry, stats = lister.pool, lister.registry, lister.stats

    def info(provider: Provider, model_id: str, available: bool) -> ModelInfo:
        profile = registry.profile(provider.settings, model_id)
        caps = set(provider.capabilities) | set(profile.capabilities)
        if profile.context_window >= 200_000:
            caps.add("long_context")
        reported = registry.reported_model(provider.name, model_id)
        return ModelInfo(
            id=model_id,
            name=(reported.display_name if reported and reported.display_name else model_id),
            provider=provider.name,
            contextWindow=profile.context_window,
            maxOutputTokens=profile.max_output_tokens,
            costPer1kTokens=CostPer1k(input=profile.input_per_1m / 1000, output=profile.output_per_1m / 1000)
            if profile.priced else None,
            capabilities=[Capability(c) for c in sorted(caps & _CAPS)],
            available=available and stats.available(provider.name),
            deprecated=True if profile.deprecated else None,
            version=registry.version(provider.name, model_id),
        )

    async def provider_models(provider: Provider) -> list[ModelInfo]:
        settings = provider.settings
        chat = await lister.fetch(provider)
        if chat is None:
            wanted = dict.fromkeys([settings.default_model, *settings.models])
            return [info(provider, model_id, False) for model_id in wanted]
        return [info(provider, m.id, True) for m in chat]

    async def list_models(params: ListModelsParams, _ctx: RequestContext) -> ListModelsResult:
        names = list(pool.settings())
        if params.provider is not None:
            if params.provider not in provider_names():
                raise InvalidParams(
                    f"unknown provider {params.provider!r}",
                    errors=[{"path": "/provider", "message": "unknown provider"}],
                )
            names = [params.provider] if params.provider in names else []
        providers = [p for n in names if (p := pool.get(n)) is not None]
        stale = [p for p in providers if lister.cached(p, refresh=params.refresh) is None]
        for provider, models in zip(stale, await asyncio.gather(*(provider_models(p) for p in stale)), strict=True):
            lister.remember(provider, models)
        return ListModelsResult(models=[m for p in providers for m in lister.cached(p, refresh=False) or ()])

    return [Channel("model:list-models", ListModelsParams, list_models)]
