"""Fixtures for provider tests: one real loopback fake server per wire protocol.

Servers are started once per module (each runs aiohttp in its own thread) and reset
before every test; providers get a fresh ``httpx.AsyncClient`` from the real
``HttpClientFactory`` and are closed after the test. Nothing below HTTP is faked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.providers import create_provider
from sidecar.providers.base import (
    ChatMessage,
    Completion,
    Provider,
    ProviderRequest,
    ProviderSettings,
)
from sidecar.providers.http import HttpClientFactory
from tests.fakes import FakeServer

#: A distinctive key: no error message or repr may ever contain it.
API_KEY = "sk-test-SECRETSECRET1234"

#: Fake-server kind → (config kind, model the tests ask for).
KINDS: dict[str, tuple[str, str]] = {
    "openai": ("openai", "gpt-4o-mini"),
    "anthropic": ("anthropic", "claude-3-5-haiku-20241022"),
    "ollama": ("ollama", "llama3.2:latest"),
    "llamacpp": ("custom", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALL_KINDS = tuple(KINDS)
#: Kinds whose fake checks an API key.
KEYED_KINDS = ("openai", "anthropic")


def provider_name(kind: str) -> str:
    return "local-llm" if kind == "llamacpp" else kind


@dataclass
class Harness:
    """A started fake server plus a way to build providers pointed at it."""

    kind: str
    server: FakeServer
    make: Callable[..., Provider]

    @property
    def model(self) -> str:
        return KINDS[self.kind][1]

    @property
    def name(self) -> str:
        """The configured provider name (custom entries have their own)."""
        return provider_name(self.kind)

    def request(self, **fields: Any) -> ProviderRequest:
        """A ProviderRequest for this kind's model with one user turn by default."""
        fields.setdefault("model", self.model)
        fields.setdefault("messages", (ChatMessage("user", "Say hello"),))
        return ProviderRequest(**fields)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeServer]]:
    started: dict[str, FakeServer] = {}
    try:
        for kind in ALL_KINDS:
            key = API_KEY if kind in KEYED_KINDS else None
            started[kind] = FakeServer(
                kind, api_key=key, context_lengths={"llama3.2:latest": 131072, KINDS["llamacpp"][1]: 32768}
            ).start()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
async def providers() -> AsyncIterator[list[Provider]]:
    """Every provider built during a test; their clients are closed afterwards."""
    built: list[Provider] = []
    yield built
    for provider in built:
        await provider.aclose()


def _factory(server: FakeServer, kind: str, built: list[Provider]) -> Callable[..., Provider]:
    def make(**overrides: Any) -> Provider:
        config_kind, model = KINDS[kind]
        fields: dict[str, Any] = {
            "name": provider_name(kind),
            "kind": config_kind,
            "base_url": server.base_url,
            "default_model": model,
            "api_key": API_KEY if kind in KEYED_KINDS else None,
            "timeout_ms": 5_000,
            "local": kind in ("ollama", "llamacpp"),
        }
        fields.update(overrides)
        provider = create_provider(ProviderSettings(**fields), HttpClientFactory())
        built.append(provider)
        return provider

    return make


def _harness(kind: str, servers: dict[str, FakeServer], providers: list[Provider]) -> Harness:
    server = servers[kind]
    server.reset()
    return Harness(kind, server, _factory(server, kind, providers))


@pytest.fixture(params=ALL_KINDS)
def harness(
    request: pytest.FixtureRequest, servers: dict[str, FakeServer], providers: list[Provider]
) -> Harness:
    """One harness per wire protocol (the test runs once for each)."""
    return _harness(request.param, servers, providers)


@pytest.fixture
def openai(servers: dict[str, FakeServer], providers: list[Provider]) -> Harness:
    return _harness("openai", servers, providers)


@pytest.fixture
def anthropic(servers: dict[str, FakeServer], providers: list[Provider]) -> Harness:
    return _harness("anthropic", servers, providers)


@pytest.fixture
def ollama(servers: dict[str, FakeServer], providers: list[Provider]) -> Harness:
    return _harness("ollama", servers, providers)


@pytest.fixture
def llamacpp(servers: dict[str, FakeServer], providers: list[Provider]) -> Harness:
    return _harness("llamacpp", servers, providers)


@pytest.fixture(params=[False, True], ids=["generate", "stream"])
def streaming(request: pytest.FixtureRequest) -> bool:
    """Run the test through ``generate`` and through ``stream``."""
    return bool(request.param)


async def run(provider: Provider, request: ProviderRequest, streaming: bool) -> Completion:
    """One call through either path, folded into a Completion so cases can be shared."""
    if not streaming:
        return await provider.generate(request)
    pieces: list[str] = []
    model, finish, usage = request.model, None, None
    async for delta in provider.stream(request):
        pieces.append(delta.content)
        model = delta.model or model
        finish = delta.finish_reason or finish
        usage = delta.usage or usage
    return Completion(content="".join(pieces), model=model, finish_reason=finish, usage=usage)
