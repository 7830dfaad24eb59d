"""TLS trust through stdio: a provider whose certificate a test CA signed is refused by
default with what to set, and accepted with ``caFile``, with ``SSL_CERT_FILE``, or (loudly)
with ``insecureSkipVerify``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer
from tests.network.support import TestCA
from tests.stdio.conftest import OPENAI_KEY, Spawn

pytestmark = pytest.mark.stdio

ASK = {"request": {"prompt": "hi"}, "selection": {"provider": "openai", "fallback": False}}


def tls_config(base_url: str, **entry: Any) -> dict[str, Any]:
    return {"providers": {"openai": {"baseURL": base_url, "apiKey": OPENAI_KEY,
                                     "rateLimit": {"maxRetries": 0}, **entry}},
            "defaultProvider": "openai"}


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


def test_an_unknown_root_is_refused_naming_the_host_the_problem_and_what_to_set(
        spawn: Spawn, ca: TestCA) -> None:
    with FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("localhost")).start() as fake:
        sidecar = spawn(tls_config(fake.base_url))
        error = sidecar.call("model:generate", ASK)["error"]
        assert error["data"]["type"] == "NetworkError"
        assert error["data"]["retryable"] is False
        message = error["message"]
        assert f"127.0.0.1:{fake.port}" in message
        assert "unable to get local issuer certificate" in message
        assert "caFile" in message and "SSL_CERT_FILE" in message and "trust store" in message
        # model:health names the problem too, not just "not reachable".
        health = sidecar.result("model:health")["providers"]["openai"]
        assert health["available"] is False
        assert "unable to get local issuer certificate" in health["lastError"] and "caFile" in health["lastError"]
        assert fake.all_requests == []


def test_a_ca_file_on_the_entry_is_trusted(spawn: Spawn, ca: TestCA) -> None:
    with FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("localhost")).start() as fake:
        sidecar = spawn(tls_config(fake.base_url, caFile=str(ca.pem_path)))
        result = sidecar.result("model:generate", ASK)
        assert result["content"] == "Hello from the fake."
        assert len(fake.requests) == 1
        shown = sidecar.result("model:get-config")["providers"]["openai"]
        assert shown["caFile"] == str(ca.pem_path)
        # Which store and which extra roots verify is logged once per distinct trust.
        trust = [json.loads(line) for line in bytes(sidecar.stderr).decode().splitlines() if "tls_trust" in line]
        ours = [line for line in trust if line.get("caFile") == str(ca.pem_path)]
        assert len(ours) == 1 and ours[0]["store"]


def test_ssl_cert_file_in_the_environment_is_trusted(spawn: Spawn, ca: TestCA) -> None:
    with FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("localhost")).start() as fake:
        sidecar = spawn(tls_config(fake.base_url), env={"SSL_CERT_FILE": str(ca.pem_path)})
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."


def test_an_expired_certificate_and_a_wrong_name_are_told_apart(spawn: Spawn, ca: TestCA) -> None:
    expired = FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("localhost", expired=True)).start()
    elsewhere = FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("elsewhere.example", ips=())).start()
    with expired, elsewhere:
        sidecar = spawn(tls_config(expired.base_url, caFile=str(ca.pem_path)))
        message = sidecar.call("model:generate", ASK)["error"]["message"]
        assert "certificate has expired" in message and "renew" in message
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"baseURL": elsewhere.base_url}}}})
        message = sidecar.call("model:generate", ASK)["error"]["message"]
        assert "mismatch" in message and "not valid for 127.0.0.1" in message and "baseURL" in message
        assert expired.all_requests == [] and elsewhere.all_requests == []


def test_an_unreadable_ca_file_fails_the_requests_with_its_reason(spawn: Spawn, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-root.pem"
    sidecar = spawn(tls_config("https://127.0.0.1:9/v1", caFile=str(missing)))
    error = sidecar.call("model:generate", ASK)["error"]
    assert error["data"]["type"] == "NetworkError"
    assert f"caFile {missing} cannot be read" in error["message"]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    sidecar.result("model:set-config", {"config": {"providers": {"openai": {"caFile": str(not_pem)}}}})
    assert "holds no PEM certificate" in sidecar.call("model:generate", ASK)["error"]["message"]
    relative = sidecar.call("model:set-config", {"config": {"providers": {"openai": {"caFile": "roots.pem"}}}})
    assert relative["error"]["data"]["type"] == "InvalidParams"
    assert "absolute path" in json.dumps(relative["error"])


def test_insecure_skip_verify_is_accepted_logged_and_shown_in_health(spawn: Spawn, ca: TestCA) -> None:
    with FakeServer("openai", api_key=OPENAI_KEY, tls=ca.server_context("localhost")).start() as fake:
        sidecar = spawn(tls_config(fake.base_url, insecureSkipVerify=True))
        assert sidecar.result("model:generate", ASK)["content"] == "Hello from the fake."
        health = sidecar.result("model:health")["providers"]
        assert health["openai"]["insecureSkipVerify"] is True
        assert "insecureSkipVerify" not in health["ollama"]
        warnings = [json.loads(line) for line in bytes(sidecar.stderr).decode().splitlines()
                    if "tls_verification_disabled" in line]
        assert warnings and warnings[0]["provider"] == "openai" and warnings[0]["level"] == "warning"
        # Every config load says it again.
        sidecar.result("model:set-config", {"config": {"budget": {"alertThreshold": 0.5}}})
        again = [line for line in bytes(sidecar.stderr).decode().splitlines() if "tls_verification_disabled" in line]
        assert len(again) == len(warnings) + 1
