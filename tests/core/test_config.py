"""Config manager: merge patch semantics, env precedence, previews, atomic files."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.core.config import ConfigManager, merge_patch, normalize_ollama_host
from sidecar.errors import InvalidParams
from sidecar.secrets import Redactor

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_docs = st.recursive(json_scalars, lambda inner: st.dictionaries(st.text(max_size=4), inner, max_size=4),
                         max_leaves=10)


def test_merge_patch_follows_rfc_7386_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": "b", "b": "c"}, {"a": None}) == {"b": "c"}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}


@given(json_docs, json_docs)
def test_merge_patch_is_idempotent_and_leaves_inputs_alone(target: object, patch: object) -> None:
    import copy

    before_t, before_p = copy.deepcopy(target), copy.deepcopy(patch)
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
    assert (target, patch) == (before_t, before_p)


@pytest.mark.parametrize(
    ("raw", "url"),
    [("0.0.0.0", "http://127.0.0.1:11434"), ("127.0.0.1:9999", "http://127.0.0.1:9999"),
     ("https://ollama.lan:443", "https://ollama.lan:443"), ("box", "http://box:11434"),
     ("https://ollama.example.com", "https://ollama.example.com:443"), ("http://box", "http://box:80"),
     ('"127.0.0.1:5000" ', "http://127.0.0.1:5000"), ("::1", "http://[::1]:11434"),
     ("[::1]:8080", "http://[::1]:8080"), (":11500", "http://127.0.0.1:11500")],
)
def test_ollama_host_forms(raw: str, url: str) -> None:
    assert normalize_ollama_host(raw) == url


def manager(tmp_path: Path, env: dict[str, str] | None = None) -> ConfigManager:
    m = ConfigManager(tmp_path, env or {}, Redactor())
    m.load()
    return m


def test_stored_key_overrides_environment(tmp_path: Path) -> None:
    m = manager(tmp_path, {"OPENAI_API_KEY": "sk-env-0000000000001111"})
    assert next(s for s in m.provider_settings() if s.name == "openai").api_key == "sk-env-0000000000001111"
    asyncio.run(m.patch({"providers": {"openai": {"apiKey": "sk-stored-00000000002222"}}}))
    assert next(s for s in m.provider_settings() if s.name == "openai").api_key == "sk-stored-00000000002222"
    assert m.preview()["providers"]["openai"]["apiKey"] == "sk-\u20262222"


def test_disabled_providers_are_not_resolved(tmp_path: Path) -> None:
    m = manager(tmp_path)
    asyncio.run(m.patch({"providers": {"anthropic": {"enabled": False}}}))
    assert "anthropic" not in [s.name for s in m.provider_settings()]


def test_loopback_and_declared_local_entries_are_local(tmp_path: Path) -> None:
    m = manager(tmp_path)
    asyncio.run(m.patch({"providers": {"custom": {
        "lan": {"baseURL": "http://192.0.2.10:8000/v1", "defaultModel": "m", "local": True},
        "remote": {"baseURL": "https://api.example.com/v1", "defaultModel": "m"},
        "lo": {"baseURL": "http://localhost:8080/v1", "defaultModel": "m"}}}}))
    local = {s.name: s.local for s in m.provider_settings()}
    assert local["lan"] and local["lo"] and local["ollama"]
    assert not local["remote"] and not local["openai"]


def test_invalid_patch_leaves_file_and_memory_unchanged(tmp_path: Path) -> None:
    m = manager(tmp_path)
    asyncio.run(m.patch({"deadlineMs": 5000}))
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(InvalidParams) as info:
        asyncio.run(m.patch({"deadlineMs": 5, "budget": {"dailyLimit": -1}}))
    paths = {e["path"] for e in info.value.errors}
    assert {"/config/deadlineMs", "/config/budget/dailyLimit"} <= paths
    assert (tmp_path / "config.json").read_bytes() == before
    assert m.config.deadline_ms == 5000


def test_file_mode_is_0600_even_when_umask_is_open(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        m = manager(tmp_path)
        asyncio.run(m.patch({"defaultProvider": "openai"}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600


def test_keys_are_registered_with_the_redactor(tmp_path: Path) -> None:
    redactor = Redactor()
    m = ConfigManager(tmp_path, {"ANTHROPIC_API_KEY": "sk-ant-env-key-123456789"}, redactor)
    m.load()
    asyncio.run(m.patch({"providers": {"custom": {"x": {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m",
                                                        "apiKey": "custom-secret-987654321"}}}}))
    text = "a sk-ant-env-key-123456789 b custom-secret-987654321"
    assert redactor.scrub_text(text) == "a [redacted] b [redacted]"


def test_redact_url_previews_the_password_only() -> None:
    from sidecar.core.config import redact_url

    assert redact_url("https://user:hunter2-correct-horse@h.example/v1") == "https://user:hun\u2026orse@h.example/v1"
    assert redact_url("http://user:pw@127.0.0.1:8080/v1") == "http://user:\u2026@127.0.0.1:8080/v1"
    assert redact_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"


def test_a_file_loads_all_but_its_broken_parts(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "providers": {"openai": {"apiKey": "sk-kept-000000000000", "timeoutMs": 5},
                      "custom": {"half": {"baseURL": "http://127.0.0.1:1/v1"}}},
        "defaultProvider": "half", "fallbackChain": ["openai"], "typo": 1, "budget": {"dailyLimit": 2}}))
    m = manager(tmp_path)
    status = m.status()
    assert status.status == "partial"
    assert {item.path for item in status.ignored or []} == {
        "/providers/openai/timeoutMs", "/providers/custom/half", "/defaultProvider", "/typo"}
    assert m.config.providers.openai.api_key == "sk-kept-000000000000"
    assert m.config.budget.daily_limit == 2 and m.config.fallback_chain == ["openai"]


_ODD = st.one_of(
    st.text(max_size=8), st.sampled_from(["http://127.0.0.1:9/v1\n", "http://h\u2028/v1", "x" * 3000, "Europe/Paris"]),
    st.integers(min_value=-(2**63), max_value=2**63), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(), st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
_PATHS = st.sampled_from([
    ("providers", "ollama", "baseURL"), ("providers", "openai", "apiKey"), ("providers", "ollama", "headers"),
    ("providers", "custom", "z", "baseURL"), ("providers", "custom", "z", "defaultModel"),
    ("providers", "custom", "z"), ("providers", "ollama", "rateLimit", "windowMs"), ("defaultProvider",),
    ("fallbackChain",), ("budget", "timezone"), ("budget", "dailyLimit"), ("modelOverrides", "a/b", "inputPer1M"),
    ("formatTemplates", "t", "schema"), ("selection",), ("deadlineMs",), ("providers",), ("typo",),
])


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_PATHS, _ODD), max_size=5))
@example([(("providers",), None)])  # null deletes: it once ended the process at start
@example([(("providers", "custom"), None)])
def test_whatever_the_file_holds_the_config_loads_and_every_client_builds(tmp_path_factory: pytest.TempPathFactory,
                                                                         parts: list[tuple[tuple[str, ...], object]]
                                                                         ) -> None:
    import json

    import orjson

    from sidecar.providers.http import HttpClientFactory

    doc: dict[str, object] = {}
    for path, value in parts:
        node = doc
        for key in path[:-1]:
            child = node.get(key)
            node[key] = child = child if isinstance(child, dict) else {}
            node = child
        node[path[-1]] = value
    data_dir = tmp_path_factory.mktemp("cfg")
    (data_dir / "config.json").write_text(json.dumps(doc))
    m = manager(data_dir)
    assert m.status().status in ("loaded", "partial")
    orjson.dumps(m.preview())
    factory = HttpClientFactory()
    for resolved in m.provider_settings():
        client = factory.build(resolved)
        client.build_request("POST", "/chat", headers=resolved.headers)
        asyncio.run(client.aclose())
