"""Crash-test child: settle records in a loop, printing each id once its commit returned.

    python -m tests.budget.crash_writer DATA_DIR

Every third request also leaves a reservation open, so a kill always strands some. The
parent kills this process with SIGKILL at a random moment and checks the ledger.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sidecar.store.ledger import Ledger, UsageRecord


async def main(data_dir: Path) -> None:
    ledger = Ledger.open(data_dir)
    out = sys.stdout
    out.write(f"open {ledger.report.stale_reservations}\n")
    out.flush()
    n = 0
    while True:
        n += 1
        held = await ledger.reserve(ts_ms=n, request_id=f"r{n}", provider="p", model="m",
                                    amount_micros=1_000, caps=[], block=True)
        if n % 3 == 0:
            continue  # left open: the kill strands it
        assert held.reservation_id is not None
        row = await ledger.settle(held.reservation_id, UsageRecord(
            ts_ms=n, request_id=f"r{n}", provider="p", model="m", prompt_tokens=n, completion_tokens=1,
            cost_micros=n % 997))
        out.write(f"{row}\n")
        out.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
