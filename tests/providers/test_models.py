"""Model listings, model info, availability probes and the static provider registry."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs

import pytest

from sidecar.errors import AuthenticationError, ModelError
from sidecar.providers import PROVIDER_CLASSES, create_provider
from sidecar.providers.anthropic import AnthropicProvider
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import HttpClientFactory
from sidecar.providers.ollama import OllamaProvider
from sidecar.providers.openai import OpenAICompatibleProvider, OpenAIProvider
from tests.fakes import DEFAULT_MODELS, FakeServer
from tests.providers.conftest import API_KEY, KINDS, Harness

pytestmark = pytest.mark.timeout(20)


async def test_list_models_reports_every_model(harness: Harness) -> None:
    provider = harness.make()
    models = await provider.list_models()
    assert [m.id for m in models] == list(DEFAULT_MODELS[harness.kind])
    for model in models:
        assert model.provider == harness.name
        assert {"chat", "streaming"} <= model.capabilities
    local = harness.kind in ("ollama", "llamacpp")
    assert all(("local" in m.capabilities) is local for m in models)


async def test_openai_listing_records_rate_limits_and_sends_key(openai: Harness) -> None:
    provider = openai.make()
    models = await provider.list_models()
    assert {"json_schema", "tools"} <= models[0].capabilities
    assert provider.last_rate_limit is not None and provider.last_rate_limit.remaining_requests == 4999
    (listing,) = openai.server.all_requests
    assert (listing.method, listing.path) == ("GET", "/v1/models")
    assert listing.headers["authorization"] == f"Bearer {API_KEY}"


async def test_openai_listing_without_key_is_authentication_error(openai: Harness) -> None:
    with pytest.raises(AuthenticationError):
        await openai.make(api_key=None).list_models()
    assert openai.server.all_requests == []


async def test_llamacpp_context_window_from_n_ctx_train(llamacpp: Harness) -> None:
    (model,) = await llamacpp.make().list_models()
    assert model.id == llamacpp.model
    assert model.context_window == 32768  # meta.n_ctx_train (wire-reference §4.2)
    info = await llamacpp.make().get_model_info(llamacpp.model)
    assert info is not None and info.context_window == 32768
    assert await llamacpp.make().get_model_info("not-loaded") is None


async def test_anthropic_listing_sends_headers_and_reads_limits(anthropic: Harness) -> None:
    models = {m.id: m for m in await anthropic.make().list_models()}
    haiku = models["claude-3-5-haiku-20241022"]
    assert haiku.context_window == 200000
    assert haiku.max_output_tokens == 8192
    assert haiku.display_name
    (listing,) = anthropic.server.all_requests
    assert listing.path == "/v1/models"
    assert parse_qs(listing.query) == {"limit": ["1000"]}
    assert listing.headers["x-api-key"] == API_KEY
    assert listing.headers["anthropic-version"] == "2023-06-01"


async def test_anthropic_listing_follows_pages() -> None:
    ids = [f"claude-test-{i:04d}" for i in range(1203)]
    with FakeServer("anthropic", api_key=API_KEY, models=ids) as server:
        settings = ProviderSettings(
            name="anthropic",
            kind="anthropic",
            base_url=server.base_url,
            default_model=ids[0],
            api_key=API_KEY,
        )
        provider = create_provider(settings, HttpClientFactory())
        try:
            models = await provider.list_models()
        finally:
            await provider.aclose()
        assert [m.id for m in models] == ids
        first, second = server.all_requests
        assert parse_qs(first.query) == {"limit": ["1000"]}
        assert parse_qs(second.query) == {"limit": ["1000"], "after_id": ["claude-test-0999"]}


async def test_ollama_listing_and_show(ollama: Harness) -> None:
    provider = ollama.make()
    models = await provider.list_models()
    assert models[0].id == "llama3.2:latest"
    assert models[0].context_window is None  # /api/tags does not say; /api/show does
    info = await provider.get_model_info("llama3.2:latest")
    assert info is not None
    # model_info["<general.architecture>.context_length"] (wire-reference §3.4)
    assert info.context_window == 131072
    assert {"tools", "local", "chat"} <= info.capabilities
    show = ollama.server.all_requests[-1]
    assert (show.method, show.path, show.json) == ("POST", "/api/show", {"model": "llama3.2:latest"})


async def test_ollama_show_default_context_and_unknown_model(ollama: Harness) -> None:
    provider = ollama.make()
    info = await provider.get_model_info("qwen2.5-coder:7b")
    assert info is not None and info.context_window == 8192
    assert await provider.get_model_info("no-such-model") is None


@pytest.mark.parametrize("harness", ["openai", "anthropic", "llamacpp"], indirect=True)
async def test_get_model_info_default_looks_up_the_listing(harness: Harness) -> None:
    provider = harness.make()
    info = await provider.get_model_info(DEFAULT_MODELS[harness.kind][0])
    assert info is not None and info.id == DEFAULT_MODELS[harness.kind][0]
    assert await provider.get_model_info("no-such-model") is None


async def test_listing_errors_are_typed(openai: Harness) -> None:
    with pytest.raises(AuthenticationError) as info:
        await openai.make(api_key="sk-test-WRONGWRONG9876").list_models()
    assert "sk-test-WRONGWRONG9876" not in str(info.value)


async def test_listing_on_a_server_of_another_kind_is_model_error(harness: Harness) -> None:
    """A base URL pointing at the wrong server gives the typed 404, not a crash."""
    other = "anthropic" if harness.kind == "ollama" else "ollama"
    with FakeServer(other) as server:
        provider = harness.make(base_url=server.origin)
        with pytest.raises(ModelError) as info:
            await provider.list_models()
    assert info.value.status == 404 and not info.value.retryable


async def test_is_available_true(harness: Harness) -> None:
    assert await harness.make().is_available() is True
    probe = harness.server.all_requests[-1]
    expected = {"openai": "/v1/models", "anthropic": "/v1/models", "ollama": "/", "llamacpp": "/v1/models"}
    assert (probe.method, probe.path) == ("GET", expected[harness.kind])


async def test_is_available_false_when_nothing_listens(harness: Harness) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await harness.make(base_url=f"http://127.0.0.1:{port}", timeout_ms=500).is_available() is False


async def test_is_available_false_without_key(openai: Harness, anthropic: Harness) -> None:
    assert await openai.make(api_key=None).is_available() is False
    assert await anthropic.make(api_key="sk-test-WRONGWRONG9876").is_available() is False


# -- registry -------------------------------------------------------------------------------------


def test_registry_maps_every_kind() -> None:
    assert PROVIDER_CLASSES == {
        "openai": OpenAIProvider,
        "anthropic": AnthropicProvider,
        "ollama": OllamaProvider,
        "custom": OpenAICompatibleProvider,
    }
    for kind, cls in PROVIDER_CLASSES.items():
        assert cls.kind == kind
    assert OpenAIProvider.key_env_var == "OPENAI_API_KEY"
    assert AnthropicProvider.key_env_var == "ANTHROPIC_API_KEY"
    assert OllamaProvider.key_env_var is None and OpenAICompatibleProvider.key_env_var is None
    assert OpenAIProvider.capabilities == {"chat", "streaming", "json_mode", "json_schema", "tools"}
    assert OllamaProvider.capabilities == {"chat", "streaming", "json_mode", "json_schema", "local"}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_create_provider_builds_the_registered_class(kind: str) -> None:
    config_kind, model = KINDS[kind]
    settings = ProviderSettings(
        name="x", kind=config_kind, base_url="http://127.0.0.1:9/v1", default_model=model
    )
    provider = create_provider(settings, HttpClientFactory())
    try:
        assert type(provider) is PROVIDER_CLASSES[config_kind]
        assert provider.client.base_url.path == "/v1/"
    finally:
        await provider.aclose()


def test_create_provider_rejects_unknown_kind() -> None:
    settings = ProviderSettings(name="x", kind="gemini", base_url="http://h", default_model="m")
    with pytest.raises(ValueError, match="gemini"):
        create_provider(settings, HttpClientFactory())
