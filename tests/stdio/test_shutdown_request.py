"""``sidecar:shutdown`` is answered ``{}`` whatever else ends the process meanwhile."""

from __future__ import annotations

import json
import queue
import time
from typing import Any

import pytest

from tests.fakes import Hang
from tests.stdio.conftest import Spawn, fake_config

pytestmark = pytest.mark.stdio


def answers(sidecar: Any, timeout: float = 5) -> dict[Any, dict[str, Any]]:
    """Every response until stdout closes, by id."""
    found: dict[Any, dict[str, Any]] = {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            message = sidecar.next_message(timeout=max(0.05, end - time.monotonic()))
        except (EOFError, queue.Empty):
            break
        if "id" in message:
            found[message["id"]] = message
    return found


def test_a_shutdown_followed_at_once_by_eof_is_answered_empty(spawn: Spawn, fakes: dict[str, Any]) -> None:
    # Regression: EOF came while sidecar:shutdown waited for the other requests; the EOF
    # path cancelled every request in flight, the shutdown request included (-32800).
    fakes["openai"].set_default(Hang())
    sidecar = spawn(fake_config(fakes, fallbackChain=[]))
    sidecar.start("model:generate", {"request": {"prompt": "hang"}}, request_id="slow")
    fakes["openai"].wait_for_requests(1)
    line = {"jsonrpc": "2.0", "id": "bye", "method": "sidecar:shutdown", "params": {}}
    sidecar.send_raw(json.dumps(line).encode() + b"\n")
    assert sidecar.proc.stdin is not None
    sidecar.proc.stdin.close()  # the host closes the pipe right after asking to stop
    got = answers(sidecar)
    assert got["bye"].get("result") == {}, got["bye"]
    assert got["slow"]["error"]["data"]["type"] == "RequestCancelled"
    assert sidecar.proc.wait(5) == 0



def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deep_member_outside_params_is_refused_whole(spawn: Spawn) -> None:
    # Regression: a line too deep anywhere skipped the duplicate-key check, and the
    # request ran as its last id.
    sidecar = spawn()
    line = ('{"jsonrpc":"2.0","id":1,"id":2,"method":"model:get-config","params":{},"x":'
            + nested(140) + "}")
    sidecar.send_raw(line.encode() + b"\n")
    answer = sidecar.next_message()
    assert answer["error"]["code"] == -32600, answer
    assert "result" not in answer


def test_deep_params_are_invalid_params_even_beside_a_deeper_member(spawn: Spawn) -> None:
    # Regression: the deep path found first lay outside params, so the deep config went
    # on to the handler and failed as -32603 RecursionError.
    sidecar = spawn()
    headers = '{"X-A":' * 900 + '"v"' + "}" * 900
    line = ('{"jsonrpc":"2.0","id":7,"method":"model:set-config","params":{"config":{"providers":'
            '{"custom":{"x":{"baseURL":"http://127.0.0.1:9/v1","defaultModel":"m","headers":' + headers
            + '}}}}},"zz":' + nested(950) + "}")
    sidecar.send_raw(line.encode() + b"\n")
    answer = sidecar.next_message()
    assert answer["id"] == 7 and answer["error"]["code"] == -32602, answer
    assert sidecar.result("model:get-config")["providers"]["custom"].get("x") is None
