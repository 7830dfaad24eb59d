"""TLS trust through stdio: a provider whose certificate a test CA signed is refused by
default with what to set, and accepted with ``caFile``, with ``SSL_CERT_FILE``, or (loudly)
with ``insecureSkipVerify``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer
from tests.network.support import TestCA
from tests.stdio.conftest import OPENAI_KEY, Spawn
from tests.stdio.harness import SidecarProcess

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
        ours = log_events(sidecar, "tls_trust", at_least=1, caFile=str(ca.pem_path))
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
        warnings = log_events(sidecar, "tls_verification_disabled", at_least=1)
        assert warnings[0]["provider"] == "openai" and warnings[0]["level"] == "warning"
        # Every config load says it again.
        sidecar.result("model:set-config", {"config": {"budget": {"alertThreshold": 0.5}}})
        assert len(log_events(sidecar, "tls_verification_disabled", at_least=len(warnings) + 1)) == len(warnings) + 1


def log_events(sidecar: SidecarProcess, event: str, *, at_least: int, timeout: float = 5.0,
               **fields: Any) -> list[dict[str, Any]]:
    """The stderr log events named ``event`` (with ``fields``), once at least ``at_least``
    arrived (stderr is read by its own thread: a line may come after the response that
    followed it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(line) for line in bytes(sidecar.stderr).decode().splitlines()
                 if line.startswith("{") and json.loads(line).get("event") == event]
        found = [e for e in found if all(e.get(k) == v for k, v in fields.items())]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.02)
