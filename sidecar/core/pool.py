"""The live provider objects, rebuilt when the config changes.

A provider whose settings changed is replaced at once for new requests; the old object
(and its connection pool) is closed when the last request using it finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType, TracebackType

import structlog

from sidecar.providers.base import Provider, ProviderSettings
from sidecar.providers.http import HttpClientFactory

__all__ = ["ProviderFactory", "ProviderHold", "ProviderPool"]

log = structlog.get_logger("sidecar.pool")

ProviderFactory = Callable[[ProviderSettings, HttpClientFactory], Provider]
#: Wraps every attempt on a provider: makes its server ready first (``sidecar.local.managed``).
ProviderHold = Callable[[Provider], AbstractAsyncContextManager[None]]


class ProviderPool:
    """Name → provider, with use counts so replaced providers close only when idle."""

    def __init__(self, create: ProviderFactory, http: HttpClientFactory, hold: ProviderHold | None = None) -> None:
        self._create = create
        self._http = http
        self._hold = hold
        self._providers: dict[str, Provider] = {}
        self._settings: Mapping[str, ProviderSettings] | None = None
        self._users: dict[int, int] = {}
        self._retired: dict[int, Provider] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def configure(self, settings: list[ProviderSettings]) -> None:
        """Make the pool match ``settings``: keep unchanged providers, replace the rest."""
        wanted = {s.name: s for s in settings}
        self._settings = None
        for name, provider in list(self._providers.items()):
            if wanted.get(name) != provider.settings:
                del self._providers[name]
                self._retire(provider)
        for name, item in wanted.items():
            if name not in self._providers:
                self._providers[name] = self._create(item, self._http)

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def settings(self) -> Mapping[str, ProviderSettings]:
        """Name → settings of the providers configured now (read on every routing
        decision: built once per :meth:`configure`, not per call)."""
        if self._settings is None:
            self._settings = MappingProxyType({name: p.settings for name, p in self._providers.items()})
        return self._settings

    def use(self, provider: Provider) -> _InUse:
        """Hold ``provider`` open for the duration of one attempt (its server ready first)."""
        return _InUse(self, provider)

    def _enter(self, provider: Provider) -> None:
        key = id(provider)
        self._users[key] = self._users.get(key, 0) + 1

    def _leave(self, provider: Provider) -> None:
        key = id(provider)
        self._users[key] -= 1
        if self._users[key] == 0:
            del self._users[key]
            if key in self._retired:
                self._close_later(self._retired.pop(key))

    def _retire(self, provider: Provider) -> None:
        if self._users.get(id(provider)):
            self._retired[id(provider)] = provider
        else:
            self._close_later(provider)

    def _close_later(self, provider: Provider) -> None:
        task = asyncio.get_running_loop().create_task(provider.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        providers = [*self._providers.values(), *self._retired.values()]
        self._providers.clear()
        self._retired.clear()
        results = await asyncio.gather(*(p.aclose() for p in providers), *self._closing, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("provider_close_failed", error=repr(result))


class _InUse:
    """:meth:`ProviderPool.use` (a class, not a generator: it runs around every attempt)."""

    __slots__ = ("_held", "_pool", "_provider")

    def __init__(self, pool: ProviderPool, provider: Provider) -> None:
        self._pool = pool
        self._provider = provider
        self._held: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> Provider:
        self._pool._enter(self._provider)
        hold = self._pool._hold
        if hold is not None:
            held = hold(self._provider)
            try:
                await held.__aenter__()
            except BaseException:
                self._pool._leave(self._provider)
                raise
            self._held = held
        return self._provider

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        try:
            if self._held is not None:
                return await self._held.__aexit__(kind, exc, tb)
            return None
        finally:
            self._pool._leave(self._provider)
