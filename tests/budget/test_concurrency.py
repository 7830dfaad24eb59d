"""Bursts of concurrent reserves against a tiny budget: never past the limit, never less admitted
than fits. (A check-after-spend design, as in LiteLLM or Portkey, overshoots here.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from sidecar.core.budget import BudgetManager, Reservation, usd_to_micros
from sidecar.errors import BudgetExceededError
from sidecar.store.ledger import Ledger
from tests.budget.conftest import Config

Make = Callable[..., tuple[BudgetManager, Config]]
LIMIT_USD = 1.0


async def try_reserve(manager: BudgetManager, i: int, amount: float) -> Reservation | None:
    try:
        return await manager.reserve(request_id=f"r{i}", provider="openai", model="gpt-4o", amount_usd=amount)
    except BudgetExceededError:
        return None


async def test_burst_of_equal_reserves_admits_exactly_what_fits(manager_for: Make, ledger: Ledger) -> None:
    manager, _ = manager_for(daily_limit=LIMIT_USD, monthly_limit=LIMIT_USD)
    results = await asyncio.gather(*(try_reserve(manager, i, 0.013) for i in range(200)))
    admitted = [r for r in results if r is not None]
    assert len(admitted) == 1_000_000 // 13_000 == 76
    assert (await ledger.reserved())[1] == 76 * 13_000 <= usd_to_micros(LIMIT_USD)


async def test_burst_of_mixed_reserves_is_maximal(manager_for: Make, ledger: Ledger) -> None:
    manager, _ = manager_for(daily_limit=LIMIT_USD)
    rng = random.Random(7)
    amounts = [rng.randint(1_000, 60_000) / 1e6 for _ in range(200)]
    results = await asyncio.gather(*(try_reserve(manager, i, a) for i, a in enumerate(amounts)))
    held = sum(r.amount_micros for r in results if r is not None)
    refused = [usd_to_micros(a) for a, r in zip(amounts, results, strict=True) if r is None]
    assert held <= 1_000_000 and refused
    # Holdings only grew during the burst, so every refusal is still justified at the end.
    assert min(refused) > 1_000_000 - held
    assert (await ledger.reserved())[1] == held


async def test_200_concurrent_reserve_settle_never_overspend(manager_for: Make, ledger: Ledger) -> None:
    manager, _ = manager_for(daily_limit=LIMIT_USD, monthly_limit=LIMIT_USD)
    rng = random.Random(11)
    settled: list[int] = []

    async def call(i: int) -> bool:
        worst = rng.randint(5_000, 40_000)
        reservation = await try_reserve(manager, i, worst / 1e6)
        if reservation is None:
            return False
        await asyncio.sleep(rng.random() / 200)  # the provider call
        real = rng.randint(0, worst)  # never more than reserved
        if rng.random() < 0.1:
            await manager.release(reservation)
            return True
        await manager.settle(reservation, cost_usd=real / 1e6, prompt_tokens=1, completion_tokens=1)
        settled.append(real)
        return True

    outcomes = await asyncio.gather(*(call(i) for i in range(200)))
    spent = await ledger.spend(0, 2**62)
    assert spent == sum(settled) <= usd_to_micros(LIMIT_USD)
    assert await ledger.reserved() == (0, 0) and manager.open_reservations == 0
    assert 0 < sum(outcomes) < 200
    # Whatever is left really is less than the largest refused worst case could use.
    usage = await manager.usage()
    assert usage["daily"]["remainingUsd"] == (usd_to_micros(LIMIT_USD) - spent) / 1e6
