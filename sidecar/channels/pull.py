"""``model:pull``: download a model into an Ollama provider, with progress notifications.

Progress goes out as ``model:pull-progress`` ``{requestId, status, completedBytes?,
totalBytes?, digest?}``: every new status at once, the same status at most ten times a
second. ``$/cancelRequest`` closes the upstream request. After a success the model
registry and the ``model:list-models`` cache learn the provider's models again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from sidecar.core.model_lists import ModelLister
from sidecar.core.pool import ProviderPool
from sidecar.errors import InvalidParams, SidecarError
from sidecar.local.ollama_pull import Progress, ProgressThrottle, PullOutcome, pull_model
from sidecar.providers.base import Provider
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.kinds import kind_of
from sidecar.wire.methods import PullParams, PullResult

__all__ = ["PULL_PROGRESS", "channels"]

log = structlog.get_logger("sidecar.requests")

PULL_PROGRESS = "model:pull-progress"


def _ollama_provider(pool: ProviderPool, provider_names: Callable[[], list[str]], name: str) -> Provider:
    """The enabled Ollama entry called ``name``; InvalidParams for any other."""

    def refuse(message: str) -> InvalidParams:
        return InvalidParams(message, errors=[{"path": "/provider", "message": message}])

    if name not in provider_names():
        raise refuse(f"unknown provider {name[:64]!r}")
    if kind_of(name).name != "ollama":
        raise refuse(f"provider {name[:64]!r} is not an Ollama entry: only Ollama can pull models")
    provider = pool.get(name)
    if provider is None:
        raise refuse(f"provider {name[:64]!r} is disabled in the config")
    return provider


def _wire(request_id: Any, progress: Progress) -> dict[str, Any]:
    params: dict[str, Any] = {"requestId": request_id, "status": progress.status}
    for key, value in (("completedBytes", progress.completed), ("totalBytes", progress.total),
                       ("digest", progress.digest)):
        if value is not None:
            params[key] = value
    return params


def channels(lister: ModelLister, provider_names: Callable[[], list[str]]) -> list[Channel]:
    pool = lister.pool

    async def download(provider: Provider, params: PullParams, ctx: RequestContext) -> PullOutcome:
        throttle = ProgressThrottle()

        async def on_progress(progress: Progress) -> None:
            if throttle.admit(progress):
                await ctx.notify(PULL_PROGRESS, _wire(ctx.request_id, progress))

        async with pool.use(provider):
            outcome = await pull_model(provider, params.model, on_progress=on_progress,
                                       stall_s=params.stall_timeout_ms / 1000)
            lister.forget(provider.name)
            await lister.fetch(provider)
        return outcome

    async def pull(params: PullParams, ctx: RequestContext) -> PullResult:
        provider = _ollama_provider(pool, provider_names, params.provider)
        started = time.monotonic()
        fields: dict[str, Any] = {"request_id": ctx.request_id, "provider": provider.name, "model": params.model}
        try:
            outcome = await download(provider, params, ctx)
        except SidecarError as exc:
            log.info("pull", **fields, outcome=exc.type, error=exc.message, latency_ms=_ms_since(started))
            raise
        except asyncio.CancelledError:
            log.info("pull", **fields, outcome="cancelled", latency_ms=_ms_since(started))
            raise
        log.info("pull", **fields, outcome="ok", size_bytes=outcome.size_bytes, latency_ms=_ms_since(started))
        return PullResult(provider=provider.name, model=params.model, digest=outcome.digest,
                          sizeBytes=outcome.size_bytes)

    return [Channel("model:pull", PullParams, pull)]


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
