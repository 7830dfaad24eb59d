"""The static provider registry: config kind → :class:`Provider` class, no entry points.

``create_provider`` builds the one HTTP client of a provider entry through the shared
:class:`HttpClientFactory` and hands it to the class registered for the entry's kind.
"""

from __future__ import annotations

from sidecar.providers.anthropic import AnthropicProvider
from sidecar.providers.base import Provider, ProviderSettings
from sidecar.providers.http import HttpClientFactory
from sidecar.providers.ollama import OllamaProvider
from sidecar.providers.openai import OpenAICompatibleProvider, OpenAIProvider

__all__ = ["PROVIDER_CLASSES", "create_provider"]

#: One class per config kind; custom entries speak OpenAI Chat Completions.
PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "ollama": OllamaProvider,
    "custom": OpenAICompatibleProvider,
}


def create_provider(settings: ProviderSettings, factory: HttpClientFactory) -> Provider:
    """The provider for one configured entry.

    Raises:
        ValueError: ``settings.kind`` names no registered provider (a config bug).
    """
    try:
        cls = PROVIDER_CLASSES[settings.kind]
    except KeyError:
        raise ValueError(
            f"unknown provider kind {settings.kind!r}; expected one of {sorted(PROVIDER_CLASSES)}"
        ) from None
    return cls(settings, factory.build(settings))
