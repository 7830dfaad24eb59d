"""Proxies through stdio, with a real forward proxy (proxy.py) started by the tests.

The provider fakes listen on 127.0.0.1, which always goes direct; a "remote" provider is
``https://provider.test:PORT``: names in the reserved ``.test`` domain resolve only inside
the test proxy (to 127.0.0.1), and MODEL_SIDECAR_DENY_REMOTE lets them through only via a
loopback proxy. Without one, the sidecar's guard refuses them before any lookup: that
refusal is how a test sees that a request did *not* take the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer, refusing_port
from tests.network.support import PROXY_PASSWORD, ForwardProxy, TestCA
from tests.stdio.conftest import OPENAI_KEY, Spawn

pytestmark = pytest.mark.stdio

ASK = {"request": {"prompt": "hi"}, "selection": {"provider": "openai", "fallback": False}}
NO_ENV_PROXY = {name: "" for base in ("https_proxy", "http_proxy", "all_proxy", "no_proxy")
                for name in (base, base.upper())}


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[FakeServer, TestCA]]:
    """An OpenAI fake serving a certificate for provider.test that a test CA signed."""
    ca = TestCA(tmp_path)
    with FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("provider.test")).start() as fake:
        yield fake, ca


def remote_config(fake: FakeServer, ca: TestCA, *, scheme: str = "https", top: dict[str, Any] | None = None,
                  **entry: Any) -> dict[str, Any]:
    return {"providers": {"openai": {"baseURL": f"{scheme}://provider.test:{fake.port}/v1", "apiKey": OPENAI_KEY,
                                     "caFile": str(ca.pem_path), "rateLimit": {"maxRetries": 0}, **entry}},
            "defaultProvider": "openai", **(top or {})}


def env_with(**values: str) -> dict[str, str]:
    return {**NO_ENV_PROXY, **values}


def test_a_remote_provider_goes_through_the_proxy_of_the_environment(
        spawn: Spawn, remote: tuple[FakeServer, TestCA], tmp_path: Path) -> None:
    fake, ca = remote
    with ForwardProxy(tmp_path, auth=True) as proxy:
        sidecar = spawn(remote_config(fake, ca), env=env_with(HTTPS_PROXY=proxy.url()))
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."
        assert proxy.connections() == [f"CONNECT provider.test:{fake.port}"]
        assert len(fake.requests) == 1
        shown = sidecar.result("model:health")["providers"]["openai"]["proxy"]
        assert shown == proxy.url().replace(PROXY_PASSWORD, "pro\u2026" + PROXY_PASSWORD[-4:])


def test_basic_authentication_works_and_the_password_is_never_shown(
        spawn: Spawn, remote: tuple[FakeServer, TestCA], tmp_path: Path) -> None:
    fake, ca = remote
    with ForwardProxy(tmp_path, auth=True) as proxy:
        sidecar = spawn(remote_config(fake, ca, top={"proxy": proxy.url()}), env=env_with())
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."
        assert proxy.connections() == [f"CONNECT provider.test:{fake.port}"]
        shown = sidecar.result("model:get-config")
        assert PROXY_PASSWORD not in str(shown) and shown["proxy"].startswith("http://corp-user:")
        assert "\u2026" in shown["proxy"] and shown["proxy"].endswith(f"@127.0.0.1:{proxy.port}")
        # The config sent back as shown keeps the real password.
        sidecar.result("model:set-config", {"config": {"proxy": shown["proxy"]}})
        stored = json.loads((sidecar.data_dir / "config.json").read_text())
        assert stored["proxy"] == proxy.url()
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."
        assert len(fake.requests) == 2
        health = sidecar.result("model:health")["providers"]["openai"]
        assert PROXY_PASSWORD not in health["proxy"]
        # (the secret guard checks every byte of stdout and stderr for the password)


def test_wrong_credentials_are_a_network_error_naming_the_proxy(
        spawn: Spawn, remote: tuple[FakeServer, TestCA], tmp_path: Path) -> None:
    fake, ca = remote
    with ForwardProxy(tmp_path, auth=True) as proxy:
        wrong = proxy.url(password="not-the-" + PROXY_PASSWORD[::-1])
        sidecar = spawn(remote_config(fake, ca, proxy=wrong), env=env_with())
        error = sidecar.call("model:generate", ASK)["error"]
        assert error["data"]["type"] == "NetworkError" and error["data"]["retryable"] is False
        assert f"the proxy {proxy.address}" in error["message"] and "407" in error["message"]
        assert "user:password" in error["message"] and "not-the-" not in error["message"]
        # Plain http through the proxy: the 407 is an answer, not a tunnel failure.
        plain = remote_config(fake, ca, scheme="http", proxy=wrong)["providers"]["openai"]
        sidecar.result("model:set-config", {"config": {"providers": {"openai": plain}}})
        error = sidecar.call("model:generate", ASK)["error"]
        assert error["data"]["type"] == "NetworkError"
        assert f"the proxy {proxy.address} asks for authentication (407)" in error["message"]
        assert proxy.connections() == [] and fake.all_requests == []


def test_a_proxy_that_refuses_connections_is_named_not_the_provider(
        spawn: Spawn, remote: tuple[FakeServer, TestCA]) -> None:
    fake, ca = remote
    with refusing_port() as port:
        sidecar = spawn(remote_config(fake, ca, proxy=f"http://127.0.0.1:{port}"), env=env_with())
        error = sidecar.call("model:generate", ASK)["error"]
        assert error["data"]["type"] == "NetworkError"
        assert error["message"] == f"openai: the proxy 127.0.0.1:{port} refused the connection"
        health = sidecar.result("model:health")["providers"]["openai"]
        assert health["lastError"] == f"openai: the proxy 127.0.0.1:{port} refused the connection"
    assert fake.all_requests == []


def test_loopback_providers_never_use_the_proxy(spawn: Spawn, tmp_path: Path) -> None:
    with ForwardProxy(tmp_path) as proxy, FakeServer("ollama").start() as ollama:
        everywhere = proxy.url()
        # Even an entry that names a proxy: loopback is never sent to one.
        sidecar = spawn({"providers": {"ollama": {"baseURL": ollama.base_url, "proxy": everywhere}}, "proxy": everywhere},
                        env=env_with(HTTPS_PROXY=everywhere, HTTP_PROXY=everywhere, ALL_PROXY=everywhere))
        ask = {"request": {"prompt": "hi"}, "selection": {"provider": "ollama", "fallback": False}}
        assert sidecar.result("model:generate", ask)["content"] == "Hello from the fake."
        assert len(ollama.requests) == 1 and proxy.connections() == []
        assert "proxy" not in sidecar.result("model:health")["providers"]["ollama"]


@pytest.mark.parametrize("no_proxy", ["provider.test", ".test", "localhost,*.test:*", "*"])
def test_no_proxy_sends_the_provider_direct(spawn: Spawn, remote: tuple[FakeServer, TestCA], tmp_path: Path,
                                            no_proxy: str) -> None:
    fake, ca = remote
    if no_proxy.endswith(":*"):
        no_proxy = no_proxy.replace(":*", f":{fake.port}")
    with ForwardProxy(tmp_path) as proxy:
        sidecar = spawn(remote_config(fake, ca), env=env_with(HTTPS_PROXY=proxy.url(), no_proxy=no_proxy))
        error = sidecar.call("model:generate", ASK)["error"]
        # Direct: the test guard refuses the .test name (no DNS lookup is made for it).
        assert "provider.test is not on this machine" in error["message"]
        assert proxy.connections() == []


def test_the_entry_proxy_wins_then_the_top_level_one_then_the_environment(
        spawn: Spawn, remote: tuple[FakeServer, TestCA], tmp_path: Path) -> None:
    fake, ca = remote
    with ForwardProxy(tmp_path) as proxy, refusing_port() as dead:
        nowhere = f"http://127.0.0.1:{dead}"
        sidecar = spawn(remote_config(fake, ca, proxy=proxy.url(), top={"proxy": nowhere}),
                        env=env_with(HTTPS_PROXY=nowhere))
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."
        # Top level over the environment.
        sidecar.result("model:set-config", {"config": {"proxy": proxy.url(), "providers": {"openai": {"proxy": None}}}})
        assert sidecar.result("model:health")["providers"]["openai"]["proxy"] == proxy.url()
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."
        assert len(fake.requests) == 2 and proxy.connections()
        # "" on the entry: direct, whatever the top level and the environment say.
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"proxy": ""}}}})
        assert "provider.test is not on this machine" in sidecar.call("model:generate", ASK)["error"]["message"]
        # "" at the top level: direct too, the environment is not read.
        sidecar.result("model:set-config", {"config": {"proxy": "", "providers": {"openai": {"proxy": None}}}})
        assert "provider.test is not on this machine" in sidecar.call("model:generate", ASK)["error"]["message"]
        assert len(fake.requests) == 2


def test_a_local_entry_off_loopback_goes_direct_unless_it_names_its_own_proxy(
        spawn: Spawn, remote: tuple[FakeServer, TestCA], tmp_path: Path) -> None:
    fake, ca = remote
    entry = {"baseURL": f"https://provider.test:{fake.port}/v1", "apiKey": OPENAI_KEY, "defaultModel": "m",
             "caFile": str(ca.pem_path), "local": True, "rateLimit": {"maxRetries": 0}}
    ask = {"request": {"prompt": "hi"}, "selection": {"provider": "lan", "fallback": False}}
    with ForwardProxy(tmp_path) as proxy:
        sidecar = spawn({"providers": {"custom": {"lan": entry}}, "proxy": proxy.url()},
                        env=env_with(HTTPS_PROXY=proxy.url()))
        assert "provider.test is not on this machine" in sidecar.call("model:generate", ask)["error"]["message"]
        assert proxy.connections() == []
        sidecar.result("model:set-config", {"config": {"providers": {"custom": {"lan": {"proxy": proxy.url()}}}}})
        assert sidecar.result("model:generate", ask)["content"] == "Hello from the fake."
        assert proxy.connections() == [f"CONNECT provider.test:{fake.port}"]


def test_a_proxy_off_this_machine_is_refused_under_deny_remote(
        spawn: Spawn, remote: tuple[FakeServer, TestCA]) -> None:
    fake, ca = remote
    sidecar = spawn(remote_config(fake, ca, proxy="http://proxy.corp.example:3128"), env=env_with())
    error = sidecar.call("model:generate", ASK)["error"]
    assert "the proxy proxy.corp.example:3128 is not on this machine" in error["message"]


def test_a_bad_proxy_is_refused_by_set_config_without_echoing_it(spawn: Spawn) -> None:
    sidecar = spawn({}, env=env_with())
    for bad in ("socks5://u:" + PROXY_PASSWORD + "@h:1", "http://u:" + PROXY_PASSWORD + "@h:1/path", "no-scheme"):
        error = sidecar.call("model:set-config", {"config": {"proxy": bad}})["error"]
        assert error["data"]["type"] == "InvalidParams" and PROXY_PASSWORD not in str(error)


def test_an_unusable_proxy_from_the_environment_is_named_without_its_password(
        spawn: Spawn, remote: tuple[FakeServer, TestCA]) -> None:
    fake, ca = remote
    socks = f"socks5://corp-user:{PROXY_PASSWORD}@127.0.0.1:1080"
    sidecar = spawn(remote_config(fake, ca), env=env_with(HTTPS_PROXY=socks))
    error = sidecar.call("model:generate", ASK)["error"]
    assert error["data"]["type"] == "NetworkError" and error["data"]["retryable"] is False
    assert error["message"] == ("openai: the proxy from the environment (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) "
                                "cannot be used: the proxy URL must start with http:// or https:// "
                                "(SOCKS proxies are not supported)")
    assert fake.all_requests == []
