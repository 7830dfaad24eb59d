"""The fallback chain: the decision's candidates in order, within the request's deadline.

A provider that already failed as a whole in this request (connection, key, rate limit)
is not tried again with another of its models. An error that may not fall back (a
``ValidationError`` other than context-too-long, a stream that already sent text) ends
the request. The deadline (``deadlineMs``) bounds every retry and fallback together.
When every candidate failed, the answer is the last error when only one provider was
tried, else :class:`~sidecar.errors.AllProvidersFailedError` listing every attempt; when
the budget refused every candidate, the budget's own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.core.routing.retry import NoFallback, Retrying
from sidecar.core.routing.state import Outcome, Run
from sidecar.errors import AllProvidersFailedError, AttemptRecord, NetworkError, ProviderError, SidecarError
from sidecar.wire.config import ModelConfig

__all__ = ["FallbackChain"]

#: Provider name of the attempt record that stands for the request's own deadline.
DEADLINE_RECORD = "router"


class FallbackChain:
    """Tries the candidates of a run in order until one answers."""

    def __init__(self, retrying: Retrying, clock: Callable[[], float]) -> None:
        self.retrying = retrying
        self._clock = clock

    async def run(self, run: Run, cfg: ModelConfig, started: float) -> Outcome:
        try:
            # run.deadline: the request's, which earlier routed calls of it may have used up.
            async with asyncio.timeout(max(0.0, run.deadline - self._clock())):
                outcome = await self._candidates(run, cfg, started)
        except NoFallback as failure:
            raise final_error(run, failure.error) from failure.error
        except TimeoutError as exc:
            timeout = NetworkError(f"request deadline of {cfg.deadline_ms} ms exceeded", retryable=True)
            run.attempts.append(AttemptRecord.failed(DEADLINE_RECORD, "", timeout))
            run.errors.append(timeout)
            raise final_error(run, timeout) from exc
        if outcome is not None:
            return outcome
        raise self._no_outcome(run)

    async def _candidates(self, run: Run, cfg: ModelConfig, started: float) -> Outcome | None:
        candidates = run.decision.candidates
        for index, candidate in enumerate(candidates):
            if candidate.provider in run.failed_wide:
                continue  # that provider already failed as a whole in this request
            last = index == len(candidates) - 1
            outcome = await self.retrying.candidate(run, candidate, cfg, started, last=last)
            if outcome is not None:
                return outcome
            if run.errors and not run.errors[-1].may_fall_back:
                raise NoFallback(run.errors[-1])
        return None

    @staticmethod
    def _no_outcome(run: Run) -> SidecarError:
        if run.budget_error is not None and not run.errors:
            # Every candidate was refused by the budget: say so, with data.usage.
            run.budget_error.attempts = run.attempts
            return run.budget_error
        if not run.errors:
            return AllProvidersFailedError("no configured provider could be reached", attempts=run.attempts)
        return final_error(run, run.errors[-1])


def final_error(run: Run, last: ProviderError) -> ProviderError | AllProvidersFailedError:
    """The error a failed request ends with: the provider's own when only one was tried."""
    if len(run.tried) <= 1:
        last.attempts = run.attempts
        return last
    summary = "; ".join(f"{a.provider}: {a.error_message}" for a in run.attempts if a.error_type is not None)
    return AllProvidersFailedError(
        f"all providers failed ({summary})",
        attempts=run.attempts,
        retryable=any(e.retryable for e in run.errors),
    )
