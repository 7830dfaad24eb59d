"""BudgetManager policy: limits, periods, blocking, settle/release, alerts, usage breakdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.budget import (
    BudgetManager,
    call_cost_micros,
    micros_to_usd,
    periods_at,
    resolve_timezone,
    usd_to_micros,
)
from sidecar.core.tokens import upper_bound
from sidecar.errors import BudgetExceededError
from sidecar.store.ledger import Ledger
from tests.budget.conftest import Alerts, Clock, Config

Make = Callable[..., tuple[BudgetManager, Config]]


async def spend(manager: BudgetManager, usd: float, *, provider: str = "openai", model: str = "gpt-4o",
                reserve: float | None = None) -> None:
    reservation = await manager.reserve(request_id="r", provider=provider, model=model,
                                        amount_usd=usd if reserve is None else reserve)
    await manager.settle(reservation, cost_usd=usd, prompt_tokens=10, completion_tokens=20)
    await manager.drain()  # alerts are checked in the background, after the settle's commit


# -- money ---------------------------------------------------------------------------------


def test_micro_dollars_round_half_up_and_never_drift() -> None:
    assert usd_to_micros(0.0000005) == 1
    assert usd_to_micros(0.0000004999) == 0
    assert usd_to_micros(1.1) == 1_100_000
    assert usd_to_micros(0.1 + 0.2) == 300_000
    assert usd_to_micros(Decimal("2.5000005")) == 2_500_001
    assert sum(usd_to_micros(0.1) for _ in range(10)) == usd_to_micros(1.0)
    assert micros_to_usd(1_234_567) == 1.234567
    assert usd_to_micros(4_000_000_000_000) == 4 * 10**18
    for bad in (-0.01, float("nan"), float("inf"), 5e12):
        with pytest.raises(ValueError):
            usd_to_micros(bad)
    # USD per 1M tokens is micro-dollars per token.
    assert call_cost_micros(1_000, 500, input_per_1m=0.15, output_per_1m=0.6) == 450
    assert call_cost_micros(3, 0, input_per_1m=0.15, output_per_1m=0.6) == 0  # 0.45 µ$ rounds down
    assert upper_bound(["héllo"], per_message_overhead=4) == 10


# -- limits and blocking -------------------------------------------------------------------


async def test_daily_limit_blocks_with_usage_attached(manager_for: Make) -> None:
    manager, _ = manager_for(daily_limit=1.0)
    first = await manager.reserve(request_id="a", provider="openai", model="gpt-4o", amount_usd=0.6)
    with pytest.raises(BudgetExceededError) as caught:
        await manager.reserve(request_id="b", provider="openai", model="gpt-4o", amount_usd=0.5)
    error = caught.value
    assert error.code == -32006 and "daily" in error.message
    usage = error.to_data()["usage"]
    assert usage["daily"]["reservedUsd"] == 0.6 and usage["daily"]["remainingUsd"] == 0.4
    await manager.settle(first, cost_usd=0.3, prompt_tokens=1, completion_tokens=1)
    await manager.reserve(request_id="b", provider="openai", model="gpt-4o", amount_usd=0.5)  # 0.3 + 0.5
    with pytest.raises(BudgetExceededError):
        await manager.reserve(request_id="c", provider="openai", model="gpt-4o", amount_usd=0.200001)
    exact = await manager.reserve(request_id="c", provider="openai", model="gpt-4o", amount_usd=0.2)
    assert not exact.over  # reaching the limit exactly is allowed
    free = await manager.reserve(request_id="d", provider="ollama", model="llama3.2", amount_usd=0)
    assert not free.over  # a free call always fits


async def test_the_largest_limit_the_config_allows_is_exact(manager_for: Make) -> None:
    from sidecar.wire.config import MAX_LIMIT_USD

    manager, _ = manager_for(daily_limit=MAX_LIMIT_USD)  # larger ones are refused by the config
    await spend(manager, 1_000_000.0)
    assert (await manager.usage())["daily"]["remainingUsd"] == MAX_LIMIT_USD - 1_000_000.0


async def test_monthly_limit_spans_days_and_resets_with_the_month(manager_for: Make, clock: Clock) -> None:
    manager, _ = manager_for(monthly_limit=1.0)
    clock.set(datetime(2026, 11, 1, 0, 0, tzinfo=UTC))
    await spend(manager, 0.5)
    clock.set(datetime(2026, 11, 30, 23, 59, 59, 999_000, tzinfo=UTC))
    await spend(manager, 0.5)
    with pytest.raises(BudgetExceededError, match="monthly"):
        await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.000001)
    clock.set(datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    await spend(manager, 1.0)
    usage = await manager.usage()
    assert usage["monthly"]["spentUsd"] == 1.0 and usage["monthly"]["periodStart"] == "2026-12-01T00:00:00+00:00"


async def test_utc_midnight_and_year_end_boundaries(manager_for: Make, clock: Clock) -> None:
    manager, _ = manager_for(daily_limit=1.0, monthly_limit=5.0)
    clock.set(datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC))
    await spend(manager, 1.0)
    with pytest.raises(BudgetExceededError):
        await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.01)
    clock.advance(milliseconds=1)
    usage = await manager.usage()
    assert usage["daily"]["periodStart"] == "2027-01-01T00:00:00+00:00"
    assert usage["daily"]["spentUsd"] == 0 and usage["monthly"]["spentUsd"] == 0
    await spend(manager, 1.0)


async def test_timezone_moves_the_boundaries(manager_for: Make, clock: Clock) -> None:
    manager, _ = manager_for(timezone="America/New_York", daily_limit=1.0)
    clock.set(datetime(2026, 11, 26, 15, 0, tzinfo=UTC))  # 10:00 EST on the 26th
    await spend(manager, 1.0)
    clock.set(datetime(2026, 11, 27, 4, 59, tzinfo=UTC))  # 23:59 EST, still the 26th there
    with pytest.raises(BudgetExceededError):
        await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.01)
    usage = await manager.usage()
    assert usage["timezone"] == "America/New_York"
    assert usage["daily"]["periodStart"] == "2026-11-26T00:00:00-05:00"
    clock.set(datetime(2026, 11, 27, 5, 0, tzinfo=UTC))  # local midnight
    await spend(manager, 1.0)
    manager.set_timezone("UTC")  # 05:00 UTC on the 27th: only the second call is that day
    assert (await manager.usage())["daily"]["spentUsd"] == 1.0
    clock.set(datetime(2026, 11, 26, 23, 0, tzinfo=UTC))
    assert (await manager.usage())["daily"]["spentUsd"] == 1.0


def test_periods_follow_dst_and_half_hour_zones() -> None:
    paris = resolve_timezone("Europe/Paris")
    day, month = periods_at(datetime(2026, 3, 29, 12, tzinfo=UTC), paris)  # DST starts that night
    assert day.end_ms - day.start_ms == 23 * 3600 * 1000
    assert month.key == "monthly:2026-03" and day.key == "daily:2026-03-29"
    kolkata = resolve_timezone("Asia/Kolkata")
    day, _ = periods_at(datetime(2026, 11, 26, 18, 31, tzinfo=UTC), kolkata)  # 00:01 on the 27th there
    assert day.key == "daily:2026-11-27" and day.start.isoformat() == "2026-11-27T00:00:00+05:30"
    with pytest.raises(ValueError):
        resolve_timezone("Mars/Olympus_Mons")


async def test_not_blocking_lets_requests_through_and_says_over(manager_for: Make) -> None:
    manager, _ = manager_for(daily_limit=1.0, block_on_limit=False)
    await spend(manager, 0.9)
    reservation = await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.5)
    assert reservation.over
    usage = await manager.usage()
    assert usage["daily"]["over"] and usage["daily"]["remainingUsd"] == 0 and not usage["blockOnLimit"]
    await manager.settle(reservation, cost_usd=0.5, prompt_tokens=1, completion_tokens=1)
    usage = await manager.usage()
    assert usage["daily"]["spentUsd"] == 1.4 and usage["daily"]["over"]


async def test_settle_for_more_is_recorded_and_blocks_the_next(manager_for: Make) -> None:
    manager, _ = manager_for(daily_limit=1.0)
    await spend(manager, 1.2, reserve=0.5)  # the provider billed more than the worst case
    usage = await manager.usage()
    assert usage["daily"]["spentUsd"] == 1.2 and usage["daily"]["over"] and usage["daily"]["remainingUsd"] == 0
    with pytest.raises(BudgetExceededError):
        await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.000001)


async def test_settle_for_less_frees_the_difference(manager_for: Make) -> None:
    manager, _ = manager_for(daily_limit=1.0)
    await spend(manager, 0.25, reserve=0.75)
    usage = await manager.usage()
    assert usage["daily"]["spentUsd"] == 0.25 and usage["daily"]["reservedUsd"] == 0
    assert usage["daily"]["remainingUsd"] == 0.75


async def test_release_returns_everything_and_double_use_is_refused(manager_for: Make, ledger: Ledger) -> None:
    manager, _ = manager_for(daily_limit=1.0)
    reservation = await manager.reserve(request_id="x", provider="p", model="m", amount_usd=1.0)
    await manager.release(reservation)
    assert await ledger.reserved() == (0, 0) and await ledger.record_count() == 0
    with pytest.raises(ValueError):
        await manager.release(reservation)
    with pytest.raises(ValueError):
        await manager.settle(reservation, cost_usd=0.1, prompt_tokens=1, completion_tokens=1)
    again = await manager.reserve(request_id="y", provider="p", model="m", amount_usd=1.0)
    await manager.settle(again, cost_usd=0.4, prompt_tokens=3, completion_tokens=0, outcome="cancelled",
                         estimated=True)
    with pytest.raises(ValueError):
        await manager.settle(again, cost_usd=0.4, prompt_tokens=3, completion_tokens=0)
    assert await ledger.record_count() == 1 and manager.open_reservations == 0
    with pytest.raises(ValueError):
        await manager.settle(again, cost_usd=0.1, prompt_tokens=1, completion_tokens=1, outcome="bogus")


async def test_cancelled_reserve_leaves_no_reservation(manager_for: Make, ledger: Ledger) -> None:
    manager, _ = manager_for(daily_limit=1.0)
    tasks = [asyncio.create_task(manager.reserve(request_id=str(i), provider="p", model="m", amount_usd=0.1))
             for i in range(5)]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await manager.drain()
    assert await ledger.reserved() == (0, 0)


async def test_settle_completes_even_if_the_caller_is_cancelled(manager_for: Make, ledger: Ledger) -> None:
    manager, _ = manager_for(daily_limit=1.0)
    reservation = await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.5)
    task = asyncio.create_task(manager.settle(reservation, cost_usd=0.2, prompt_tokens=1, completion_tokens=1,
                                              outcome="partial", estimated=True))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await manager.drain()
    assert await ledger.reserved() == (0, 0) and await ledger.record_count() == 1


# -- alerts --------------------------------------------------------------------------------


async def test_alert_once_per_period_then_again_at_the_limit(manager_for: Make, alerts: Alerts,
                                                             clock: Clock) -> None:
    manager, _ = manager_for(daily_limit=1.0, alert_threshold=0.8)
    await spend(manager, 0.5)
    assert alerts.sent == []
    await spend(manager, 0.35)  # 0.85 >= 0.8
    assert alerts.sent == [{"period": "daily", "spentUsd": 0.85, "limitUsd": 1.0, "threshold": 0.8}]
    await spend(manager, 0.01)
    assert len(alerts.sent) == 1
    await spend(manager, 0.14)  # exactly the limit
    assert alerts.kinds() == [("daily", 0.8), ("daily", 1.0)]
    assert (await manager.usage())["daily"]["alertSent"]
    clock.advance(days=1)
    assert not (await manager.usage())["daily"]["alertSent"]
    await spend(manager, 0.9)
    assert alerts.kinds() == [("daily", 0.8), ("daily", 1.0), ("daily", 0.8)]


async def test_one_settle_can_cross_threshold_and_limit_of_both_periods(manager_for: Make,
                                                                       alerts: Alerts) -> None:
    manager, _ = manager_for(daily_limit=1.0, monthly_limit=2.0, alert_threshold=0.5)
    await spend(manager, 1.0)
    assert alerts.kinds() == [("daily", 0.5), ("daily", 1.0), ("monthly", 0.5)]


async def test_alerts_are_not_repeated_after_reopening(tmp_path: Path, clock: Clock, alerts: Alerts) -> None:
    config = Config(daily_limit=1.0)
    ledger = Ledger.open(tmp_path)
    await spend(BudgetManager(ledger, config, now=clock, on_alert=alerts), 0.9)
    assert len(alerts.sent) == 1
    ledger.close()
    ledger = Ledger.open(tmp_path)
    try:
        manager = BudgetManager(ledger, config, now=clock, on_alert=alerts)
        await spend(manager, 0.05)
        assert len(alerts.sent) == 1
        await spend(manager, 0.05)  # the limit alert is new
        assert alerts.kinds() == [("daily", 0.8), ("daily", 1.0)]
        assert (await manager.usage())["daily"]["spentUsd"] == 1.0
    finally:
        ledger.close()


async def test_failing_alert_callback_does_not_break_settle(ledger: Ledger, clock: Clock) -> None:
    async def broken(_payload: dict[str, Any]) -> None:
        raise RuntimeError("host went away")

    manager = BudgetManager(ledger, Config(daily_limit=1.0), now=clock, on_alert=broken)
    await spend(manager, 1.0)
    assert await ledger.alerts(["daily:2026-11-26"]) == {("daily:2026-11-26", "threshold"),
                                                         ("daily:2026-11-26", "limit")}


async def test_over_admission_triggers_the_alert_check(manager_for: Make, alerts: Alerts) -> None:
    manager, config = manager_for(daily_limit=None, block_on_limit=False)
    await spend(manager, 0.9)
    config.update(daily_limit=1.0)  # limits read afresh: spending is already past the threshold
    reservation = await manager.reserve(request_id="x", provider="p", model="m", amount_usd=0.2)
    await manager.drain()
    assert reservation.over and alerts.kinds() == [("daily", 0.8)]


# -- usage ---------------------------------------------------------------------------------


async def test_usage_breakdown_per_provider_and_model(manager_for: Make, clock: Clock) -> None:
    manager, _ = manager_for(monthly_limit=10.0)
    clock.set(datetime(2026, 10, 31, 12, tzinfo=UTC))
    await spend(manager, 5.0, provider="openai", model="gpt-4o")  # last month: not in the breakdown
    clock.set(datetime(2026, 11, 26, 12, tzinfo=UTC))
    await spend(manager, 0.1, provider="openai", model="gpt-4o")
    await spend(manager, 0.2, provider="openai", model="gpt-4o")
    await spend(manager, 0.3, provider="openai", model="gpt-4o-mini")
    await spend(manager, 0.000001, provider="anthropic", model="claude-haiku-4-5")
    await spend(manager, 0, provider="ollama", model="llama3.2")
    usage = await manager.usage()
    assert usage["byProvider"] == {
        "openai": {"spentUsd": 0.6, "requests": 3, "promptTokens": 30, "completionTokens": 60},
        "anthropic": {"spentUsd": 0.000001, "requests": 1, "promptTokens": 10, "completionTokens": 20},
        "ollama": {"spentUsd": 0.0, "requests": 1, "promptTokens": 10, "completionTokens": 20},
    }
    assert usage["byModel"]["openai/gpt-4o"] == {"spentUsd": 0.3, "requests": 2, "promptTokens": 20,
                                                 "completionTokens": 40}
    assert set(usage["byModel"]) == {"openai/gpt-4o", "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5",
                                     "ollama/llama3.2"}
    monthly = usage["monthly"]
    assert monthly["spentUsd"] == 0.600001 and monthly["limitUsd"] == 10.0 and monthly["remainingUsd"] == 9.399999
    assert usage["daily"]["limitUsd"] is None and usage["daily"]["remainingUsd"] is None
    assert not usage["daily"]["over"] and usage["alertThreshold"] == 0.8
