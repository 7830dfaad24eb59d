"""``model:select``: the decision, its reasons and every candidate's score; no model call."""

from __future__ import annotations

from sidecar.core.agents import check_or_raise
from sidecar.core.router import Router
from sidecar.transport.dispatcher import Channel, RequestContext
from sidecar.wire.methods import SelectCandidate, SelectParams, SelectResult

__all__ = ["channels"]


def channels(router: Router) -> list[Channel]:
    async def select(params: SelectParams, _ctx: RequestContext) -> SelectResult:
        check_or_raise(params.request)  # the same tool checks as a call (images are not read: nothing is sent)
        decision = router.select_provider(params.request, params.selection)
        first = decision.candidates[0]
        candidates = [
            SelectCandidate(
                provider=s.candidate.provider,
                modelId=s.candidate.model,
                score=None if s.excluded else s.score,
                estimatedCostUsd=round(s.estimated_cost_usd, 8),
                contextWindow=s.candidate.context_window,
                tier=s.candidate.tier,
                local=s.candidate.local,
                available=s.candidate.available,
                factors=None if s.excluded else s.factors,
                excluded=s.excluded.text() if s.excluded else None,
            )
            for s in decision.ranking
        ]
        return SelectResult(
            provider=first.provider,
            modelId=first.model,
            taskType=decision.task_type or "code_generation",
            complexity=decision.complexity or "medium",
            promptTokens=decision.prompt_tokens,
            reasons=list(decision.reasons),
            candidates=candidates,
            fallbacks=[f"{c.provider}/{c.model}" for c in decision.candidates[1:]],
        )

    return [Channel("model:select", SelectParams, select)]
