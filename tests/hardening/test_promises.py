"""Promises that ``scripts/mutants.py`` found unguarded: each test here kills a mutant
that the rest of the suite let through.

* A long stream (hundreds of chunks) reaches the host whole and numbered: the stdio
  harness checks every stream's ``seq`` as it reads, so a gap far into a stream fails.
* A host's ``$/cancelRequest`` of a ``model:generate`` whose provider never answers closes
  the upstream HTTP request (not only the answer to the host).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes import FakeServer, Hang, Reply
from tests.hardening.conftest import build_config, entry

pytestmark = [pytest.mark.stdio, pytest.mark.hardening, pytest.mark.timeout(60)]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_long_stream_arrives_whole_and_numbered(spawn: Any) -> None:
    pieces = [f" w{i}" for i in range(300)]
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply(chunks=pieces))
        sidecar = spawn(build_config({"fake": entry(fake.base_url, model=MODEL)}, default="fake"))
        request_id = sidecar.start("model:stream", {"request": {"prompt": "count"}})
        response = sidecar.response(request_id)
        chunks = [m["params"] for m in sidecar.notifications("model:stream-chunk", request_id)]
    assert response["result"]["content"] == "".join(pieces)
    assert len(chunks) == len(pieces) + 1 and chunks[-1]["chunk"]["done"] is True


def test_cancelling_a_generate_closes_the_upstream_request(spawn: Any) -> None:
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Hang())
        # The provider's own timeout (120 s by default) is far away: only the cancel can close it.
        sidecar = spawn(build_config({"fake": entry(fake.base_url, model=MODEL)}, default="fake"))
        request_id = sidecar.start("model:generate", {"request": {"prompt": "wait"}})
        fake.wait_for_requests(1, timeout=10)
        sidecar.cancel(request_id)
        error = sidecar.response(request_id)["error"]
        assert error["data"]["type"] == "RequestCancelled", error
        assert fake.requests[0].disconnected.wait(3), "the upstream request was left open"
