"""The dispatcher over in-memory sends: ids, cancellation races, the exception boundary."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from sidecar.errors import ModelError
from sidecar.transport.dispatcher import Channel, Dispatcher, RequestContext
from sidecar.transport.stdio import Oversized, encode_message
from sidecar.wire.methods import EmptyParams, ListModelsParams


class Wire:
    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.out.append(message)

    def post(self, message: dict[str, Any]) -> bool:
        self.out.append(message)
        return True

    def responses(self) -> list[dict[str, Any]]:
        return [m for m in self.out if "method" not in m]


def make(handler: Any, params: Any = EmptyParams) -> tuple[Dispatcher, Wire]:
    wire = Wire()
    return Dispatcher(channels={"m": Channel("m", params, handler)}, send=wire.send, post=wire.post), wire


def line(**message: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **message})


async def settle(dispatcher: Dispatcher) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await dispatcher.wait_idle(2)
    await asyncio.sleep(0)


async def test_cancel_in_the_same_tick_still_answers_once() -> None:
    async def slow(_p: Any, _c: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    dispatcher, wire = make(slow)
    dispatcher.handle_line(line(id=1, method="m"))
    dispatcher.handle_line(line(method="$/cancelRequest", params={"id": 1}))
    await settle(dispatcher)
    assert len(wire.responses()) == 1
    assert wire.responses()[0]["error"]["code"] == -32800


async def test_a_handler_bug_is_internal_error_and_serving_goes_on() -> None:
    calls = 0

    async def buggy(_p: Any, _c: RequestContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("oops")
        return {"ok": True}

    dispatcher, wire = make(buggy)
    dispatcher.handle_line(line(id="a", method="m"))
    await settle(dispatcher)
    dispatcher.handle_line(line(id="b", method="m"))
    await settle(dispatcher)
    first, second = wire.responses()
    assert first["error"]["code"] == -32603 and first["error"]["data"]["type"] == "InternalError"
    assert "oops" not in first["error"]["message"]  # no internals on the wire
    assert second == {"jsonrpc": "2.0", "id": "b", "result": {"ok": True}}


async def test_sidecar_errors_keep_code_type_and_context() -> None:
    async def fail(_p: Any, _c: RequestContext) -> None:
        raise ModelError("overloaded", provider="anthropic", model_id="claude", status=529, retry_after_ms=40)

    dispatcher, wire = make(fail)
    dispatcher.handle_line(line(id=1, method="m"))
    await settle(dispatcher)
    error = wire.responses()[0]["error"]
    assert error["code"] == -32004
    assert error["data"] == {"type": "ModelError", "retryable": True, "provider": "anthropic",
                             "modelId": "claude", "status": 529, "retryAfterMs": 40}


async def test_partial_content_is_attached_to_a_failure() -> None:
    async def streams(_p: Any, ctx: RequestContext) -> None:
        ctx.error_data = lambda: {"partialContent": "Hel" + "lo"}
        raise ModelError("cut")

    dispatcher, wire = make(streams)
    dispatcher.handle_line(line(id=1, method="m"))
    await settle(dispatcher)
    assert wire.responses()[0]["error"]["data"]["partialContent"] == "Hello"


async def test_params_errors_use_wire_names() -> None:
    async def ok(_p: Any, _c: RequestContext) -> dict[str, Any]:
        return {}

    dispatcher, wire = make(ok, ListModelsParams)
    dispatcher.handle_line(line(id=1, method="m", params={"refresh": "maybe", "x": 1}))
    await settle(dispatcher)
    errors = wire.responses()[0]["error"]["data"]["errors"]
    assert {e["path"] for e in errors} == {"/refresh", "/x"}


async def test_oversized_marker_is_message_too_large() -> None:
    dispatcher, wire = make(None)
    dispatcher.handle_line(Oversized(123))
    assert wire.out[0]["id"] is None
    assert wire.out[0]["error"]["data"]["type"] == "MessageTooLarge"


@pytest.mark.parametrize("text", ["\u2028", "\u2029", "a\u2028b\u2029c"])
def test_encoded_lines_escape_line_separators(text: str) -> None:
    data = encode_message({"x": text})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b"\xe2\x80\xa8" not in data and b"\xe2\x80\xa9" not in data
    assert orjson.loads(data)["x"] == text


def test_lone_surrogates_and_nan_still_encode_as_valid_json() -> None:
    data = encode_message({"s": "bad \ud800 surrogate", "n": float("nan")})
    decoded = orjson.loads(data)
    assert decoded["n"] is None
    assert decoded["s"].startswith("bad ")
    data.decode("utf-8")  # valid UTF-8


def test_announced_channels_are_the_served_ones() -> None:
    from pathlib import Path

    from sidecar import CHANNEL_NAMES
    from sidecar.app import Lifecycle, Services, build_channels
    from sidecar.secrets import Redactor
    from sidecar.wire.registry import METHODS

    services = Services.build(Path("/nonexistent-sidecar-test"), {}, Redactor())
    assert sorted(build_channels(services, Lifecycle())) == sorted(CHANNEL_NAMES) == sorted(METHODS)


async def test_a_result_that_cannot_be_encoded_still_gets_one_answer() -> None:
    from sidecar.transport.stdio import encode_message

    async def huge(_p: Any, _c: RequestContext) -> dict[str, Any]:
        return {"tokens": 2**70}  # beyond what JSON encoders accept

    wire = Wire()

    async def encoding_send(message: dict[str, Any]) -> None:
        encode_message(message)  # what the real writer does first
        wire.out.append(message)

    dispatcher = Dispatcher(channels={"m": Channel("m", EmptyParams, huge)}, send=encoding_send, post=wire.post)
    dispatcher.handle_line(line(id=1, method="m"))
    await settle(dispatcher)
    assert len(wire.responses()) == 1
    assert wire.responses()[0]["error"]["data"]["type"] == "InternalError"
