"""Router + budget: reservations before calls, settlement after, never past the limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.budget import BudgetManager
from sidecar.errors import BudgetExceededError, NetworkError
from sidecar.providers.base import Completion, Usage
from sidecar.store.ledger import Ledger
from sidecar.wire.config import BudgetConfig
from tests.core.test_router import Rig, make_rig, req
from tests.support.scripted import Chunks, Hang


def with_budget(tmp_path: Path, limit: float, *, block: bool = True) -> tuple[Rig, BudgetManager, Ledger]:
    ledger = Ledger.open(tmp_path)
    budget = BudgetManager(ledger, lambda: BudgetConfig(daily_limit=limit, block_on_limit=block))
    rig = make_rig(budget=budget)
    return rig, budget, ledger


async def test_a_burst_against_a_tiny_budget_never_overshoots(tmp_path: Path) -> None:
    rig, budget, ledger = with_budget(tmp_path, limit=0.01)
    # gpt-4o-mini: worst case of each call = prompt bound + maxTokens 1000 at $0.60/M ≈ $0.0006
    rig.scripts["openai"].actions = [Completion("x", "gpt-4o-mini", "stop", Usage(20, 1000))] * 200
    decision = rig.decision("openai")
    results = await asyncio.gather(*(rig.router.generate(req(maxTokens=1000), decision, tag=str(i))
                                     for i in range(200)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(ok) + len(refused) == 200 and ok and refused
    await budget.drain()
    usage = await budget.usage()
    assert usage["daily"]["spentUsd"] <= 0.01
    assert usage["daily"]["reservedUsd"] == 0
    assert usage["byModel"]["openai/gpt-4o-mini"]["requests"] == len(ok)
    ledger.close()


async def test_a_refused_cloud_call_falls_to_a_free_local_model(tmp_path: Path) -> None:
    rig, _budget, ledger = with_budget(tmp_path, limit=0.0000001)
    outcome = await rig.router.generate(req(maxTokens=100), rig.decision("openai", "ollama"))
    assert outcome.candidate.provider == "ollama"
    assert outcome.attempts[0].error_type == "BudgetExceededError"
    assert rig.scripts["openai"].requests == []
    ledger.close()


async def test_not_blocking_lets_the_call_through_and_usage_says_over(tmp_path: Path) -> None:
    rig, budget, ledger = with_budget(tmp_path, limit=0.0000001, block=False)
    rig.scripts["openai"].actions = [Completion("x", "gpt-4o-mini", "stop", Usage(1000, 1000))]
    await rig.router.generate(req(maxTokens=1000), rig.decision("openai"))
    await budget.drain()
    assert (await budget.usage())["daily"]["over"] is True
    ledger.close()


async def test_a_failure_before_any_token_releases_the_reservation(tmp_path: Path) -> None:
    rig, budget, ledger = with_budget(tmp_path, limit=1.0)
    rig.scripts["openai"].actions = [NetworkError("refused", provider="openai")] * 3
    with pytest.raises(NetworkError):
        await rig.router.generate(req(), rig.decision("openai"))
    await budget.drain()
    usage = await budget.usage()
    assert usage["daily"]["spentUsd"] == 0 and usage["daily"]["reservedUsd"] == 0
    assert await ledger.record_count() == 0
    ledger.close()


@pytest.mark.parametrize("how", ["cut", "cancel"])
async def test_a_stream_is_billed_for_what_arrived(tmp_path: Path, how: str) -> None:
    rig, budget, ledger = with_budget(tmp_path, limit=1.0)
    pieces = ["word " * 50] * 4
    if how == "cut":
        rig.scripts["openai"].actions = [Chunks(pieces, error=NetworkError("cut", provider="openai"))]
    else:
        rig.scripts["openai"].actions = [Chunks(pieces), Hang()]

    class Sink:
        async def __call__(self, content: str, model: str | None, *, restart: bool = False) -> None:
            if how == "cancel":
                await asyncio.sleep(10)  # the host cancels while text is arriving

    task = asyncio.create_task(rig.router.stream(req(), rig.decision("openai"), Sink()))
    if how == "cancel":
        await asyncio.sleep(0.05)
        task.cancel()
    with pytest.raises((NetworkError, asyncio.CancelledError)):
        await task
    await budget.drain()
    usage: dict[str, Any] = await budget.usage()
    entry = usage["byModel"]["openai/gpt-4o-mini"]
    assert entry["requests"] == 1 and entry["completionTokens"] > 0
    assert usage["daily"]["spentUsd"] > 0 and usage["daily"]["reservedUsd"] == 0
    ledger.close()
