"""What each provider says it serves, asked with a deadline and told to the registry.

:class:`ModelLister` asks one provider for its chat models (``model:list-models``,
``model:pull`` after a download, and the start-up refresh of local servers), keeps the
answers a minute, and forgets one provider's answer on request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sidecar.core.local_fit import preload
from sidecar.core.pool import ProviderPool
from sidecar.core.registry import ModelRegistry
from sidecar.core.stats import StatsBook
from sidecar.errors import NetworkError, SidecarError
from sidecar.local.loaded import windows
from sidecar.providers.base import Provider, ProviderModel
from sidecar.providers.failures import LocalServerDown
from sidecar.wire.model import ModelInfo

__all__ = ["CACHE_TTL_S", "LIST_TIMEOUT_S", "ModelLister"]

CACHE_TTL_S = 60.0
LIST_TIMEOUT_S = 5.0
_OPENAI_NON_CHAT = ("audio", "realtime", "tts", "transcribe", "image", "embedding", "moderation",
                    "whisper", "dall-e", "davinci", "babbage", "search")


@dataclass(slots=True)
class _Cached:
    at: float
    #: The provider object asked: one replaced by a config change is another object,
    #: so its old answer is never served.
    provider: Provider
    value: list[ModelInfo]


class ModelLister:
    """Asks providers for their models; caches the ``model:list-models`` answer of each."""

    def __init__(self, pool: ProviderPool, registry: ModelRegistry, stats: StatsBook,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.registry = registry
        self.stats = stats
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def fetch(self, provider: Provider, *, note_unreachable: bool = False) -> list[ProviderModel] | None:
        """Ask a provider for its chat models and tell the registry; None if unreachable.

        With ``note_unreachable`` (the start-up refresh), a provider that cannot be
        reached starts its cool-down as a failed request would, so the first requests do
        not try a local server that is not running before the ones that are.
        """
        try:
            async with asyncio.timeout(LIST_TIMEOUT_S):
                reported = await provider.list_models()
                chat = [m for m in reported if _is_chat_model(provider, m.id)]
                if provider.settings.kind == "ollama":
                    chat = await _with_details(provider, chat)
                elif provider.is_local:
                    chat = await _loaded_windows(provider, chat)
        except (SidecarError, TimeoutError) as exc:
            unreachable = isinstance(exc, TimeoutError | NetworkError | LocalServerDown)
            if note_unreachable and unreachable:
                kind = exc.type if isinstance(exc, SidecarError) else "NetworkError"
                self.stats.failure(provider.name, kind,
                                   str(exc) or f"no answer within {LIST_TIMEOUT_S:.0f} s", provider_wide=True)
            return None
        self.registry.report(provider.name, chat)
        return chat

    async def refresh_local(self) -> None:
        """At start-up: learn local models' real windows (``/api/show``, ``n_ctx_train``,
        ``/props``) before the first request needs them, and load the default model of the
        entries that ask for it (``preload``); remote providers are not contacted."""
        providers = [p for name in self.pool.settings() if (p := self.pool.get(name)) and p.is_local]
        await asyncio.gather(*(self.fetch(p, note_unreachable=True) for p in providers),
                             *(preload(p) for p in providers if p.settings.preload))

    def cached(self, provider: Provider, *, refresh: bool) -> list[ModelInfo] | None:
        """The cached answer for ``provider``, unless stale, replaced or ``refresh``."""
        entry = self._cache.get(provider.name)
        if refresh or entry is None or entry.provider is not provider or self._clock() - entry.at > CACHE_TTL_S:
            return None
        return entry.value

    def remember(self, provider: Provider, value: list[ModelInfo]) -> None:
        self._cache[provider.name] = _Cached(self._clock(), provider, value)

    def forget(self, name: str) -> None:
        """Drop one provider's cached answer (``model:pull`` added a model)."""
        self._cache.pop(name, None)


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


async def _loaded_windows(provider: Provider, models: list[ProviderModel]) -> list[ProviderModel]:
    """A local server's models with the window it runs them with (llama.cpp ``/props``,
    LM Studio ``/api/v0/models``, a managed server's ``--n_ctx``), not the trained one."""

    async def loaded(model: ProviderModel) -> ProviderModel:
        window = await windows.get(provider, model.id)
        if window is None or window.loaded is None or window.adjustable:
            return model
        return replace(model, context_window=window.loaded)

    return list(await asyncio.gather(*(loaded(m) for m in models)))
