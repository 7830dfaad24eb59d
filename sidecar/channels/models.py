"""``model:list-models``: every provider's models merged with the registry.

Providers are asked concurrently, each within a short deadline; one that cannot be
reached contributes its configured models marked ``available: false`` and never fails
the whole call. Answers are cached for a minute unless ``refresh`` is set.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from sidecar.errors import InvalidParams, NetworkError, SidecarError
from sidecar.providers.base import Provider, ProviderModel
from sidecar.providers.http import LocalServerDown
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import ListModelsParams, ListModelsResult
from sidecar.wire.model import Capability, CostPer1k, ModelInfo

if TYPE_CHECKING:
    from sidecar.app import Services

__all__ = ["channels", "fetch_models", "refresh_local_models"]

CACHE_TTL_S = 60.0
LIST_TIMEOUT_S = 5.0
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


async def _with_details(provider: Provider, models: list[ProviderModel]) -> list[ProviderModel]:
    """Ollama's /api/tags has no context window: ask /api/show for each (concurrently)."""

    async def detail(model: ProviderModel) -> ProviderModel:
        try:
            shown = await provider.get_model_info(model.id)
        except SidecarError:
            return model
        if shown is None:
            return model
        return replace(shown, version=shown.version or model.version)

    return list(await asyncio.gather(*(detail(m) for m in models)))


async def fetch_models(services: Services, provider: Provider, *,
                       note_unreachable: bool = False) -> list[ProviderModel] | None:
    """Ask a provider for its chat models and tell the registry; None if unreachable.

    With ``note_unreachable`` (the start-up refresh), a provider that cannot be reached
    starts its cool-down as a failed request would, so the first requests do not try
    a local server that is not running before the ones that are.
    """
    try:
        async with asyncio.timeout(LIST_TIMEOUT_S):
            reported = await provider.list_models()
            chat = [m for m in reported if _is_chat_model(provider, m.id)]
            if provider.settings.kind == "ollama":
                chat = await _with_details(provider, chat)
    except (SidecarError, TimeoutError) as exc:
        unreachable = isinstance(exc, TimeoutError | NetworkError | LocalServerDown)
        if note_unreachable and unreachable:
            kind = exc.type if isinstance(exc, SidecarError) else "NetworkError"
            services.stats.failure(provider.name, kind,
                                   str(exc) or f"no answer within {LIST_TIMEOUT_S:.0f} s", provider_wide=True)
        return None
    services.registry.report(provider.name, chat)
    return chat


async def refresh_local_models(services: Services) -> None:
    """At start-up: learn local models' real windows (``/api/show``, ``n_ctx_train``)
    before the first request needs them; remote providers are not contacted."""
    providers = [p for name in services.pool.settings() if (p := services.pool.get(name)) and p.is_local]
    await asyncio.gather(*(fetch_models(services, p, note_unreachable=True) for p in providers))


def channels(services: Services) -> list[Channel]:
    #: name → (when, the provider object asked, its models); a provider replaced by a
    #: config change is a different object, so its old answer is never served.
    cache: dict[str, tuple[float, Provider, list[ModelInfo]]] = {}
    services.forget_models = lambda name: cache.pop(name, None)  # model:pull added one

    def info(provider: Provider, model_id: str, available: bool) -> ModelInfo:
        profile = services.registry.profile(provider.settings, model_id)
        caps = set(provider.capabilities) | set(profile.capabilities)
        if profile.context_window >= 200_000:
            caps.add("long_context")
        reported = services.registry.reported_model(provider.name, model_id)
        return ModelInfo(
            id=model_id,
            name=(reported.display_name if reported and reported.display_name else model_id),
            provider=provider.name,
            contextWindow=profile.context_window,
            maxOutputTokens=profile.max_output_tokens,
            costPer1kTokens=CostPer1k(input=profile.input_per_1m / 1000, output=profile.output_per_1m / 1000)
            if profile.priced else None,
            capabilities=[Capability(c) for c in sorted(caps & _CAPS)],
            available=available and services.stats.available(provider.name),
            deprecated=True if profile.deprecated else None,
            version=services.registry.version(provider.name, model_id),
        )

    async def provider_models(provider: Provider) -> list[ModelInfo]:
        settings = provider.settings
        chat = await fetch_models(services, provider)
        if chat is None:
            wanted = dict.fromkeys([settings.default_model, *settings.models])
            return [info(provider, model_id, False) for model_id in wanted]
        return [info(provider, m.id, True) for m in chat]

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
