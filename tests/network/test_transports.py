"""Both transports (aiohttp's, httpx's own) get the same trust and proxy from the factory
and fail the same explained way: through a real proxy to a TLS fake signed by a test CA."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import NetworkError
from sidecar.providers import create_provider
from sidecar.providers.base import ChatMessage, ProviderRequest, ProviderSettings
from sidecar.providers.http import HttpClientFactory
from tests.fakes import FakeServer, refusing_port
from tests.network.support import PROXY_PASSWORD, ForwardProxy, TestCA
from tests.support.keys import OPENAI_KEY

REQUEST = ProviderRequest(model="gpt-4o-mini", messages=(ChatMessage("user", "hi"),))


@pytest.fixture(params=["aiohttp", "httpx"])
def factory(request: pytest.FixtureRequest) -> HttpClientFactory:
    return HttpClientFactory(aiohttp=request.param == "aiohttp", deny_remote=True, env={})


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
def fake(ca: TestCA) -> Iterator[FakeServer]:
    with FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("provider.test")).start() as server:
        yield server


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    with ForwardProxy(tmp_path, auth=True) as running:
        yield running


async def generate(factory: HttpClientFactory, fake: FakeServer, **settings: Any) -> str:
    fields: dict[str, Any] = {"name": "openai", "kind": "openai", "default_model": "gpt-4o-mini",
                              "api_key": OPENAI_KEY, "base_url": f"https://provider.test:{fake.port}/v1", **settings}
    provider = create_provider(ProviderSettings(**fields), factory)
    try:
        return (await provider.generate(REQUEST)).content
    finally:
        await provider.aclose()


async def test_through_an_authenticating_proxy_with_a_ca_file(
        factory: HttpClientFactory, fake: FakeServer, proxy: ForwardProxy, ca: TestCA) -> None:
    assert await generate(factory, fake, proxy=proxy.url(), ca_file=str(ca.pem_path)) == "Hello from the fake."
    assert proxy.connections() == [f"CONNECT provider.test:{fake.port}"]


async def test_an_unknown_root_through_the_proxy_names_the_provider_host(
        factory: HttpClientFactory, fake: FakeServer, proxy: ForwardProxy) -> None:
    with pytest.raises(NetworkError) as caught:
        await generate(factory, fake, proxy=proxy.url())
    assert f"TLS certificate of provider.test:{fake.port} not accepted: unable to get local issuer" \
           in caught.value.message
    assert not caught.value.retryable


async def test_wrong_proxy_credentials(factory: HttpClientFactory, fake: FakeServer, proxy: ForwardProxy,
                                       ca: TestCA) -> None:
    with pytest.raises(NetworkError) as caught:
        await generate(factory, fake, proxy=proxy.url(password="wrong-password-0123"), ca_file=str(ca.pem_path))
    message = caught.value.message
    assert message.startswith(f"openai: the proxy {proxy.address} refused the tunnel to provider.test:{fake.port}")
    assert "407" in message and "user:password in the proxy URL" in message
    assert "wrong-password" not in message and PROXY_PASSWORD not in message
    assert proxy.connections() == []


async def test_a_refusing_proxy(factory: HttpClientFactory, fake: FakeServer, ca: TestCA) -> None:
    with refusing_port() as port, pytest.raises(NetworkError) as caught:
        await generate(factory, fake, proxy=f"http://127.0.0.1:{port}", ca_file=str(ca.pem_path))
    assert caught.value.message == f"openai: the proxy 127.0.0.1:{port} refused the connection"
    assert caught.value.retryable


async def test_insecure_skip_verify_needs_no_root(factory: HttpClientFactory, fake: FakeServer,
                                                  proxy: ForwardProxy) -> None:
    assert await generate(factory, fake, proxy=proxy.url(), insecure_skip_verify=True) == "Hello from the fake."


async def test_ssl_cert_file_of_the_factory_environment(fake: FakeServer, proxy: ForwardProxy, ca: TestCA) -> None:
    for aiohttp in (True, False):
        factory = HttpClientFactory(aiohttp=aiohttp, deny_remote=True, env={"SSL_CERT_FILE": str(ca.pem_path)})
        assert await generate(factory, fake, proxy=proxy.url()) == "Hello from the fake."




@pytest.fixture
def hashed_roots(ca: TestCA, tmp_path: Path) -> Path:
    """The test root in a directory of OpenSSL's hashed layout (``<subject hash>.0``, as
    ``c_rehash`` makes it)."""
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca.pem_path)],
                                  capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(ca.pem_path, roots / f"{subject_hash}.0")
    return roots


async def test_ssl_cert_dir_of_the_factory_environment(fake: FakeServer, proxy: ForwardProxy, hashed_roots: Path,
                                                       tmp_path: Path) -> None:
    for aiohttp in (True, False):
        factory = HttpClientFactory(aiohttp=aiohttp, deny_remote=True, env={"SSL_CERT_DIR": str(hashed_roots)})
        assert await generate(factory, fake, proxy=proxy.url()) == "Hello from the fake."
    empty = HttpClientFactory(deny_remote=True, env={"SSL_CERT_DIR": str(tmp_path / "missing")})
    with pytest.raises(NetworkError, match=r"SSL_CERT_DIR .* cannot be read"):
        await generate(empty, fake, proxy=proxy.url())


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listen queue is full: a new connection hangs (no SYN-ACK)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield port
    finally:
        queued.close()
        listener.close()


async def test_a_proxy_that_does_not_answer_the_connect_is_named(
        factory: HttpClientFactory, fake: FakeServer, ca: TestCA, unanswered_port: int) -> None:
    with pytest.raises(NetworkError) as caught:
        await generate(factory, fake, proxy=f"http://127.0.0.1:{unanswered_port}", ca_file=str(ca.pem_path),
                       timeout_ms=500)
    assert caught.value.message == (f"openai: connecting through the proxy 127.0.0.1:{unanswered_port} "
                                    f"to provider.test:{fake.port} timed out")


async def test_plain_http_through_the_proxy_is_forwarded(factory: HttpClientFactory, proxy: ForwardProxy) -> None:
    # A GET: proxy.py (2.4.10) repeats Content-Length when a forwarded request's body
    # arrives in a second write, as aiohttp sends it; real proxies do not.
    with FakeServer("openai", api_key=OPENAI_KEY).start() as plain:
        fields: dict[str, Any] = {"name": "openai", "kind": "openai", "default_model": "gpt-4o-mini",
                                  "api_key": OPENAI_KEY, "base_url": f"http://provider.test:{plain.port}/v1",
                                  "proxy": proxy.url()}
        provider = create_provider(ProviderSettings(**fields), factory)
        try:
            assert await provider.is_available()
        finally:
            await provider.aclose()
    assert proxy.connections() == [f"GET provider.test:{plain.port}"]
    assert [r.path for r in plain.all_requests] == ["/v1/models"]


async def test_an_https_proxy_is_verified_with_the_same_trust(factory: HttpClientFactory, fake: FakeServer,
                                                              ca: TestCA, tmp_path: Path) -> None:
    """TLS to the proxy itself (its certificate signed by the test root): trusted through
    ``caFile`` like the provider's, refused without it."""
    with ForwardProxy(tmp_path, auth=True, tls=ca.server_files("localhost")) as tls_proxy:
        assert tls_proxy.url().startswith("https://")
        assert await generate(factory, fake, proxy=tls_proxy.url(), ca_file=str(ca.pem_path)) == "Hello from the fake."
        assert tls_proxy.connections() == [f"CONNECT provider.test:{fake.port}"]
        with pytest.raises(NetworkError) as caught:
            await generate(factory, fake, proxy=tls_proxy.url())
        assert (f"TLS certificate of provider.test:{fake.port} (or of the proxy {tls_proxy.address}) not accepted: "
                "unable to get local issuer certificate") in caught.value.message
