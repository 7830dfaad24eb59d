"""One attempt on a local server, sized to what the server really loaded; and the
preload of a local model after start-up (:func:`preload`).

Before anything is sent: a prompt whose estimate (:func:`sidecar.core.tokens.estimate`,
erring high) is longer than the window the server runs the model with is a
``ValidationError`` (context too long, so another model may take it) naming both
numbers. Ollama gets a ``num_ctx`` that holds the request and, when the window the
model runs with already does, exactly that window, so the server does not load the
model again (it reloads on any other ``num_ctx``). The windows come from
:mod:`sidecar.local.loaded`.
"""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from sidecar.core import tokens
from sidecar.errors import SidecarError, ValidationError
from sidecar.local.loaded import loading, windows
from sidecar.local.managed import ManagedProvider
from sidecar.providers.base import Provider, ProviderRequest
from sidecar.providers.ollama import OllamaProvider
from sidecar.providers.timeouts import timeouts

__all__ = ["fit", "preload"]

log = structlog.get_logger("sidecar.local")


async def fit(provider: Provider, request: ProviderRequest, prompt_tokens: int) -> ProviderRequest:
    """``request`` sized to what ``provider`` loaded; unchanged for remote providers and
    for servers that say nothing about their window.

    Raises:
        ValidationError: the estimated prompt is longer than the window.
    """
    if not provider.is_local:
        return request
    window = await windows.get(provider, request.model)
    if window is None:
        return request
    if window.limit is not None and prompt_tokens > window.limit:
        kind = "trained" if window.adjustable else "loaded"
        raise ValidationError(
            f"{provider.name}/{request.model}: the prompt needs about {prompt_tokens} tokens (estimated), "
            f"more than the {kind} context window of {window.limit} tokens ({window.source})",
            context_too_long=True, retryable=False, provider=provider.name, model_id=request.model,
            extra={"promptTokens": prompt_tokens, "contextWindow": window.limit})
    if not window.adjustable:
        return request
    size = tokens.context_window_for(prompt_tokens, request.max_tokens, loaded=window.loaded, limit=window.limit)
    windows.asked(provider, request.model, window, size)
    return dataclasses.replace(request, context_window=size)


async def preload(provider: Provider) -> None:
    """Load ``provider``'s default model now (its entry's ``preload``), so that the first
    request does not wait for it: a managed server is started (and then stopped when idle
    as usual); Ollama is asked to load the model (``/api/chat`` without messages). Other
    servers load models their own way: nothing to do. A failure is logged; the first
    request then starts or loads it as it would have."""
    model = provider.settings.default_model
    try:
        async with asyncio.timeout(timeouts(provider.settings).whole), loading(provider.name, model):
            if isinstance(provider, ManagedProvider):
                async with provider.manager.hold(provider):
                    pass
            elif isinstance(provider, OllamaProvider):
                await provider.load(model)
            else:
                return
    except (SidecarError, TimeoutError) as exc:
        log.warning("local_preload_failed", provider=provider.name, model=model,
                    error=str(exc) or "no answer in time")
        return
    log.info("local_preload_done", provider=provider.name, model=model)
