"""A priced call's usage row is on disk before its answer is sent, seen from outside.

The sidecar runs under ``strace``, which records, in order, the ledger's ``fsync`` and
``fdatasync`` calls (with the path of each file descriptor), the reads from sockets (the
provider's answer arriving) and the writes (the response line going to the host). For a
priced call the ledger file or its WAL must be synced after the provider's answer came in
and before the response line is written: that is the settle of the call, made durable
before the host hears of it. It is also synced before the request goes out (the
reservation). This holds for the real system calls whatever SQLite's settings say.

Without ``strace`` (or where the kernel refuses to trace) the test is skipped on a
developer's machine (``apt-get install -y strace``) and fails in CI (``CI=true``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer, Reply
from tests.hardening.conftest import build_config, entry

pytestmark = [pytest.mark.stdio, pytest.mark.timeout(120)]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SYNC = re.compile(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>")
_LEDGER_FILES = ("usage.sqlite3", "usage.sqlite3-wal")


def _events(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def _first(lines: list[str], needle: str, syscall: str) -> int:
    for index, line in enumerate(lines):
        if needle in line and syscall in line:
            return index
    raise AssertionError(f"no {syscall} with {needle!r} in the trace")


def _ledger_syncs(lines: list[str]) -> list[int]:
    out = []
    for index, line in enumerate(lines):
        match = _SYNC.search(line)
        if match and Path(match.group(1)).name in _LEDGER_FILES:
            out.append(index)
    return out




@pytest.mark.parametrize("method", ["model:generate", "model:stream"])
def test_a_priced_call_is_synced_to_the_ledger_before_its_answer_is_written(traced_sidecar: Any,
                                                                              method: str) -> None:
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply("a priced answer in four chunks", usage=(10, 4), chunk_delay_s=0.05))
        config = build_config({"paid": entry(fake.base_url, model=MODEL)}, default="paid", chain=[],
                              modelOverrides={f"paid/{MODEL}": {"inputPer1M": 1000.0, "outputPer1M": 1000.0}})
        sidecar, log = traced_sidecar(config)
        assert "result" in sidecar.call("model:usage")
        request_id = "priced-call"
        sidecar.start(method, {"request": {"prompt": "hello", "maxTokens": 16}}, request_id=request_id)
        response = sidecar.response(request_id, timeout=30)
        assert response["result"]["metadata"]["costUsd"] > 0, response
        assert sidecar.close() == 0
    lines = _events(log)
    # The provider's answer: the first socket read carrying a chat completion.
    answered = _first(lines, "chat.completion", "recvfrom(")
    # The answer to the host: the write of the line with the request's id.
    written = _first(lines, f'\\"id\\":\\"{request_id}\\"', "write(")
    assert answered < written
    syncs = _ledger_syncs(lines)
    assert [i for i in syncs if i < answered], "the reservation was not synced before the request went out"
    assert [i for i in syncs if answered < i < written], (
        "no fsync of the ledger between the provider's answer and the response line: "
        f"syncs at {syncs}, answer read at {answered}, response written at {written}")
