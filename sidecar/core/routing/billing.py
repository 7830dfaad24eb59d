"""The billing layer: every attempt runs inside a budget reservation.

The attempt's worst-case cost is reserved before anything goes upstream (a refusal
raises :class:`~sidecar.errors.BudgetExceededError`, a reservation the ledger cannot
write :class:`~sidecar.errors.StorageError`, and nothing is sent). After the
call the reservation is settled to the real cost; a server that reports no usage is
billed our estimate. A failed or cancelled call settles what was really used (a cut
stream: the text that arrived) or releases the reservation when nothing was produced.
Settling is shielded: a cancelled request still writes what it used; it never fails
because of the storage (the ledger journals what it cannot write yet).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from sidecar.core import tokens
from sidecar.core.routing.state import Call, Run, Try
from sidecar.providers.base import Completion, Usage

__all__ = ["Billed", "Budget"]

log = structlog.get_logger("sidecar.router")


class Budget(Protocol):
    """What billing needs from the budget manager."""

    async def reserve(self, *, request_id: str, provider: str, model: str, amount_usd: float) -> Any: ...

    async def settle(self, reservation: Any, *, cost_usd: float, prompt_tokens: int, completion_tokens: int,
                     outcome: str = "ok", estimated: bool = False) -> None: ...

    async def release(self, reservation: Any) -> None: ...


class Billed:
    """Reserve, call ``inner``, settle (the :class:`Call` above the provider call)."""

    def __init__(self, inner: Call, budget: Budget | None) -> None:
        self.inner = inner
        self.budget = budget

    async def __call__(self, run: Run, attempt: Try) -> Completion:
        if self.budget is None:
            completion = await self.inner(run, attempt)
            attempt.used_tokens = completion.usage.total_tokens if completion.usage else None
            attempt.cost_usd = attempt.candidate.cost_usd(_billed_usage(run, completion))
            return completion
        candidate = attempt.candidate
        reservation = await self.budget.reserve(
            request_id=run.tag, provider=candidate.provider, model=candidate.model,
            amount_usd=run.decision.worst_case_cost(candidate))
        try:
            completion = await self.inner(run, attempt)
        except BaseException as exc:
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
            await asyncio.shield(self._settle_partial(run, attempt, reservation, outcome))
            raise
        attempt.used_tokens = completion.usage.total_tokens if completion.usage else None
        usage = _billed_usage(run, completion)
        # What the response reports as costUsd is what the ledger holds.
        attempt.cost_usd = candidate.cost_usd(usage)
        # Not wrapped in a task of its own: settle queues its write before its first await
        # and shields it, so a cancel here cannot stop it.
        await self.budget.settle(
            reservation, cost_usd=attempt.cost_usd, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, outcome="ok", estimated=completion.usage is None)
        return completion

    async def _settle_partial(self, run: Run, attempt: Try, reservation: Any, outcome: str) -> None:
        assert self.budget is not None
        text = "".join(attempt.produced)
        if not text:
            await self.budget.release(reservation)  # nothing generated: nothing billed
            return
        # A stream cut or cancelled after some text: the provider bills the prompt and
        # what it generated; count both from our (high) estimates.
        candidate = attempt.candidate
        usage = Usage(run.decision.prompt_tokens, tokens.estimate_text(text))
        await self.budget.settle(reservation, cost_usd=candidate.cost_usd(usage), prompt_tokens=usage.prompt_tokens,
                                 completion_tokens=usage.completion_tokens, outcome="partial", estimated=True)
        log.info("billed_partial", provider=candidate.provider, model=candidate.model, outcome=outcome,
                 completion_tokens=usage.completion_tokens)


def _billed_usage(run: Run, completion: Completion) -> Usage:
    """The provider's usage; for a server that reports none, our estimate."""
    if completion.usage is not None:
        return completion.usage
    generated = completion.content + "".join(call.name + call.arguments for call in completion.tool_calls)
    return Usage(run.decision.prompt_tokens, tokens.estimate_text(generated))
