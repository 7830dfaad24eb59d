"""Framing, envelope and lifecycle, checked from outside through stdin/stdout only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar import __version__
from sidecar.wire.registry import METHODS
from tests.stdio.conftest import Spawn
from tests.stdio.harness import REPO, clean_env, sidecar_command

pytestmark = pytest.mark.stdio

UNREACHABLE = {"providers": {"ollama": {"baseURL": "http://127.0.0.1:9"}}}


def error_of(message: dict) -> tuple[int, str]:
    return message["error"]["code"], message["error"]["data"]["type"]


def test_ready_is_the_first_line_and_announces_every_channel(spawn: Spawn) -> None:
    sidecar = spawn()
    ready = sidecar.ready
    assert ready["method"] == "sidecar:ready" and "id" not in ready
    params = ready["params"]
    assert params["protocolVersion"] == 1
    assert params["version"] == __version__
    assert params["pid"] == sidecar.proc.pid or os.environ.get("SIDECAR_CMD")
    assert sorted(params["channels"]) == sorted(METHODS)


def test_version_flag() -> None:
    out = subprocess.run([*sidecar_command(), "--version"], capture_output=True, timeout=30, cwd=REPO,
                         env=clean_env())
    assert out.returncode == 0
    assert __version__ in out.stdout.decode()


def test_bad_lines_get_errors_and_the_process_keeps_serving(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    cases: list[tuple[bytes, int, str]] = [
        (b"not json\n", -32700, "ParseError"),
        (b'{"jsonrpc":"2.0","id":1,"method":"model:get-config"\n', -32700, "ParseError"),
        (b"\xff\xfe garbage\n", -32700, "ParseError"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":NaN}}\n', -32700, "ParseError"),
        (b"[" * 5000 + b"]" * 5000 + b"\n", -32700, "ParseError"),
        (b'[{"jsonrpc":"2.0","id":1,"method":"model:get-config"}]\n', -32600, "InvalidRequest"),
        (b'"just a string"\n', -32600, "InvalidRequest"),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"model:get-config"}\n', -32600, "InvalidRequest"),
        (b'{"jsonrpc":"2.0","id":true,"method":"model:get-config"}\n', -32600, "InvalidRequest"),
        (b'{"jsonrpc":"2.0","id":null,"method":"model:get-config"}\n', -32600, "InvalidRequest"),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"model:get-config"}\n', -32600, "InvalidRequest"),
    ]
    for line, code, kind in cases:
        sidecar.send_raw(line)
        message = sidecar.next_message()
        assert message["id"] is None, (line[:60], message)
        assert error_of(message) == (code, kind), (line[:60], message)
    assert "providers" in sidecar.result("model:get-config")


def test_errors_that_know_the_id_answer_it(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    sidecar.send({"jsonrpc": "1.0", "id": 5, "method": "model:get-config"})
    assert error_of(sidecar.response(5)) == (-32600, "InvalidRequest")
    sidecar.send({"jsonrpc": "2.0", "id": "m1"})
    assert error_of(sidecar.response("m1")) == (-32600, "InvalidRequest")
    sidecar.send({"jsonrpc": "2.0", "id": 7, "method": "model:nope", "params": {}})
    assert error_of(sidecar.response(7)) == (-32601, "MethodNotFound")
    sidecar.send({"jsonrpc": "2.0", "id": 8, "method": "model:get-config", "params": [1]})
    assert error_of(sidecar.response(8)) == (-32602, "InvalidParams")


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"request": {"prompt": "hi", "bogus": 1}}, "/request/bogus"),
        ({"request": {"prompt": "hi", "temperature": 3}}, "/request/temperature"),
        ({"request": {"prompt": "hi", "topP": -0.1}}, "/request/topP"),
        ({"request": {"prompt": "hi", "maxTokens": 0}}, "/request/maxTokens"),
        ({"request": {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}}, "/request/stop"),
        ({"request": {"prompt": "hi", "taskType": "poetry"}}, "/request/taskType"),
        ({"request": {"prompt": ""}}, "/request"),
        ({"request": {"prompt": "hi"}, "selection": {"priority": "fastest"}}, "/selection/priority"),
        ({"request": {"prompt": "hi"}, "selection": {"provider": "nope"}}, "/selection/provider"),
        ({"request": {"prompt": "hi"}, "extra": True}, "/extra"),
        ({}, "/request"),
    ],
)
def test_invalid_params_list_each_field_path(spawn: Spawn, params: dict, path: str) -> None:
    sidecar = spawn(UNREACHABLE)
    response = sidecar.call("model:generate", params)
    assert error_of(response) == (-32602, "InvalidParams"), response
    paths = [e["path"] for e in response["error"]["data"]["errors"]]
    assert path in paths, paths


def test_oversized_line_is_discarded_and_answered(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE, args=("--max-message-bytes", "4096"))
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "model:generate",
                      "params": {"request": {"prompt": "x" * 100_000}}}).encode()
    sidecar.send_raw(big + b"\n")
    message = sidecar.next_message()
    assert message["id"] is None
    assert error_of(message) == (-32600, "MessageTooLarge")
    assert "providers" in sidecar.result("model:get-config")


def test_large_line_under_the_default_limit_is_read_whole(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    # 1 MiB of prompt: far past asyncio's 64 KiB StreamReader limit.
    response = sidecar.call("model:generate", {"request": {"prompt": "x" * (1 << 20), "bogus": 1}})
    assert response["error"]["data"]["errors"][0]["path"] == "/request/bogus"


def test_crlf_input_is_tolerated_and_output_is_lf_only(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    sidecar.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"model:get-config"}\r\n')
    assert "result" in sidecar.response(1)
    assert all(not line.endswith(b"\r") for line in sidecar.raw_lines)


def test_line_separators_are_escaped_in_output(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    model = "llama\u2028x\u2029y"
    result = sidecar.result("model:set-config", {"config": {"providers": {"ollama": {"defaultModel": model}}}})
    assert result["providers"]["ollama"]["defaultModel"] == model
    raw = sidecar.raw_lines[-1]
    assert b"\\u2028" in raw and b"\\u2029" in raw
    assert b"\xe2\x80\xa8" not in raw and b"\xe2\x80\xa9" not in raw


def test_notifications_are_never_answered(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    sidecar.send({"jsonrpc": "2.0", "method": "model:whatever", "params": {}})
    sidecar.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 12345}})
    sidecar.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": "junk"})
    response = sidecar.call("model:get-config")
    assert "result" in response
    assert sidecar.backlog == []


@pytest.mark.skipif(bool(os.environ.get("SIDECAR_CMD")), reason="needs PYTHONPATH, ignored by a frozen binary")
def test_stray_prints_and_child_processes_cannot_reach_stdout(spawn: Spawn, tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys, threading\n"
        "def _stray():\n"
        "    print('STRAY-PRINT', flush=True)\n"
        "    os.write(1, b'STRAY-FD1\\n')\n"
        "    os.system('echo STRAY-CHILD')\n"
        "threading.Timer(1.0, _stray).start()\n"
    )
    sidecar = spawn(UNREACHABLE, env={"PYTHONPATH": f"{hook}{os.pathsep}{REPO}"})
    time.sleep(2.0)
    assert "providers" in sidecar.result("model:get-config")
    assert sidecar.close() == 0
    stderr = bytes(sidecar.stderr)
    for marker in (b"STRAY-PRINT", b"STRAY-FD1", b"STRAY-CHILD"):
        assert marker in stderr
        assert all(marker not in line for line in sidecar.raw_lines)


def test_shutdown_request_answers_empty_and_exits_zero(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    started = time.monotonic()
    assert sidecar.result("sidecar:shutdown") == {}
    assert sidecar.proc.wait(5) == 0
    assert time.monotonic() - started < 2.0


def test_sigterm_exits_zero_within_two_seconds(spawn: Spawn) -> None:
    if sys.platform == "win32":
        pytest.skip("no SIGTERM on Windows")
    sidecar = spawn(UNREACHABLE)
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(5) == 0
    assert time.monotonic() - started < 2.0


def test_stdin_eof_exits_zero(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    started = time.monotonic()
    assert sidecar.close() == 0
    assert time.monotonic() - started < 2.0


def test_requests_after_shutdown_began_are_refused(spawn: Spawn) -> None:
    sidecar = spawn(UNREACHABLE)
    sidecar.start("sidecar:shutdown", request_id="s")
    sidecar.start("model:get-config", request_id="late")
    answers = {m["id"]: m for m in (sidecar.next_message(), sidecar.next_message())}
    assert answers["s"]["result"] == {}
    late = answers["late"]
    assert "result" in late or late["error"]["data"]["type"] == "RequestCancelled"


def test_a_host_that_stopped_reading_cannot_keep_the_sidecar_alive(tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("no SIGTERM on Windows")
    # No reader on stdout: the pipe fills, the writer blocks; SIGTERM must still end it.
    proc = subprocess.Popen([*sidecar_command(), "--data-dir", str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.readline()  # ready
    line = b'{"jsonrpc":"2.0","id":1,"method":"model:get-config"}\n'
    proc.stdin.write(line * 3000)
    proc.stdin.flush()
    time.sleep(1.5)  # the answers (about 1.5 MB) now fill the 64 KiB pipe
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(5)
    finally:
        proc.kill()
    assert code == 0
    assert time.monotonic() - started < 2.0
