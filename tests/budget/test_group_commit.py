"""Group commit: concurrent settles share one commit (one fsync), and still no answer goes
out before its usage row is durable.

Seen from outside, like ``test_durability``: the sidecar runs under ``strace``, which
records the ledger's syncs, the provider answers read from sockets and the response lines
written to stdout, in order. Then ``kill -9`` in the middle of a burst of paid calls: every
call the host got an answer for is in the ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.store.ledger import Cap, Ledger, UsageRecord
from tests.budget.test_durability import _LEDGER_FILES, _SYNC
from tests.fakes import FakeServer, Reply
from tests.hardening.conftest import build_config, entry
from tests.stdio.harness import SidecarProcess

pytestmark = [pytest.mark.stdio, pytest.mark.timeout(180)]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
CALLS = 24
PRICE = {"inputPer1M": 1000.0, "outputPer1M": 1000.0}




def _completed_syncs(lines: list[str]) -> list[int]:
    """Where each fsync of the ledger *returned*: a call another thread's line interrupted
    (``<unfinished ...>``) returns at its ``<... fdatasync resumed>`` line."""
    out = []
    for index, line in enumerate(lines):
        match = _SYNC.search(line)
        if not match or Path(match.group(1)).name not in _LEDGER_FILES:
            continue
        if "<unfinished" not in line:
            out.append(index)
            continue
        pid = line.split()[0]
        out.append(next(i for i in range(index + 1, len(lines))
                        if lines[i].startswith(pid + " ") and "resumed>" in lines[i]))
    return out


def _config(base_url: str) -> dict[str, Any]:
    return build_config({"paid": entry(base_url, model=MODEL, rateLimit={"maxRetries": 0, "maxConcurrent": 64})},
                        default="paid", chain=[], modelOverrides={f"paid/{MODEL}": PRICE})


def _burst(sidecar: SidecarProcess, prefix: str) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(CALLS)]
    for request_id in ids:
        sidecar.start("model:generate", {"request": {"prompt": f"answer {request_id}", "maxTokens": 8}},
                      request_id=request_id)
    return ids


def test_concurrent_paid_calls_share_fsyncs_and_each_answer_follows_a_commit(traced_sidecar: Any) -> None:
    with FakeServer("llamacpp").start() as fake:
        # Every call is in flight before the first answer: the answers arrive together.
        fake.set_default(Reply("a priced answer", usage=(10, 4), delay_s=0.3))
        sidecar, log = traced_sidecar(_config(fake.base_url))
        assert "result" in sidecar.call("model:usage")
        ids = _burst(sidecar, "burst")
        for request_id in ids:
            response = sidecar.response(request_id, timeout=60)
            assert response["result"]["metadata"]["costUsd"] > 0, response
        assert sidecar.close() == 0
    lines = log.read_text(errors="replace").splitlines()
    # A provider's answer is read where its recvfrom returns (the bytes are on that line).
    answers = [i for i, line in enumerate(lines)
               if ("recvfrom(" in line or "recvfrom resumed>" in line) and "chat.completion" in line]
    # The response lines written to the host (stdout may be any descriptor: match the text).
    writes = [(i, sum(f'\\"jsonrpc\\":\\"2.0\\",\\"id\\":\\"{rid}\\"' in line for rid in ids))
              for i, line in enumerate(lines) if "write(" in line]
    writes = [(i, n) for i, n in writes if n]
    syncs = _completed_syncs(lines)
    assert len(answers) == CALLS and sum(n for _i, n in writes) == CALLS, (len(answers), writes)
    settle_syncs = [s for s in syncs if s > answers[0]]
    # Without group commit each paid settle is its own fsync (CALLS of them).
    assert 0 < len(settle_syncs) < CALLS, f"{len(settle_syncs)} ledger syncs for {CALLS} settles"
    # Durable before answered: whenever k answers have been written, the last ledger sync
    # before that write came after at least k provider answers had been read.
    written = 0
    for index, count in writes:
        written += count
        last_sync = max((s for s in syncs if s < index), default=-1)
        durable = sum(1 for a in answers if a < last_sync)
        assert durable >= written, f"{written} answers written at line {index}, only {durable} synced"


def test_kill_9_in_a_burst_loses_no_answered_call(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply("a priced answer", usage=(10, 4), delay_s=0.2))
        (data_dir / "config.json").write_text(json.dumps(_config(fake.base_url)))
        sidecar = SidecarProcess(data_dir)
        assert "result" in sidecar.call("model:usage")
        ids = _burst(sidecar, "kill")
        first = sidecar.response(ids[0], timeout=30)  # answers are flowing: kill among them
        assert "result" in first, first
        os.kill(sidecar.proc.pid, signal.SIGKILL)
        sidecar.proc.wait(10)
        sidecar._out.join(10)
        answered = {first["id"]}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (item := sidecar.messages.get(timeout=5)) is not None:
            if item.get("id") in ids and "result" in item:
                answered.add(item["id"])
        answered |= {m["id"] for m in sidecar.backlog if m.get("id") in ids and "result" in m}
    with sqlite3.connect(data_dir / "usage.sqlite3", timeout=5) as db:
        rows = {str(r[0]) for r in db.execute("SELECT request_id FROM usage WHERE outcome != 'abandoned'")}
    db.close()
    assert answered <= rows, sorted(answered - rows)


def _count_commits(ledger: Ledger) -> list[int]:
    """A list that grows by one for each transaction ``ledger`` commits from now on."""
    commits: list[int] = []
    tx = ledger._tx

    def counting_tx(body: Any, **kwargs: Any) -> Any:
        commits.append(1)
        return tx(body, **kwargs)

    ledger._tx = counting_tx  # type: ignore[method-assign]
    return commits


def test_settles_queued_together_commit_once_and_each_gets_its_row(tmp_path: Path) -> None:
    """In process: settles queued while the worker thread is busy go in one transaction;
    each caller gets its own row id, and the rows are all there after a reopen."""
    ledger = Ledger.open(tmp_path)
    commits = _count_commits(ledger)

    def record(i: int) -> UsageRecord:
        return UsageRecord(ts_ms=1_000 + i, request_id=f"r{i}", provider="paid", model="m",
                           prompt_tokens=1, completion_tokens=1, cost_micros=10 + i)

    async def main() -> list[int | None]:
        busy = asyncio.get_running_loop().run_in_executor(ledger._executor, time.sleep, 0.2)
        results = await asyncio.gather(*(ledger.settle(None, record(i)) for i in range(CALLS)))
        await busy
        return results

    row_ids = asyncio.run(main())
    ledger.close()
    assert len(commits) == 1, commits
    assert all(isinstance(r, int) for r in row_ids) and len(set(row_ids)) == CALLS, row_ids
    reopened = Ledger.open(tmp_path)
    try:
        assert asyncio.run(reopened.record_count()) == CALLS
        assert asyncio.run(reopened.spend(0, 10_000)) == sum(10 + i for i in range(CALLS))
    finally:
        reopened.close()


def test_reserves_queued_together_commit_once_and_still_respect_the_cap(tmp_path: Path) -> None:
    """Queued reservations share one transaction, each checked against the cap with the
    ones before it in the group counted: 24 holds of 10 against a cap of 100 admit 10."""
    ledger = Ledger.open(tmp_path)
    commits = _count_commits(ledger)
    caps = [Cap(0, 10_000, 100)]

    async def main() -> list[Any]:
        busy = asyncio.get_running_loop().run_in_executor(ledger._executor, time.sleep, 0.2)
        results = await asyncio.gather(*(
            ledger.reserve(ts_ms=1_000, request_id=f"r{i}", provider="paid", model="m", amount_micros=10,
                           caps=caps, block=True) for i in range(CALLS)))
        await busy
        return results

    try:
        results = asyncio.run(main())
        assert len(commits) == 1, commits
        admitted = [r for r in results if r.reservation_id is not None]
        assert len(admitted) == 10 and all(r.over for r in results if r.reservation_id is None)
        assert asyncio.run(ledger.reserved()) == (10, 100)
    finally:
        ledger.close()


async def test_a_burst_of_paid_settles_reads_spend_with_the_settles_and_still_alerts(
        manager_for: Any, ledger: Ledger, alerts: Any) -> None:
    """Each paid settle reads the capped periods' spend on the same visit to the ledger's
    thread, after its commit: no alert check visits the ledger on its own, and the
    threshold crossed in the burst is announced once."""
    manager, _ = manager_for(daily_limit=1.0, alert_threshold=0.5)
    reads: list[int] = []
    spends = ledger.spends

    async def counting_spends(ranges: Any) -> list[int]:
        reads.append(1)
        return await spends(ranges)

    ledger.spends = counting_spends  # type: ignore[method-assign]
    reservations = [await manager.reserve(request_id=f"r{i}", provider="openai", model="gpt-4o", amount_usd=0.04)
                    for i in range(CALLS)]
    await asyncio.gather(*(manager.settle(r, cost_usd=0.03, prompt_tokens=1, completion_tokens=1)
                           for r in reservations))
    await manager.drain()
    assert alerts.kinds() == [("daily", 0.5)]  # 24 x $0.03 = $0.72 crossed $0.50 in the burst
    assert reads == [], f"{len(reads)} separate spend reads for {CALLS} settles"


async def test_a_settle_reads_the_spends_it_asks_for_after_its_own_commit(ledger: Ledger) -> None:
    """``settle_soon(read_spends=...)`` answers with the spend of each period as committed,
    its own row and every settle written in the same transaction included."""
    first = ledger.settle_soon(None, UsageRecord(ts_ms=5, request_id="a", provider="p", model="m",
                                                 prompt_tokens=1, completion_tokens=1, cost_micros=300),
                               read_spends=[(0, 10), (5, 6), (6, 100)])
    second = ledger.settle_soon(None, UsageRecord(ts_ms=7, request_id="b", provider="p", model="m",
                                                  prompt_tokens=1, completion_tokens=1, cost_micros=40),
                                read_spends=[(0, 10)])
    plain = ledger.settle_soon(None, UsageRecord(ts_ms=8, request_id="c", provider="p", model="m",
                                                 prompt_tokens=1, completion_tokens=1, cost_micros=2))
    one, two, three = await asyncio.gather(first, second, plain)
    assert one.row_id is not None and two.row_id is not None and three.row_id is not None
    assert one.spends in ((300, 300, 0), (340, 300, 40), (342, 300, 42))  # read after its commit
    assert two.spends in ((340,), (342,)) and three.spends is None
    assert await ledger.spends([(0, 10)]) == [342]


async def test_alerts_are_still_sent_when_the_spends_cannot_be_read_with_the_settle(
        manager_for: Any, ledger: Ledger, alerts: Any) -> None:
    """Reading the spends after the commit fails (the settle itself is written): the
    budget reads them on a visit of their own and still announces what they reach."""
    manager, _ = manager_for(daily_limit=1.0, alert_threshold=0.5)
    real = ledger._spends_now
    failures: list[str] = []

    def fails_once(ranges: Any) -> list[int]:
        if not failures:
            failures.append("read failed")
            raise sqlite3.OperationalError("disk I/O error")
        return real(ranges)

    ledger._spends_now = fails_once  # type: ignore[method-assign]
    reservation = await manager.reserve(request_id="r", provider="openai", model="gpt-4o", amount_usd=0.8)
    await manager.settle(reservation, cost_usd=0.6, prompt_tokens=1, completion_tokens=1)
    await manager.drain()
    assert failures == ["read failed"]
    assert alerts.kinds() == [("daily", 0.5)]
    assert (await manager.usage())["daily"]["spentUsd"] == 0.6
