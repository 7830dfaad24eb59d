"""hypothesis: random bytes and random JSON on stdin never kill the sidecar, and every
request with an id gets exactly one response."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stdio.harness import SidecarProcess
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio

METHODS = ["model:get-config", "model:generate", "model:stream", "model:list-models", "model:health",
           "model:set-config", "model:nope", "$/cancelRequest", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
params = st.one_of(
    json_values,
    st.fixed_dictionaries({"request": st.fixed_dictionaries(
        {"prompt": st.text(max_size=30)},
        optional={"temperature": st.floats(-1, 3), "maxTokens": st.integers(-5, 50),
                  "stop": st.lists(st.text(max_size=3), max_size=6), "junk": json_values})}),
    st.fixed_dictionaries({"config": st.dictionaries(
        st.sampled_from(["defaultProvider", "budget", "selection", "fallbackChain", "bogus"]), json_values,
        max_size=2)}),
)
requests = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]), "method": st.sampled_from(METHODS)},
    optional={"params": params},
)
lines = st.lists(
    st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=200).filter(lambda b: b"\n" not in b)),
        st.tuples(st.just("json"), json_values),
        st.tuples(st.just("request"), requests),
        st.tuples(st.just("notification"), requests),
    ),
    min_size=1,
    max_size=8,
)

CONFIG = {
    "providers": {"ollama": {"baseURL": "http://127.0.0.1:9", "rateLimit": {"maxRetries": 0}}},
    "fallbackChain": ["ollama"],
}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    (data_dir / "config.json").write_text(json.dumps(CONFIG))
    process = SidecarProcess(data_dir)
    yield process
    assert process.proc.poll() is None, "the sidecar died"
    assert process.close() == 0
    process.assert_clean()


_ids = itertools.count()


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=lines)
def test_random_input_never_kills_and_each_id_is_answered_once(sidecar: SidecarProcess, batch: list) -> None:
    sent_ids: list[str] = []
    payload = b""
    for kind, value in batch:
        if kind == "bytes":
            payload += value + b"\n"
        elif kind == "json":
            payload += json.dumps(value).encode() + b"\n"
        else:
            message = dict(value)
            if kind == "request":
                message["id"] = f"f{next(_ids)}"
            line = json.dumps(message).encode()
            if kind == "request" and _parses(line):
                # Even an invalid request (bad jsonrpc, empty method) is answered under its
                # id; a line that is not JSON at all (a 65-bit integer) is answered id null.
                sent_ids.append(message["id"])
            payload += line + b"\n"
    probe = f"probe{next(_ids)}"
    payload += json.dumps({"jsonrpc": "2.0", "id": probe, "method": "model:get-config"}).encode() + b"\n"
    sidecar.send_raw(payload)
    # Every request id must be answered exactly once; the probe proves the process still serves.
    answered: dict[Any, int] = {}
    pending = set(sent_ids) | {probe}
    while pending:
        message = sidecar.wait_for(lambda m: "method" not in m, timeout=15)
        assert_wire_valid(message)
        if message["id"] is not None:
            answered[message["id"]] = answered.get(message["id"], 0) + 1
            pending.discard(message["id"])
    # A second probe flushes anything still on its way: no id may be answered twice.
    second = f"probe{next(_ids)}"
    sidecar.send({"jsonrpc": "2.0", "id": second, "method": "model:get-config"})
    while True:
        message = sidecar.wait_for(lambda m: "method" not in m, timeout=15)
        if message["id"] == second:
            break
        if message["id"] is not None:
            answered[message["id"]] = answered.get(message["id"], 0) + 1
    assert all(count == 1 for count in answered.values()), answered
    assert set(answered) <= set(sent_ids) | {probe}
