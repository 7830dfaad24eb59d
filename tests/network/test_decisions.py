"""The plain decisions of sidecar.providers.network: which proxy, NO_PROXY, the guard."""

from __future__ import annotations

import pytest

from sidecar.providers.network import (
    choose_proxy,
    deny_remote_reason,
    env_proxy,
    no_proxy_matches,
    proxy_address,
)

P = "http://proxy.corp:3128"


@pytest.mark.parametrize(("host", "port", "no_proxy", "expected"), [
    ("api.openai.com", 443, "openai.com", True),
    ("api.openai.com", 443, ".openai.com", True),
    ("api.openai.com", 443, "*.openai.com", True),
    ("notopenai.com", 443, "openai.com", False),  # a label boundary, not a suffix
    ("openai.com.evil", 443, "openai.com", False),
    ("api.openai.com", 443, "openai.com:8443", False),
    ("api.openai.com", 8443, "openai.com:8443", True),
    ("10.1.2.3", 443, "10.0.0.0/8", True),
    ("11.1.2.3", 443, "10.0.0.0/8", False),
    ("10.1.2.3", 443, "10.1.2.3", True),
    ("fd00::1", 443, "fd00::/8", True),
    ("fd00::1", 443, "[fd00::1]:443", True),
    ("anything", 1, " a.example , * ", True),
    ("API.OpenAI.com.", 443, "OPENAI.COM", True),
    ("api.openai.com", 443, "", False),
])
def test_no_proxy(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert no_proxy_matches(host, port, no_proxy) is expected


def test_the_scheme_picks_the_variable_lowercase_first_and_all_proxy_last() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1", "HTTP_PROXY": "http://plain:1",
           "ALL_PROXY": "http://all:1"}
    assert env_proxy("https://api.openai.com/v1", env) == "http://lower:1"
    assert env_proxy("http://api.example/v1", env) == "http://plain:1"
    assert env_proxy("https://api.openai.com/v1", {"ALL_PROXY": "http://all:1"}) == "http://all:1"
    assert env_proxy("https://api.openai.com/v1", {"HTTPS_PROXY": "proxy.corp:8080"}) == "http://proxy.corp:8080"
    assert env_proxy("https://api.openai.com/v1", {"HTTPS_PROXY": "  "}) is None
    assert env_proxy("https://api.openai.com/v1", {"HTTPS_PROXY": P, "NO_PROXY": "openai.com"}) is None
    # An empty lowercase variable does not hide the uppercase one.
    assert env_proxy("https://x.example", {"https_proxy": "", "HTTPS_PROXY": P}) == P


def test_choose_proxy_order_and_the_explicit_none() -> None:
    env = {"HTTPS_PROXY": "http://env:1"}
    url = "https://api.openai.com/v1"
    assert choose_proxy(url, entry=P, top="http://top:1", env=env, local=False) == P
    assert choose_proxy(url, entry=None, top="http://top:1", env=env, local=False) == "http://top:1"
    assert choose_proxy(url, entry=None, top=None, env=env, local=False) == "http://env:1"
    assert choose_proxy(url, entry="", top="http://top:1", env=env, local=False) is None
    assert choose_proxy(url, entry=None, top="", env=env, local=False) is None
    # local: only its own proxy; loopback: never.
    assert choose_proxy("http://gpu-box.lan:8080", entry=None, top=P, env=env, local=True) is None
    assert choose_proxy("http://gpu-box.lan:8080", entry=P, top=None, env=env, local=True) == P
    for loopback in ("http://127.0.0.1:11434", "http://localhost:1", "http://[::1]:1", "http://127.5.5.5:1"):
        assert choose_proxy(loopback, entry=P, top=P, env=env, local=False) is None


def test_the_deny_remote_guard() -> None:
    assert deny_remote_reason("http://127.0.0.1:1/v1", None) is None
    assert deny_remote_reason("https://api.openai.com/v1", None) == "api.openai.com is not on this machine"
    assert deny_remote_reason("https://provider.test:1/v1", None) == "provider.test is not on this machine"
    assert deny_remote_reason("https://provider.test:1/v1", "http://127.0.0.1:9") is None
    assert deny_remote_reason("https://api.openai.com/v1", "http://127.0.0.1:9") is not None
    assert deny_remote_reason("https://provider.test:1/v1", P) == "the proxy proxy.corp:3128 is not on this machine"


def test_proxy_address_never_shows_user_info() -> None:
    assert proxy_address("http://u:secret-password@proxy.corp:3128") == "proxy.corp:3128"
    assert proxy_address("https://proxy.corp") == "proxy.corp:443"
    assert proxy_address("http://[fd00::1]:8080") == "[fd00::1]:8080"
