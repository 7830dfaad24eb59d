"""``preload`` and "loading" for a server the sidecar runs itself, through stdio: with
``preload: true`` the server starts after start-up without any request, and while it
starts ``model:health`` says the provider is loading its default model."""

from __future__ import annotations

import time

import pytest

from tests.stdio.conftest import Spawn
from tests.stdio.test_managed_server import (
    FAKE,
    FAKE_MODEL,
    _fake_command,
    fake_config,
    gen,
    servers,
    wait_state,
)

pytestmark = [pytest.mark.stdio, pytest.mark.timeout(120)]

__all__ = ["servers"]  # the fixture: every server pid seen must be gone at the end


def slow_start(seconds: float) -> list[str]:
    """The fake llama.cpp server, listening only after ``seconds`` (a model load)."""
    inner = " ".join(f"'{arg}'" for arg in _fake_command())
    return ["/bin/sh", "-c", f"sleep {seconds}; exec {inner}".replace("'{port}'", "{port}")]


def test_preload_starts_the_server_without_a_request(servers: list[int], spawn: Spawn) -> None:
    config = fake_config({"command": slow_start(1.5)})
    config["providers"]["custom"][FAKE]["preload"] = True
    sidecar = spawn(config)
    deadline = time.monotonic() + 10
    health = sidecar.result("model:health")["providers"][FAKE]
    while health["server"]["state"] == "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
        health = sidecar.result("model:health")["providers"][FAKE]
    assert health["server"]["state"] == "starting", health
    assert health["state"] == "loading" and health["loadingModels"] == [FAKE_MODEL], health
    ready = wait_state(sidecar, FAKE, "ready")
    servers.append(ready["pid"])
    assert sidecar.result("model:health")["providers"][FAKE]["state"] == "ready"
    started = time.monotonic()
    assert sidecar.result("model:generate", gen())["content"]
    assert time.monotonic() - started < 1.5  # served by the running server, no start to wait for


def test_without_preload_the_server_waits_for_a_request(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(fake_config({"command": slow_start(0)}))
    time.sleep(1.0)  # what a preload would have started by now, if any
    health = sidecar.result("model:health")["providers"][FAKE]
    assert health["server"]["state"] == "stopped" and health["state"] == "ready", health

