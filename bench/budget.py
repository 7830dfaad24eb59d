"""Budget ledger figures: reserve+settle latency and throughput with ``synchronous=FULL``.

    .venv/bin/python bench/budget.py [--requests 2000] [--concurrency 64] [--seed-rows 100000]

Measures, on a real ``usage.sqlite3`` in a temp dir (same disk as the data dir would be):

* raw SQLite: one ``BEGIN IMMEDIATE``/insert/``COMMIT`` with WAL + ``synchronous=FULL``,
  the floor every ledger write pays (an fsync of the WAL);
* ``BudgetManager.reserve`` + ``settle``, one request at a time: p50/p99 of each;
* the same with ``--concurrency`` requests in flight: throughput and p50/p99 per pair;
* with ``--seed-rows`` records already in the month: reserve and ``usage()`` latency
  (the period sums are cached in the ledger thread, so reserve stays flat);
* overshoot under a burst of 200 concurrent calls against a $1 limit, ours versus a
  check-then-record policy (spend checked before the call, recorded after: what proxies
  that check budgets after spending do).

Writes ``bench/results-budget.json``. Quote ratios: these 2-core machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from sidecar.core.budget import BudgetManager, periods_at
from sidecar.errors import BudgetExceededError
from sidecar.store.ledger import Ledger, UsageRecord
from sidecar.wire.config import BudgetConfig

OUT = Path(__file__).resolve().parent / "results-budget.json"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "mean": round(statistics.fmean(values), 3)}


def raw_commit_ms(directory: Path, n: int) -> dict[str, float]:
    db = sqlite3.connect(directory / "raw.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    times = []
    for i in range(n):
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (i,))
        db.execute("COMMIT")
        times.append((time.perf_counter() - started) * 1000)
    db.close()
    return summary(times)


async def sequential(manager: BudgetManager, n: int) -> dict[str, Any]:
    reserve, settle, pair = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        held = await manager.reserve(request_id=f"s{i}", provider="openai", model="gpt-4o", amount_usd=0.002)
        t1 = time.perf_counter()
        await manager.settle(held, cost_usd=0.001, prompt_tokens=100, completion_tokens=50)
        t2 = time.perf_counter()
        reserve.append((t1 - t0) * 1000)
        settle.append((t2 - t1) * 1000)
        pair.append((t2 - t0) * 1000)
    return {"reserve_ms": summary(reserve), "settle_ms": summary(settle), "pair_ms": summary(pair),
            "pairs_per_s": round(n / (sum(pair) / 1000), 1)}


async def concurrent(manager: BudgetManager, n: int, width: int) -> dict[str, Any]:
    pair: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            t0 = time.perf_counter()
            held = await manager.reserve(request_id=f"c{i}", provider="openai", model="gpt-4o", amount_usd=0.002)
            await manager.settle(held, cost_usd=0.001, prompt_tokens=100, completion_tokens=50)
            pair.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    elapsed = time.perf_counter() - started
    return {"in_flight": width, "pairs": n, "pairs_per_s": round(n / elapsed, 1), "pair_ms": summary(pair)}


async def big_month(ledger: Ledger, manager: BudgetManager, rows: int) -> dict[str, Any]:
    month = periods_at(datetime.now(UTC), UTC)[1]
    step = max(1, (int(time.time() * 1000) - month.start_ms) // (rows + 1))
    db = sqlite3.connect(ledger.path, isolation_level=None)  # bulk seed; the ledger sees it via data_version
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO usage (ts_ms, request_id, provider, model, prompt_tokens, completion_tokens, cost_micros,"
        " outcome, estimated) VALUES (?, 'seed', ?, 'm', 10, 10, 7, 'ok', 0)",
        ((month.start_ms + i * step, f"p{i % 5}") for i in range(rows)))
    db.execute("COMMIT")
    db.close()
    reserve, usage = [], []
    for i in range(200):
        t0 = time.perf_counter()
        held = await manager.reserve(request_id=f"b{i}", provider="openai", model="gpt-4o", amount_usd=0.002)
        reserve.append((time.perf_counter() - t0) * 1000)
        await manager.settle(held, cost_usd=0.001, prompt_tokens=1, completion_tokens=1)
    for _ in range(20):
        t0 = time.perf_counter()
        await manager.usage()
        usage.append((time.perf_counter() - t0) * 1000)
    return {"rows_in_month": rows, "first_reserve_ms": round(reserve[0], 3),  # loads the month's totals
            "reserve_ms": summary(reserve), "usage_ms": summary(usage)}


async def overshoot(directory: Path) -> dict[str, Any]:
    limit = 1.0
    rng = random.Random(3)
    costs = [rng.randint(10_000, 40_000) for _ in range(200)]

    ours = Ledger.open(directory / "ours")
    manager = BudgetManager(ours, lambda: BudgetConfig(daily_limit=limit))

    async def ours_call(i: int) -> None:
        try:
            held = await manager.reserve(request_id=str(i), provider="p", model="m", amount_usd=costs[i] / 1e6)
        except BudgetExceededError:
            return
        await asyncio.sleep(0.01)
        await manager.settle(held, cost_usd=costs[i] / 1e6, prompt_tokens=1, completion_tokens=1)

    naive = Ledger.open(directory / "naive")
    day = periods_at(datetime.now(UTC), UTC)[0]

    async def naive_call(i: int) -> None:
        if await naive.spend(day.start_ms, day.end_ms) >= limit * 1e6:
            return
        await asyncio.sleep(0.01)
        await naive.settle(None, UsageRecord(int(time.time() * 1000), str(i), "p", "m", 1, 1, costs[i]))

    await asyncio.gather(*(ours_call(i) for i in range(200)))
    await asyncio.gather(*(naive_call(i) for i in range(200)))
    result = {"limit_usd": limit, "calls": 200,
              "ours_spent_usd": await ours.spend(0, 2**62) / 1e6,
              "check_then_record_spent_usd": await naive.spend(0, 2**62) / 1e6}
    ours.close()
    naive.close()
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="budget-bench-"))
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "sqlite": sqlite3.sqlite_version},
        "settings": {"journal_mode": "wal", "synchronous": "FULL", "requests": args.requests,
                     "temp_dir_parent": str(directory.parent)},
        "raw_sqlite_commit_ms": raw_commit_ms(directory, 500),
    }
    ledger = Ledger.open(directory)
    manager = BudgetManager(ledger, lambda: BudgetConfig(daily_limit=1e6, monthly_limit=1e7))
    await sequential(manager, 100)  # warm-up
    results["sequential"] = await sequential(manager, args.requests)
    results["concurrent"] = await concurrent(manager, args.requests, args.concurrency)
    results["big_month"] = await big_month(ledger, manager, args.seed_rows)
    ledger.close()
    results["overshoot_200_concurrent"] = await overshoot(directory)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed-rows", type=int, default=100_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    results = asyncio.run(main_async(args))
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
