"""kill -9 at random points under load, ten times over one persistent data dir.

The rule for what the ledger must hold after a crash (the sidecar settles a call's usage
row, committed, before it sends the answer; see docs/protocol.md):

* **answered ⊆ ledger**: every request whose successful answer reached the host is in
  the ledger (its ``request_id`` column), exactly once;
* **ledger ⊆ served**: every ledger row is a call the fake served whole (its last byte
  written: ``FakeServer.served``), each prompt naming its request id;
* **served minus ledger** is allowed only for requests the host never got an answer for:
  calls the kill caught between the provider's last byte and the commit. They are lost
  to billing, as the provider's own invoice would still show them; the window is a few
  milliseconds per call.

And at every restart: no reservation survives (``reservedUsd`` is 0, the reservations
table is empty: the killed process's holds are charged at their reserved amount at
start-up, as ``abandoned`` rows), money adds up exactly (each call costs the same, so
spend = rows * cost + the charged holds), the ledger was not moved
aside as corrupt, and ``config.json`` is whole, valid, one of the versions written, with
no temporary file left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from sidecar.core.config import config_from_doc
from tests.fakes import FakeServer, Reply
from tests.hardening.conftest import build_config, entry
from tests.stdio.harness import SidecarProcess
from tests.stdio.schemas import assert_wire_valid

pytestmark = [pytest.mark.stdio, pytest.mark.hardening]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
CYCLES = 10
LOAD = 80
USAGE = (10, 5)
#: $1000 / $2000 per 1M tokens: (10, 5) tokens cost 20 000 micro-dollars a call.
PRICE = {"inputPer1M": 1000.0, "outputPer1M": 2000.0}
CALL_MICROS = USAGE[0] * 1000 + USAGE[1] * 2000


def _ledger_rows(data_dir: Path) -> tuple[list[str], int, int]:
    """(request ids of the usage rows of answered calls, open reservations, micro-dollars
    charged for reservations the killed processes left), read beside the running sidecar."""
    with sqlite3.connect(data_dir / "usage.sqlite3", timeout=5) as db:
        ids = [str(row[0]) for row in db.execute("SELECT request_id FROM usage WHERE outcome != 'abandoned'")]
        (reservations,) = db.execute("SELECT COUNT(*) FROM reservations").fetchone()
        (charged,) = db.execute("SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE outcome = 'abandoned'"
                                ).fetchone()
    db.close()
    return ids, int(reservations), int(charged)


def _config_ok(data_dir: Path, versions: set[float]) -> None:
    doc = orjson.loads((data_dir / "config.json").read_bytes())
    config = config_from_doc(doc)
    assert config.budget.alert_threshold in versions, (config.budget.alert_threshold, versions)
    leftovers = [p.name for p in data_dir.iterdir() if p.name.startswith("config.json.")]
    assert not leftovers, leftovers


def _stale_cleared(sidecar: SidecarProcess) -> int:
    for line in bytes(sidecar.stderr).split(b"\n"):
        if b'"ledger_open"' in line:
            return int(json.loads(line)["stale_reservations"])
    raise AssertionError("no ledger_open line")


def _served_ids(fake: FakeServer) -> list[str]:
    return [r.json["messages"][-1]["content"].split()[-1] for r in fake.served]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_at_random_points_under_load_keeps_the_ledger_and_config_right(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    answered: set[str] = set()
    versions = {0.8}
    stale_total = 0
    with FakeServer("llamacpp") as fake:
        fake.set_default(Reply("settled answer", usage=USAGE, delay_s=0.05, chunk_delay_s=0.02))
        config = build_config({"fast": entry(fake.base_url, model=MODEL,
                                             rateLimit={"maxRetries": 0, "maxConcurrent": 8})},
                              default="fast", budget={"dailyLimit": 10_000, "alertThreshold": 0.8},
                              modelOverrides={f"fast/{MODEL}": PRICE})
        (data_dir / "config.json").write_text(json.dumps(config))
        for cycle in range(CYCLES + 1):
            sidecar = SidecarProcess(data_dir)
            # -- after the previous kill: everything adds up ------------------------------
            _config_ok(data_dir, versions)
            assert not list(data_dir.glob("usage.sqlite3.corrupt-*")), f"seed {seed}"
            usage = sidecar.result("model:usage")
            rows, reservations, charged = _ledger_rows(data_dir)
            served = _served_ids(fake)
            context = f"seed {seed}, cycle {cycle}"
            assert reservations == 0 and usage["daily"]["reservedUsd"] == 0, context
            assert len(rows) == len(set(rows)), context  # one row per call, never twice
            assert answered <= set(rows), (context, answered - set(rows))
            assert set(rows) <= set(served), (context, set(rows) - set(served))
            assert usage["byProvider"].get("fast", {}).get("requests", 0) == len(rows), context
            assert round(usage["daily"]["spentUsd"] * 1e6) == len(rows) * CALL_MICROS + charged, context
            assert usage["byProvider"].get("fast", {}).get("promptTokens", 0) == len(rows) * USAGE[0], context
            if cycle:
                stale_total += _stale_cleared(sidecar)
            if cycle == CYCLES:
                # The last start: it serves at once, with nothing held by the dead.
                assert "result" in sidecar.call("model:generate", {"request": {"prompt": "after all the kills"}})
                assert sidecar.close() == 0
                sidecar.assert_clean()
                break

            # -- load, then kill -9 at a random point --------------------------------------
            ids = [f"c{cycle}-{i}" for i in range(LOAD)]
            for request_id in ids:
                method = rng.choice(["model:generate", "model:stream"])
                sidecar.start(method, {"request": {"prompt": f"please answer {request_id}", "maxTokens": 8}},
                              request_id=request_id)
            if rng.random() < 0.5:
                threshold = round(0.5 + cycle / 40, 3)
                versions.add(threshold)  # the kill may land before, during or after the write
                sidecar.start("model:set-config", {"config": {"budget": {"alertThreshold": threshold}}})
            first = sidecar.response(ids[0], timeout=20)  # the load is flowing
            assert "result" in first, first
            time.sleep(rng.uniform(0, 0.8))
            sidecar.proc.send_signal(signal.SIGKILL)
            sidecar.proc.wait(10)
            sidecar._out.join(10)
            messages = list(sidecar.backlog)
            while (item := sidecar.messages.get(timeout=5)) is not None:
                messages.append(item)
            for message in messages:
                assert_wire_valid(message)
                if message.get("id") in ids and "result" in message:
                    answered.add(message["id"])
            answered.add(first["id"])
            # A kill mid-write may leave an unterminated last line; every whole line parsed.
            assert all(json.loads(line) is not None for line in sidecar.raw_lines)
    # The kills really landed under load: the fake served less than was asked, and some
    # restart found the killed process's reservations and dropped them.
    assert len(answered) < CYCLES * LOAD, f"seed {seed}"
    assert stale_total > 0, f"seed {seed}: no kill caught a reservation open"
