"""Router rules: retries, backoff, Retry-After, fallback, localOnly, streams, deadlines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from sidecar.core.config import config_from_doc
from sidecar.core.planner import Decision, Planner
from sidecar.core.pool import ProviderPool
from sidecar.core.ratelimit import BACKOFF_BASE_MS, retry_delay_ms
from sidecar.core.registry import Catalog, ModelRegistry
from sidecar.core.router import Budget, Router
from sidecar.core.stats import StatsBook
from sidecar.errors import (
    AllProvidersFailedError,
    AuthenticationError,
    InvalidParams,
    ModelError,
    NetworkError,
    RateLimitError,
    ValidationError,
)
from sidecar.providers.base import Completion, ProviderSettings, Usage
from sidecar.providers.http import HttpClientFactory
from sidecar.wire.model import ModelRequest, ModelSelection
from tests.support.scripted import Chunks, Hang, Script, ScriptedProvider

SETTINGS = {
    "openai": ProviderSettings("openai", "openai", "https://api.openai.com/v1", "gpt-4o-mini", api_key="sk-a"),
    "anthropic": ProviderSettings("anthropic", "anthropic", "https://api.anthropic.com", "claude-haiku-4-5",
                                  api_key="sk-b"),
    "ollama": ProviderSettings("ollama", "ollama", "http://127.0.0.1:11434", "llama3.2", local=True),
}


@dataclass
class Rig:
    router: Router
    scripts: dict[str, Script]
    sleeps: list[float] = field(default_factory=list)
    registry: ModelRegistry | None = None

    def decision(self, *names: str, mid_stream: bool = False) -> Decision:
        """A decision trying these providers' default models in this order."""
        assert self.registry is not None
        profiles = tuple(self.registry.profile(SETTINGS_BY_NAME[n], SETTINGS_BY_NAME[n].default_model)
                         for n in names)
        return Decision(candidates=profiles, reasons=("test",), task_type="code_generation",
                        fallback_mid_stream=mid_stream, prompt_tokens=10, output_tokens=10)


SETTINGS_BY_NAME: dict[str, ProviderSettings] = {}


def make_rig(config: dict[str, Any] | None = None, settings: dict[str, ProviderSettings] | None = None,
             budget: Budget | None = None) -> Rig:
    cfg = config_from_doc({"defaultProvider": "openai", "fallbackChain": ["anthropic", "ollama"], **(config or {})})
    settings = settings or SETTINGS
    SETTINGS_BY_NAME.clear()
    SETTINGS_BY_NAME.update(settings)
    scripts = {name: Script() for name in settings}
    pool = ProviderPool(lambda s, _http: ScriptedProvider(s, scripts[s.name]), HttpClientFactory())
    pool.configure(list(settings.values()))
    stats = StatsBook()
    registry = ModelRegistry(Catalog.load(), lambda: cfg.model_overrides)
    planner = Planner(pool, lambda: cfg, registry, stats)
    rig = Rig(router=None, scripts=scripts, registry=registry)  # type: ignore[arg-type]

    async def fake_sleep(seconds: float) -> None:
        rig.sleeps.append(seconds)

    rig.router = Router(pool, lambda: cfg, stats, planner, budget=budget, sleep=fake_sleep, rand=lambda: 1.0)
    return rig


def req(**fields: Any) -> ModelRequest:
    return ModelRequest.model_validate({"prompt": "write a function", **fields})


def sel(**fields: Any) -> ModelSelection:
    return ModelSelection.model_validate(fields)


CHAIN = ("openai", "anthropic", "ollama")


async def generate(rig: Rig, request: ModelRequest | None = None, decision: Decision | None = None) -> Any:
    return await rig.router.generate(request or req(), decision or rig.decision(*CHAIN))


def test_backoff_grows_and_is_capped() -> None:
    assert retry_delay_ms(0, "exponential", 1.0) == BACKOFF_BASE_MS
    assert retry_delay_ms(1, "exponential", 1.0) == 2 * BACKOFF_BASE_MS
    assert retry_delay_ms(2, "linear", 1.0) == 3 * BACKOFF_BASE_MS
    assert retry_delay_ms(30, "exponential", 1.0) == 8000
    assert retry_delay_ms(1, "exponential", 0.0) == 0.75 * 2 * BACKOFF_BASE_MS


async def test_retry_then_success_records_every_attempt() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [NetworkError("boom", provider="openai"), ModelError("503", provider="openai")]
    outcome = await generate(rig)
    assert outcome.completion.content == "ok"
    assert outcome.candidate.provider == "openai"
    assert [a.error_type for a in outcome.attempts] == ["NetworkError", "ModelError", None]
    assert rig.sleeps == [0.5, 1.0]


async def test_retry_after_is_honoured_when_longer_than_backoff() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [RateLimitError("slow down", provider="openai", retry_after_ms=2500)]
    outcome = await generate(rig)
    assert outcome.candidate.provider == "openai"
    assert rig.sleeps == [2.5]


async def test_long_retry_after_switches_provider_instead_of_waiting() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [RateLimitError("quota", provider="openai", retry_after_ms=120_000)]
    outcome = await generate(rig)
    assert outcome.candidate.provider == "anthropic"
    assert rig.sleeps == []


async def test_authentication_error_is_not_retried_but_falls_back() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [AuthenticationError("bad key", provider="openai")]
    outcome = await generate(rig)
    assert outcome.candidate.provider == "anthropic"
    assert len(rig.scripts["openai"].requests) == 1
    assert outcome.attempts[0].error_type == "AuthenticationError"


async def test_validation_error_ends_the_request_without_fallback() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [ValidationError("bad request", provider="openai")]
    with pytest.raises(ValidationError) as info:
        await generate(rig)
    assert rig.scripts["anthropic"].requests == []
    assert info.value.attempts and info.value.attempts[0].provider == "openai"


async def test_context_too_long_falls_back() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [ValidationError("too long", provider="openai", context_too_long=True)]
    outcome = await generate(rig)
    assert outcome.candidate.provider == "anthropic"


async def test_exhausted_chain_is_all_providers_failed_with_attempts() -> None:
    rig = make_rig({"providers": {"openai": {"rateLimit": {"maxRetries": 0}},
                                  "anthropic": {"rateLimit": {"maxRetries": 1}},
                                  "ollama": {"rateLimit": {"maxRetries": 0}}}})
    for name in rig.scripts:
        rig.scripts[name].actions = [ModelError(f"{name} down", provider=name)] * 3
    with pytest.raises(AllProvidersFailedError) as info:
        await generate(rig)
    providers = [a.provider for a in info.value.attempts or []]
    assert providers == ["openai", "anthropic", "anthropic", "ollama"]
    assert info.value.retryable is True


async def test_fallback_false_keeps_the_first_provider_and_its_typed_error() -> None:
    rig = make_rig({"providers": {"openai": {"rateLimit": {"maxRetries": 0}}}})
    rig.scripts["openai"].actions = [ModelError("down", provider="openai")]
    with pytest.raises(ModelError):
        await generate(rig, decision=rig.router.select_provider(req(), sel(provider="openai", fallback=False)))
    assert rig.scripts["anthropic"].requests == []


async def test_local_only_never_touches_cloud_providers() -> None:
    rig = make_rig()
    decision = rig.router.select_provider(req(), sel(localOnly=True))
    assert [c.provider for c in decision.candidates] == ["ollama"]
    assert any("not local" in r for r in decision.reasons)
    outcome = await rig.router.generate(req(), decision)
    assert outcome.candidate.provider == "ollama"
    assert rig.scripts["openai"].requests == [] and rig.scripts["anthropic"].requests == []
    with pytest.raises(InvalidParams):
        rig.router.select_provider(req(), sel(provider="openai", localOnly=True))


async def test_local_only_failure_stays_local() -> None:
    rig = make_rig()
    rig.scripts["ollama"].actions = [NetworkError("refused", provider="ollama")] * 3
    with pytest.raises(NetworkError):
        await generate(rig, decision=rig.router.select_provider(req(), sel(localOnly=True)))
    assert rig.scripts["openai"].requests == [] and rig.scripts["anthropic"].requests == []


def test_specific_provider_and_model_win() -> None:
    rig = make_rig()
    decision = rig.router.select_provider(req(modelId="ignored"), sel(provider="anthropic", modelId="claude-x"))
    assert decision.candidates[0].provider == "anthropic"
    assert decision.candidates[0].model == "claude-x"
    assert any("requested by selection.provider" in r for r in decision.reasons)
    decision = rig.router.select_provider(req(), sel(provider="ollama"))
    assert decision.candidates[0].provider == "ollama"


def test_auto_routes_a_known_model_to_its_provider() -> None:
    rig = make_rig()
    decision = rig.router.select_provider(req(modelId="claude-3-5-haiku-20241022"), None)
    assert decision.candidates[0].provider == "anthropic"
    assert decision.candidates[0].model == "claude-3-5-haiku-20241022"


def test_auto_skips_keyless_cloud_providers_and_says_why() -> None:
    settings = dict(SETTINGS)
    settings["openai"] = ProviderSettings("openai", "openai", "https://api.openai.com/v1", "gpt-4o-mini")
    rig = make_rig(settings=settings)
    decision = rig.router.select_provider(req(), None)
    assert sorted(c.provider for c in decision.candidates) == ["anthropic", "ollama"]
    assert any("openai: no API key" in r for r in decision.reasons)


def test_unknown_provider_is_invalid_params() -> None:
    rig = make_rig()
    with pytest.raises(InvalidParams) as info:
        rig.router.select_provider(req(), sel(provider="nope"))
    assert info.value.errors[0]["path"] == "/selection/provider"


async def test_cost_is_priced_from_the_catalog_and_zero_for_local() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [Completion("x", "gpt-4o-mini-2024-07-18", "stop", Usage(1_000_000, 0))]
    outcome = await generate(rig)
    assert outcome.cost_usd == pytest.approx(0.15)
    rig.scripts["ollama"].actions = [Completion("x", "llama3.2", "stop", Usage(1_000_000, 1_000_000))]
    outcome = await generate(rig, decision=rig.decision("ollama"))
    assert outcome.cost_usd == 0


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []

    async def __call__(self, content: str, model: str | None, *, restart: bool = False) -> None:
        self.events.append((content, restart))


async def stream(rig: Rig, decision: Decision | None = None) -> tuple[Any, Sink]:
    sink = Sink()
    outcome = await rig.router.stream(req(), decision or rig.decision(*CHAIN), sink)
    return outcome, sink


async def test_stream_falls_back_before_the_first_chunk() -> None:
    rig = make_rig({"providers": {"openai": {"rateLimit": {"maxRetries": 0}}}})
    rig.scripts["openai"].actions = [Chunks([], error=NetworkError("cut", provider="openai"))]
    rig.scripts["anthropic"].actions = [Chunks(["Hel", "lo"])]
    outcome, sink = await stream(rig)
    assert outcome.completion.content == "Hello"
    assert sink.events == [("Hel", False), ("lo", False)]
    assert outcome.ttft_ms is not None


async def test_stream_does_not_fall_back_after_the_first_chunk() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [Chunks(["Hel"], error=NetworkError("cut", provider="openai"))]
    with pytest.raises(NetworkError):
        await stream(rig)
    assert rig.scripts["anthropic"].requests == []
    assert len(rig.scripts["openai"].requests) == 1  # no retry either: text already went out


async def test_stream_mid_stream_fallback_sends_restart_first() -> None:
    rig = make_rig({"providers": {"openai": {"rateLimit": {"maxRetries": 0}}}})
    rig.scripts["openai"].actions = [Chunks(["Hel"], error=NetworkError("cut", provider="openai"))]
    rig.scripts["anthropic"].actions = [Chunks(["Hi", "!"])]
    outcome, sink = await stream(rig, rig.decision(*CHAIN, mid_stream=True))
    assert sink.events == [("Hel", False), ("", True), ("Hi", False), ("!", False)]
    assert outcome.completion.content == "Hi!"


async def test_stream_closes_the_provider_stream_on_cancel() -> None:
    rig = make_rig()
    rig.scripts["openai"].actions = [Hang()]
    task = asyncio.create_task(stream(rig))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.scripts["openai"].closed_streams == 1


async def test_attempt_timeout_turns_a_hang_into_network_error_then_fallback() -> None:
    settings = dict(SETTINGS)
    settings["openai"] = ProviderSettings("openai", "openai", "https://api.openai.com/v1", "gpt-4o-mini",
                                          api_key="sk-a", timeout_ms=100)
    rig = make_rig({"providers": {"openai": {"rateLimit": {"maxRetries": 0}}}}, settings=settings)
    rig.scripts["openai"].actions = [Hang()]
    outcome = await generate(rig)
    assert outcome.candidate.provider == "anthropic"
    assert outcome.attempts[0].error_type == "NetworkError"


async def test_stream_silence_is_a_timeout() -> None:
    # A local model's first token may wait for a load (firstTokenTimeoutMs): short here too.
    settings = {"ollama": ProviderSettings("ollama", "ollama", "http://127.0.0.1:1", "m", local=True,
                                           timeout_ms=100, first_token_timeout_ms=100)}
    rig = make_rig({"defaultProvider": "ollama", "fallbackChain": [],
                    "providers": {"ollama": {"rateLimit": {"maxRetries": 0}}}}, settings=settings)
    rig.scripts["ollama"].actions = [Hang()]
    with pytest.raises(NetworkError, match="silent"):
        await stream(rig, rig.decision("ollama"))


async def test_overall_deadline_stops_retries() -> None:
    settings = {"ollama": ProviderSettings("ollama", "ollama", "http://127.0.0.1:1", "m", local=True,
                                           timeout_ms=60_000)}
    rig = make_rig({"defaultProvider": "ollama", "fallbackChain": [], "deadlineMs": 1000}, settings=settings)
    rig.scripts["ollama"].actions = [Hang()]
    with pytest.raises(NetworkError, match="deadline"):
        await generate(rig, decision=rig.decision("ollama"))


async def test_request_fields_reach_the_provider() -> None:
    rig = make_rig()
    await generate(rig, req(systemPrompt="be brief", temperature=0.2, maxTokens=50, topP=0.9,
                            frequencyPenalty=0.1, presencePenalty=-0.1, stop=["END"], context={"file": "a.py"},
                            messages=[{"role": "user", "content": "earlier"},
                                      {"role": "assistant", "content": "reply"}]))
    sent = rig.scripts["openai"].requests[0]
    assert sent.system == "be brief"
    assert (sent.temperature, sent.max_tokens, sent.top_p) == (0.2, 50, 0.9)
    assert (sent.frequency_penalty, sent.presence_penalty, sent.stop) == (0.1, -0.1, ("END",))
    assert [m.role for m in sent.messages] == ["user", "assistant", "user"]
    assert sent.messages[-1].content.startswith("Context:\n{")
    assert sent.messages[-1].content.endswith("write a function")


def test_config_selection_defaults_fill_only_what_the_request_left_out() -> None:
    from sidecar.core.planner import effective_selection

    cfg = config_from_doc({"selection": {"localOnly": True, "fallback": False, "priority": "cost"}})
    assert effective_selection(None, cfg).local_only is True
    merged = effective_selection(sel(priority="speed"), cfg)
    assert (merged.local_only, merged.fallback, merged.priority.value) == (True, False, "speed")
    assert effective_selection(sel(localOnly=False), cfg).local_only is False


@pytest.mark.parametrize(
    ("url", "local"),
    [("http://127.0.0.1:1/v1", True), ("http://127.9.9.9", True), ("http://localhost:8080", True),
     ("http://[::1]:1", True), ("http://[::ffff:127.0.0.1]:1", True),
     ("http://127.attacker.example/v1", False), ("http://127.0.0.1.nip.io/v1", False),
     ("http://x.localhost", False), ("https://api.openai.com/v1", False), ("http://10.0.0.5:11434", False)],
)
def test_loopback_detection_never_trusts_names(url: str, local: bool) -> None:
    from sidecar.providers.http import is_loopback_url

    assert is_loopback_url(url) is local
