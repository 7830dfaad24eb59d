"""Bad input, statefully: one spawned sidecar driven by a hypothesis state machine.

The machine mixes valid requests (fast generate/stream, get-config, usage, select),
requests that hang upstream (to cancel, and to reuse their ids while in flight),
cancels of known and unknown ids, ``model:set-config`` with good and bad patches (also
cancelled right after sending), lines above ``--max-message-bytes``, invalid UTF-8,
nesting past the parser's depth limit, ``NaN``/``Infinity`` literals, batches and
invalid envelopes.

Invariants after every step: the process lives; ``config.json`` parses and validates
and no temporary file is left in the data dir; a refused patch left the file
byte-for-byte as it was. At the end of every example: every id sent was answered
exactly once, well-formed (the published schemas), and every line that cannot carry an
id got exactly one ``id: null`` error.
"""

from __future__ import annotations

import itertools
import json
import queue
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sidecar.core.config import config_from_doc
from tests.fakes import FakeServer, Hang, Reply
from tests.hardening.conftest import build_config, entry
from tests.stdio.harness import SidecarProcess
from tests.stdio.schemas import assert_wire_valid

pytestmark = [pytest.mark.stdio, pytest.mark.hardening]

MAX_BYTES = 65536
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"

GOOD_PATCHES = [
    {"budget": {"dailyLimit": 1000, "alertThreshold": 0.5}},
    {"budget": {"dailyLimit": None, "timezone": "Europe/Paris"}},
    {"selection": {"priority": "cost"}},
    {"selection": {"priority": "quality", "fallback": False}},
    {"selection": None},
    {"deadlineMs": 30_000},
    {"deadlineMs": None},
    {"providers": {"custom": {"spare": {"enabled": True}}}},
    {"providers": {"custom": {"spare": {"enabled": False}}}},
    {"providers": {"custom": {"fast": {"rateLimit": {"maxRetries": 0, "maxConcurrent": 50}}}}},
    {"providers": {"custom": {"fast": {"headers": {"X-Team": "desk"}}}}},
    {"modelOverrides": {f"fast/{MODEL}": {"inputPer1M": 1.0, "outputPer1M": 2.0}}},
    {"modelOverrides": None},
    {"formatTemplates": {"t": {"schema": {"type": "object"}}}},
]
BAD_PATCHES = [
    {"defaultProvider": "ghost"},
    {"fallbackChain": ["fast", "ghost"]},
    {"budget": {"dailyLimit": -1}},
    {"budget": {"alertThreshold": 2}},
    {"budget": {"timezone": "Mars/Olympus_Mons"}},
    {"budget": {"blockOnLimit": "off"}},
    {"deadlineMs": 5},
    {"deadlineMs": "30000"},
    {"bogus": 1},
    {"providers": {"custom": {"fast": {"baseURL": "ftp://127.0.0.1/"}}}},
    {"providers": {"custom": {"fast": {"baseURL": "http://127.0.0.1:99999/v1"}}}},
    {"providers": {"custom": {"fast": {"headers": {"Bad Name": "x"}}}}},
    {"providers": {"custom": {"fast": {"headers": {"X-Ok": "caf\u00e9"}}}}},
    {"providers": {"custom": {"fast": {"timeoutMs": 1}}}},
    {"providers": {"custom": {"auto": {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m"}}}},
    {"providers": {"custom": {"new": {"baseURL": "http://127.0.0.1:1/v1"}}}},  # no defaultModel
    {"providers": {"openai": {"rateLimit": {"maxRetries": 11}}}},
    {"providers": {"custom": {"fast": None}}},  # defaultProvider would name a deleted entry
]
#: Lines that cannot be answered under an id: each gets exactly one ``id: null`` error.
NULL_ID_LINES = {
    "nan": b'{"jsonrpc":"2.0","id":"nan","method":"model:generate","params":{"request":{"prompt":"x","temperature":NaN}}}',
    "infinity": b'{"jsonrpc":"2.0","id":"inf","method":"model:select","params":{"request":{"prompt":"x","maxTokens":Infinity}}}',
    "utf8": b'{"jsonrpc":"2.0","id":"u","method":"model:select","params":{"request":{"prompt":"\xff\xfe\xc3"}}}',
    "lone-surrogate-bytes": b'{"jsonrpc":"2.0","id":"s","method":"model:get-config","params":{"x":"\xed\xa0\x80"}}',
    "batch": b'[{"jsonrpc":"2.0","id":"b1","method":"model:get-config"}]',
    "truncated": b'{"jsonrpc":"2.0","id":"t","method":"model:get-config"',
    "scalar": b"42",
    "float-id": b'{"jsonrpc":"2.0","id":1.5,"method":"model:get-config"}',
    "bool-id": b'{"jsonrpc":"2.0","id":true,"method":"model:get-config"}',
    "huge-int-id": b'{"jsonrpc":"2.0","id":9007199254740993,"method":"model:get-config"}',
}
#: Requests with a readable id that are wrong: answered under their id with an error.
INVALID_REQUESTS = [
    {"jsonrpc": "1.0", "method": "model:get-config"},
    {"jsonrpc": "2.0", "method": "model:nope"},
    {"jsonrpc": "2.0", "method": ""},
    {"jsonrpc": "2.0", "method": "model:generate", "params": []},
    {"jsonrpc": "2.0", "method": "model:generate", "params": {"request": {"prompt": "x", "maxTokens": "12"}}},
    {"jsonrpc": "2.0", "method": "model:generate", "params": {"request": {"prompt": "x", "temperature": 9}}},
    {"jsonrpc": "2.0", "method": "model:generate", "params": {"request": {"prompt": "x"}, "junk": 1}},
    {"jsonrpc": "2.0", "method": "model:select", "params": {"request": {"prompt": ""}}},
    {"jsonrpc": "2.0", "method": "model:stream", "params": {"request": {"prompt": "x"},
                                                           "selection": {"provider": "ghost"}}},
    {"jsonrpc": "2.0", "method": "model:set-config", "params": {"config": [1, 2]}},
    {"jsonrpc": "2.0", "method": "model:usage", "params": {"extra": True}},
]


def _check_config_file(data_dir: Path) -> bytes:
    raw = (data_dir / "config.json").read_bytes()
    doc = orjson.loads(raw)
    assert isinstance(doc, dict)
    config_from_doc(doc)  # raises when the stored file would not validate
    leftovers = [p.name for p in data_dir.iterdir() if p.name.startswith("config.json") and p.name != "config.json"]
    assert not leftovers, leftovers
    return raw


class SidecarMachine(RuleBasedStateMachine):
    sidecar: ClassVar[SidecarProcess]
    hang: ClassVar[FakeServer]
    ids: ClassVar[Any] = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.sent: set[Any] = set()  # every id that must get exactly one answer
        self.answers: Counter[Any] = Counter()
        self.null_expected = 0
        self.null_answers: list[dict[str, Any]] = []
        self.hanging: list[Any] = []  # ids of requests waiting on the Hang fake
        self.file = _check_config_file(self.sidecar.data_dir)

    # -- plumbing ---------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    def _note(self, message: dict[str, Any]) -> None:
        if "method" in message:
            assert_wire_valid(message)
            return
        assert_wire_valid(message)
        if message["id"] is None:
            self.null_answers.append(message)
        else:
            self.answers[message["id"]] += 1

    def _send(self, method: str, params: Any = None, *, request_id: Any = None, **extra: Any) -> str:
        request_id = request_id if request_id is not None else self._new_id(method.split(":")[-1][:3])
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
        if params is not None:
            message["params"] = params
        self.sidecar.send(message)
        self.sent.add(request_id)
        return request_id

    def _await(self, request_id: Any, timeout: float = 20) -> dict[str, Any]:
        message = self.sidecar.response(request_id, timeout)
        self._note(message)
        return message

    def _drain_available(self) -> None:
        while self.sidecar.backlog:
            self._note(self.sidecar.backlog.pop(0))
        while not self.sidecar.messages.empty():
            item = self.sidecar.messages.get_nowait()
            assert item is not None, "stdout closed"
            self._note(item)

    # -- valid traffic ------------------------------------------------------------------

    @rule(method=st.sampled_from(["model:generate", "model:stream"]), prompt=st.text(max_size=40))
    def generate(self, method: str, prompt: str) -> None:
        self._send(method, {"request": {"prompt": prompt or "hi", "maxTokens": 8},
                            "selection": {"provider": "fast"}})

    @rule(method=st.sampled_from(["model:get-config", "model:usage", "model:health", "model:list-models"]))
    def read_only(self, method: str) -> None:
        self._send(method, {})

    @rule(prompt=st.text(min_size=1, max_size=200), context=st.none() | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=10))
    def select(self, prompt: str, context: Any) -> None:
        request: dict[str, Any] = {"prompt": prompt}
        if context is not None:
            request["context"] = context
        self._send("model:select", {"request": request})

    @rule()
    def hanging_stream(self) -> None:
        if len(self.hanging) < 5:
            self.hanging.append(self._send("model:stream", {"request": {"prompt": "wait"},
                                                            "selection": {"provider": "hang"}}))

    @precondition(lambda self: bool(self.hanging))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self.hanging))
        self.hanging.remove(request_id)
        self.sidecar.cancel(request_id)
        answer = self._await(request_id)
        assert answer["error"]["data"]["type"] == "RequestCancelled", answer

    @rule(request_id=st.one_of(st.integers(-5, 10**6), st.text(max_size=8)))
    def cancel_unknown(self, request_id: Any) -> None:
        self.sidecar.cancel(f"unknown-{request_id}")  # ignored, never answered

    @precondition(lambda self: bool(self.hanging))
    @rule(data=st.data(), method=st.sampled_from(["model:get-config", "model:generate", "model:nope"]))
    def duplicate_id(self, data: st.DataObject, method: str) -> None:
        request_id = data.draw(st.sampled_from(self.hanging))
        self.sidecar.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": {}})
        self.null_expected += 1

    # -- configuration ------------------------------------------------------------------

    @rule(patch=st.sampled_from(GOOD_PATCHES), cancel=st.booleans())
    def set_config_good(self, patch: dict[str, Any], cancel: bool) -> None:
        request_id = self._send("model:set-config", {"config": patch})
        if cancel:
            self.sidecar.cancel(request_id)
        answer = self._await(request_id)
        if "error" in answer:
            # Cancelled before validation began; once written, the result comes back.
            assert cancel and answer["error"]["data"]["type"] == "RequestCancelled", answer
        self.file = _check_config_file(self.sidecar.data_dir)

    @rule(patch=st.sampled_from(BAD_PATCHES))
    def set_config_bad(self, patch: dict[str, Any]) -> None:
        before = (self.sidecar.data_dir / "config.json").read_bytes()
        answer = self._await(self._send("model:set-config", {"config": patch}))
        assert answer["error"]["code"] == -32602, answer
        assert all(e["path"].startswith("/config") for e in answer["error"]["data"]["errors"]), answer
        assert (self.sidecar.data_dir / "config.json").read_bytes() == before

    # -- bad lines ----------------------------------------------------------------------

    @rule(extra=st.integers(1, 5000), valid=st.booleans())
    def huge_line(self, extra: int, valid: bool) -> None:
        if valid:  # a well-formed request, just too long
            prompt = "x" * (MAX_BYTES + extra)
            line = json.dumps({"jsonrpc": "2.0", "id": self._new_id("big"), "method": "model:generate",
                               "params": {"request": {"prompt": prompt}}}).encode()
        else:
            line = b"{" * (MAX_BYTES + extra)
        self.sidecar.send_raw(line + b"\n")
        self.null_expected += 1

    @rule(kind=st.sampled_from(sorted(NULL_ID_LINES)))
    def unparseable(self, kind: str) -> None:
        self.sidecar.send_raw(NULL_ID_LINES[kind] + b"\n")
        self.null_expected += 1

    @rule(depth=st.integers(1025, 20000), inside=st.booleans())
    def too_deep(self, depth: int, inside: bool) -> None:
        nest = b"[" * depth + b"]" * depth
        if inside:
            line = (b'{"jsonrpc":"2.0","id":"deep","method":"model:select","params":{"request":'
                    b'{"prompt":"x","context":' + nest + b"}}}")
        else:
            line = nest
        self.sidecar.send_raw(line + b"\n")
        self.null_expected += 1

    @rule(depth=st.integers(2, 1000))
    def deep_but_parseable(self, depth: int) -> None:
        # Within the parser's limit: answered under its id (a result or an error).
        context = "[" * depth + "]" * depth
        request_id = self._new_id("nest")
        head = '{"jsonrpc":"2.0","id":"' + request_id + '","method":"model:select","params":{"request":'
        self.sidecar.send_raw((head + '{"prompt":"x","context":' + context + "}}}\n").encode())
        self.sent.add(request_id)

    @rule(index=st.integers(0, len(INVALID_REQUESTS) - 1))
    def invalid_request(self, index: int) -> None:
        message = dict(INVALID_REQUESTS[index])
        request_id = self._new_id("bad")
        message["id"] = request_id
        self.sidecar.send(message)
        self.sent.add(request_id)

    @rule(method=st.sampled_from(["model:get-config", "model:nope", "$/cancelRequest", "$/progress"]))
    def notification(self, method: str) -> None:
        self.sidecar.send({"jsonrpc": "2.0", "method": method, "params": {"id": "nobody"}})  # never answered

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def alive(self) -> None:
        assert self.sidecar.proc.poll() is None, self.sidecar.stderr.decode(errors="replace")[-2000:]

    @invariant()
    def config_file_is_whole_and_valid(self) -> None:
        assert _check_config_file(self.sidecar.data_dir) == self.file

    def teardown(self) -> None:
        for request_id in self.hanging:
            self.sidecar.cancel(request_id)
        deadline = time.monotonic() + 30
        while not (self.sent <= set(self.answers) and len(self.null_answers) >= self.null_expected):
            assert time.monotonic() < deadline, (self.sent - set(self.answers), len(self.null_answers),
                                                 self.null_expected)
            self._drain_available()
            try:
                self._note(self.sidecar.next_message(timeout=0.5))
            except queue.Empty:  # nothing yet: keep waiting until the deadline
                pass
        # A probe flushes anything still on its way: no second answer may follow.
        probe = self._new_id("probe")
        self.sidecar.send({"jsonrpc": "2.0", "id": probe, "method": "model:get-config"})
        while self.answers[probe] == 0:
            self._drain_available()
            if self.answers[probe] == 0:
                self._note(self.sidecar.next_message(timeout=20))
        assert {k: v for k, v in self.answers.items() if v != 1} == {}
        assert set(self.answers) == self.sent | {probe}
        assert len(self.null_answers) == self.null_expected, self.null_answers
        for answer in self.null_answers:
            assert answer["error"]["code"] in (-32700, -32600), answer


@pytest.fixture(scope="module")
def machine_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with FakeServer("llamacpp") as fast, FakeServer("llamacpp") as hang, FakeServer("llamacpp") as spare:
        fast.set_default(Reply("quick answer", chunk_delay_s=0.01))
        hang.set_default(Hang())
        providers = {"fast": entry(fast.base_url, model=MODEL),
                     "hang": entry(hang.base_url, model=MODEL),
                     "spare": entry(spare.base_url, model=MODEL, enabled=False)}
        data_dir = tmp_path_factory.mktemp("machine")
        (data_dir / "config.json").write_text(json.dumps(build_config(providers, default="fast", chain=["fast"])))
        sidecar = SidecarProcess(data_dir, args=("--max-message-bytes", str(MAX_BYTES)))
        try:
            assert "result" in sidecar.call("model:get-config")
            yield sidecar, hang
        finally:
            assert sidecar.proc.poll() is None, "the sidecar died"
            assert sidecar.close() == 0
            sidecar.assert_clean()
            for line in sidecar.raw_lines:
                assert_wire_valid(json.loads(line))


@pytest.mark.slow
def test_random_valid_and_invalid_traffic_never_breaks_the_sidecar_or_its_config(machine_sidecar: Any) -> None:
    SidecarMachine.sidecar, SidecarMachine.hang = machine_sidecar
    run_state_machine_as_test(SidecarMachine, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
