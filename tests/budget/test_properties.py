"""Property test: random reserve/settle/release/advance sequences against a model in integers."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.budget import BudgetManager, Reservation, periods_at, usd_to_micros
from sidecar.errors import BudgetExceededError
from sidecar.store.ledger import Ledger
from tests.budget.conftest import Clock, Config

micros = st.integers(min_value=0, max_value=3_000_000)
ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), micros),
    st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1.3)),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.integers(1, 40)),  # hours
), max_size=40)


@dataclass
class Model:
    records: list[tuple[int, int, bool]] = field(default_factory=list)  # (ts_ms, micros, above reservation)
    open: list[Reservation] = field(default_factory=list)

    def spent(self, start: int, end: int) -> int:
        return sum(cost for ts, cost, _ in self.records if start <= ts < end)

    def overspent(self, start: int, end: int) -> bool:
        return any(above for ts, _, above in self.records if start <= ts < end)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, daily=st.none() | micros, monthly=st.none() | micros, block=st.booleans())
def test_invariants_hold_for_any_sequence(steps: list[tuple[object, ...]], daily: int | None,
                                          monthly: int | None, block: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), steps, daily, monthly, block))


async def run(tmp: Path, steps: list[tuple[object, ...]], daily: int | None, monthly: int | None,
              block: bool) -> None:
    clock = Clock(datetime(2026, 11, 29, 20, tzinfo=UTC))
    config = Config(daily_limit=None if daily is None else daily / 1e6,
                    monthly_limit=None if monthly is None else monthly / 1e6, block_on_limit=block)
    ledger = Ledger.open(tmp)
    manager = BudgetManager(ledger, config, now=clock)
    model = Model()
    try:
        for step in steps:
            day, month = periods_at(clock(), UTC)
            caps = [(p, limit) for p, limit in ((day, daily), (month, monthly)) if limit is not None]
            if step[0] == "reserve":
                amount = int(step[1])  # type: ignore[call-overload]
                assert usd_to_micros(amount / 1e6) == amount
                held = sum(r.amount_micros for r in model.open)
                fits = amount == 0 or all(model.spent(p.start_ms, p.end_ms) + held + amount <= limit
                                          for p, limit in caps)
                try:
                    reservation = await manager.reserve(request_id="r", provider="p", model="m",
                                                        amount_usd=amount / 1e6)
                except BudgetExceededError:
                    assert block and not fits
                else:
                    assert fits or not block
                    assert reservation.over == (not fits)
                    model.open.append(reservation)
            elif step[0] in ("settle", "release") and model.open:
                reservation = model.open.pop(int(step[1]) % len(model.open))  # type: ignore[call-overload]
                if step[0] == "release":
                    await manager.release(reservation)
                else:
                    cost = int(reservation.amount_micros * float(step[2]))  # type: ignore[arg-type]
                    await manager.settle(reservation, cost_usd=cost / 1e6, prompt_tokens=1, completion_tokens=2)
                    model.records.append((round(clock().timestamp() * 1000), cost,
                                          cost > reservation.amount_micros))
            elif step[0] == "advance":
                clock.advance(hours=int(step[1]))  # type: ignore[call-overload]
            await check(manager, ledger, model, clock, daily, monthly, block)
        for reservation in model.open:
            await manager.release(reservation)
        assert await ledger.reserved() == (0, 0)
    finally:
        ledger.close()


async def check(manager: BudgetManager, ledger: Ledger, model: Model, clock: Clock, daily: int | None,
                monthly: int | None, block: bool) -> None:
    usage = await manager.usage()
    held = sum(r.amount_micros for r in model.open)
    # Free (zero) reservations live in memory only; the ledger holds the paid ones.
    assert await ledger.reserved() == (sum(1 for r in model.open if r.amount_micros > 0), held)
    assert await ledger.spend(0, 2**62) == sum(cost for _, cost, _ in model.records)
    for period, limit in zip(periods_at(clock(), UTC), (daily, monthly), strict=True):
        spent = model.spent(period.start_ms, period.end_ms)
        assert await ledger.spend(period.start_ms, period.end_ms) == spent  # exact, in integers
        shown = usage[period.name]
        assert round(shown["spentUsd"] * 1e6) == spent
        if limit is None:
            assert shown["remainingUsd"] is None
            continue
        assert shown["remainingUsd"] >= 0
        assert round(shown["remainingUsd"] * 1e6) == max(0, limit - spent - held)
        if block and not model.overspent(period.start_ms, period.end_ms):
            assert spent + held <= limit  # only a settle above its reservation can pass a limit


def _micros_by_decimal(usd: float) -> int:
    """The reference: the float's shortest decimal form, times a million, half up."""
    from decimal import ROUND_HALF_UP, Decimal

    return int((Decimal(str(usd)) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=1e9, allow_nan=False),
                 st.integers(0, 10**12).map(lambda n: n / 1e6),
                 st.integers(0, 10**9).map(lambda n: n / 1e9)))
def test_micro_dollars_are_the_decimal_rounding_of_every_float(usd: float) -> None:
    """The shortcut for amounts of at most six decimals gives what the decimal rounding
    gives, for every float (more decimals, exponents, huge values included)."""
    assert usd_to_micros(usd) == _micros_by_decimal(usd)


@pytest.mark.parametrize("bad", [-0.000001, -1.0, float("inf"), float("nan"), 2.0**62])
def test_impossible_amounts_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        usd_to_micros(bad)
