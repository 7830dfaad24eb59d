"""In-process providers for router unit tests (fast; no HTTP below them).

Provider modules themselves are always tested against real loopback servers; these
stand-ins only let router and channel logic be tested without a network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import httpx

from sidecar.errors import ProviderError
from sidecar.providers.base import (
    Completion,
    Provider,
    ProviderModel,
    ProviderRequest,
    ProviderSettings,
    StreamDelta,
    Usage,
)


@dataclass
class Chunks:
    """A streamed answer: these pieces, then optionally an error instead of the end."""

    pieces: list[str]
    error: ProviderError | None = None
    usage: Usage | None = None


class Hang:
    """Never answer (until cancelled)."""


Action = Completion | ProviderError | Chunks | Hang


@dataclass
class Script:
    actions: list[Action] = field(default_factory=list)
    requests: list[ProviderRequest] = field(default_factory=list)
    closed_streams: int = 0


class ScriptedProvider(Provider):
    """Plays a script of actions, one per call; the default answer is ``"ok"``."""

    __test__ = False
    kind = "scripted"

    def __init__(self, settings: ProviderSettings, script: Script) -> None:
        super().__init__(settings, httpx.AsyncClient())
        self.script = script

    def _next(self, request: ProviderRequest) -> Action:
        self.script.requests.append(request)
        if self.script.actions:
            return self.script.actions.pop(0)
        return Completion(content="ok", model=request.model, finish_reason="stop", usage=Usage(3, 1))

    async def generate(self, request: ProviderRequest) -> Completion:
        action = self._next(request)
        if isinstance(action, Hang):
            await asyncio.Event().wait()
        if isinstance(action, ProviderError):
            raise action
        if isinstance(action, Chunks):
            return Completion("".join(action.pieces), request.model, "stop", action.usage)
        assert isinstance(action, Completion)
        return action

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamDelta, None]:
        action = self._next(request)
        try:
            if isinstance(action, Hang):
                await asyncio.Event().wait()
            if isinstance(action, ProviderError):
                raise action
            if isinstance(action, Completion):
                action = Chunks([action.content], usage=action.usage)
            assert isinstance(action, Chunks)
            for piece in action.pieces:
                yield StreamDelta(content=piece, model=request.model)
            if action.error is not None:
                raise action.error
            yield StreamDelta(finish_reason="stop", usage=action.usage or Usage(3, len(action.pieces)))
        finally:
            self.script.closed_streams += 1

    async def list_models(self) -> list[ProviderModel]:
        return [ProviderModel(id=self.settings.default_model, provider=self.name)]
