"""``model:list-models``: every provider's models merged with the catalog.

Providers are asked concurrently, each within a short deadline; one that cannot be
reached contributes its configured models marked ``available: false`` and never fails
the whole call. Answers are cached for a minute unless ``refresh`` is set.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from sidecar.errors import InvalidParams, SidecarError
from sidecar.providers.base import Provider, ProviderModel
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import ListModelsParams, ListModelsResult
from sidecar.wire.model import Capability, CostPer1k, ModelInfo

if TYPE_CHECKING:
    from sidecar.app import Services

__all__ = ["channels"]

CACHE_TTL_S = 60.0
LIST_TIMEOUT_S = 5.0
#: Used when neither the provider nor the catalog knows a model's window.
UNKNOWN_CONTEXT_WINDOW = 4096
_OPENAI_NON_CHAT = ("audio", "realtime", "tts", "transcribe", "image", "embedding", "moderation",
                    "whisper", "dall-e", "davinci", "babbage", "search")
_CAPS = {c.value for c in Capability}


def _is_chat_model(provider: Provider, model_id: str) -> bool:
    # OpenAI's /v1/models lists every model of the account (speech, images, embeddings):
    # keep the chat ones. Other providers list chat models only.
    if provider.settings.kind != "openai":
        return True
    lowered = model_id.lower()
    chat_family = lowered.startswith(("gpt-", "o1", "o3", "o4", "chatgpt"))
    return chat_family and not any(word in lowered for word in _OPENAI_NON_CHAT)


def channels(services: Services) -> list[Channel]:
    #: name → (when, the provider object asked, its models); a provider replaced by a
    #: config change is a different object, so its old answer is never served.
    cache: dict[str, tuple[float, Provider, list[ModelInfo]]] = {}

    def info(provider: Provider, reported: ProviderModel | None, model_id: str, available: bool) -> ModelInfo:
        settings = provider.settings
        entry = services.catalog.lookup(settings.kind, model_id)
        caps = set(provider.capabilities) | (set(entry.capabilities) if entry else set())
        if reported is not None:
            caps |= set(reported.capabilities)
        if settings.local:
            caps.add("local")
        window = (reported.context_window if reported else None) or (entry.context_window if entry else None)
        if window and window >= 200_000:
            caps.add("long_context")
        cost = CostPer1k(input=0.0, output=0.0) if settings.local else (
            CostPer1k(input=entry.input_per_1m / 1000, output=entry.output_per_1m / 1000) if entry else None
        )
        return ModelInfo(
            id=model_id,
            name=(reported.display_name if reported and reported.display_name else model_id),
            provider=settings.name,
            contextWindow=window or UNKNOWN_CONTEXT_WINDOW,
            maxOutputTokens=(reported.max_output_tokens if reported else None)
            or (entry.max_output_tokens if entry else None),
            costPer1kTokens=cost,
            capabilities=[Capability(c) for c in sorted(caps & _CAPS)],
            available=available,
            deprecated=True if entry is not None and entry.deprecated else None,
        )

    async def provider_models(provider: Provider) -> list[ModelInfo]:
        settings = provider.settings
        try:
            async with asyncio.timeout(LIST_TIMEOUT_S):
                reported = await provider.list_models()
        except (SidecarError, TimeoutError):
            wanted = dict.fromkeys([settings.default_model, *settings.models])
            return [info(provider, None, model_id, False) for model_id in wanted]
        by_id = {m.id: m for m in reported if _is_chat_model(provider, m.id)}
        return [info(provider, model, model_id, True) for model_id, model in by_id.items()]

    async def list_models(params: ListModelsParams, _ctx: RequestContext) -> ListModelsResult:
        pool = services.pool
        names = list(pool.settings())
        if params.provider is not None:
            if params.provider not in services.config.config.provider_names():
                raise InvalidParams(
                    f"unknown provider {params.provider!r}",
                    errors=[{"path": "/provider", "message": "unknown provider"}],
                )
            names = [params.provider] if params.provider in names else []
        now = time.monotonic()

        def stale(name: str, provider: Provider) -> bool:
            entry = cache.get(name)
            return params.refresh or entry is None or entry[1] is not provider or now - entry[0] > CACHE_TTL_S

        providers = [p for n in names if (p := pool.get(n)) is not None and stale(n, p)]
        fresh = await asyncio.gather(*(provider_models(p) for p in providers))
        for provider, models in zip(providers, fresh, strict=True):
            cache[provider.name] = (now, provider, models)
        return ListModelsResult(models=[m for n in names if n in cache for m in cache[n][2]])

    return [Channel("model:list-models", ListModelsParams, list_models)]
