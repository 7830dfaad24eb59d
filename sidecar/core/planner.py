"""The decision for one request: which model first, which fallbacks, and why.

The planner gathers the facts (effective selection, usable providers, the task type and
complexity from the classifier, each candidate model's profile from the registry and
its measured stats) and lets the pure :mod:`sidecar.core.selector` rank them. Rules:

* ``selection.provider`` names a provider: its best model goes first.
* A ``modelId`` (selection's wins over the request's) pins that model first, on the
  named provider or on the provider that owns it (its ``models``, its default, or the
  catalog); the user's choice is kept even when the window estimate says it may not
  fit (the estimate errs high), but never past ``maxCostUsd``.
* ``auto``: the best-ranked candidate among the default provider, the fallback chain
  (every provider when the chain is empty) and their configured models.
* Fallbacks follow in rank order when ``selection.fallback`` is on; ``localOnly`` and
  ``maxCostUsd`` exclude candidates outright; cloud providers without a key are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.core import tokens
from sidecar.core.pool import ProviderPool
from sidecar.core.registry import ModelProfile, ModelRegistry
from sidecar.core.selector import WEIGHTS, Exclusion, Need, Scored, rank
from sidecar.core.selector import Candidate as Scorable
from sidecar.core.stats import StatsBook
from sidecar.core.tokens import DEFAULT_OUTPUT_TOKENS, context_text
from sidecar.errors import AllProvidersFailedError, BudgetExceededError, InvalidParams, ValidationError
from sidecar.providers.base import ProviderSettings
from sidecar.wire.config import ModelConfig
from sidecar.wire.kinds import KINDS
from sidecar.wire.model import ModelRequest, ModelSelection

__all__ = ["DEFAULT_OUTPUT_TOKENS", "Classify", "Decision", "Planner", "context_text", "effective_selection"]

#: Output assumed for the worst-case cost of a model whose maximum output is unknown.
UNBOUNDED_OUTPUT_TOKENS = 8192

#: ``classify(prompt, system, context) -> (task_type, complexity, signals)``
Classify = Callable[[str, str | None, Any], tuple[str, str, tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class Decision:
    candidates: tuple[ModelProfile, ...]
    reasons: tuple[str, ...]
    task_type: str | None
    complexity: str | None = None
    fallback_mid_stream: bool = False
    #: What the request needs: prompt tokens (estimate) and output tokens reserved.
    prompt_tokens: int = 0
    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    #: Every candidate considered, with its score or the reason it was excluded.
    ranking: tuple[Scored, ...] = field(default_factory=tuple)
    #: A true upper bound of the prompt's tokens (one per UTF-8 byte), for the budget.
    prompt_bound: int = 0
    #: ``maxTokens`` as the request gave it (None: the model may use its whole output).
    requested_max_tokens: int | None = None

    def worst_case_cost(self, profile: ModelProfile) -> float:
        """What one attempt on ``profile`` can cost at most: every prompt byte a token, and
        all the output the model may produce (``maxTokens``, else its maximum output)."""
        if profile.input_per_1m == 0 and profile.output_per_1m == 0:
            return 0.0
        output = self.requested_max_tokens or profile.max_output_tokens or UNBOUNDED_OUTPUT_TOKENS
        bound = self.prompt_bound or self.prompt_tokens
        return (bound * profile.input_per_1m + output * profile.output_per_1m) / 1e6


def effective_selection(selection: ModelSelection | None, cfg: ModelConfig) -> ModelSelection:
    """The request's selection, with the config's ``selection`` defaults for every field
    the request left out (a request that sets only ``priority`` keeps ``localOnly``)."""
    defaults = cfg.selection
    fallbacks = {
        "priority": defaults.priority,
        "fallback": defaults.fallback,
        "fallback_mid_stream": defaults.fallback_mid_stream,
        "local_only": defaults.local_only,
        "max_cost_usd": defaults.max_cost_usd,
    }
    if selection is None:
        return ModelSelection.model_validate({k: v for k, v in fallbacks.items() if v is not None}, strict=False)
    given = selection.model_fields_set
    return selection.model_copy(update={k: v for k, v in fallbacks.items() if k not in given})


class Planner:
    """Builds a :class:`Decision` from config, usable providers, registry and stats."""

    def __init__(
        self,
        pool: ProviderPool,
        config: Callable[[], ModelConfig],
        registry: ModelRegistry,
        stats: StatsBook,
        classify: Classify | None = None,
    ) -> None:
        self.pool = pool
        self._config = config
        self.registry = registry
        self.stats = stats
        self._classify = classify

    def decide(self, request: ModelRequest, selection: ModelSelection | None) -> Decision:
        cfg = self._config()
        sel = effective_selection(selection, cfg)
        enabled = self.pool.settings()
        model_id = sel.model_id or request.model_id
        skipped: list[str] = []

        def usable(name: str, *, explicit: bool) -> bool:
            item = enabled.get(name)
            if item is None:
                skipped.append(f"{name}: disabled")
            elif sel.local_only and not item.local:
                skipped.append(f"{name}: not local (localOnly)")
            elif not explicit and KINDS[item.kind].needs_key and not item.api_key:
                skipped.append(f"{name}: no API key configured")
            else:
                return True
            return False

        order = self._auto_order(cfg, enabled)
        pinned_provider: str | None = None
        if sel.provider != "auto":
            name = sel.provider
            if name not in cfg.provider_names():
                raise InvalidParams(f"unknown provider {name!r}", errors=[
                    {"path": "/selection/provider", "message": f"unknown provider {name!r}"}])
            if not usable(name, explicit=True):
                raise InvalidParams(f"provider {name!r} cannot be used: {skipped[-1].split(': ', 1)[1]}",
                                    errors=[{"path": "/selection/provider", "message": skipped[-1]}])
            pinned_provider = name
        elif model_id:
            # The provider that owns the model; when none is known to, the first usable one.
            owners = [n for n in order if n in enabled and self._owns(enabled[n], model_id)]
            candidates_in_order = owners + [n for n in order if n not in owners]
            pinned_provider = next((n for n in candidates_in_order if n in enabled
                                    and (not sel.local_only or enabled[n].local)
                                    and (not KINDS[enabled[n].kind].needs_key or enabled[n].api_key)), None)
        names = [n for n in order if n != pinned_provider and usable(n, explicit=False)]
        if pinned_provider is not None:
            names.insert(0, pinned_provider)
        if not names:
            raise AllProvidersFailedError(
                "no usable provider: " + "; ".join(dict.fromkeys(skipped))
                + f" (set {' or '.join(k.key_env for k in KINDS.values() if k.key_env)},"
                " start Ollama, or add a custom provider)",
                attempts=[],
            )

        task_type, complexity, signals = self._task(request)
        need = Need(task_type, complexity, tokens.estimate(request), request.max_tokens or DEFAULT_OUTPUT_TOKENS)
        profiles: dict[tuple[str, str], ModelProfile] = {}
        scorables: list[Scorable] = []
        pinned_key = (pinned_provider, model_id) if pinned_provider and model_id else None
        for name in names:
            settings = enabled[name]
            models: list[str] = [settings.default_model, *settings.models]
            if pinned_key is not None and name == pinned_key[0]:
                models = [pinned_key[1]]
            for model in dict.fromkeys(models):
                profile = self.registry.profile(settings, model)
                profiles[(name, model)] = profile
                scorables.append(self._scorable(profile, default=name == cfg.default_provider))
        ranking = rank(need, scorables, priority=sel.priority.value, max_cost_usd=sel.max_cost_usd,
                       local_only=sel.local_only)
        kept = [s for s in ranking if s.excluded is None]
        first: Scored | None = None
        if pinned_key is not None:
            first = next((s for s in ranking if (s.candidate.provider, s.candidate.model) == pinned_key), None)
            if first is not None and first.excluded and first.excluded.kind is Exclusion.MAX_COST:
                raise BudgetExceededError(f"{model_id}: {first.excluded.text()}", provider=pinned_provider,
                                          model_id=model_id)
        elif pinned_provider is not None:
            first = next((s for s in kept if s.candidate.provider == pinned_provider), None)
        if first is None:
            if not kept:
                raise self._nothing_fits(ranking)
            first = kept[0]
        rest = [s for s in kept if s is not first] if sel.fallback else []
        chosen = [first, *rest]

        reasons = [f"task: {task_type}, complexity {complexity}"
                   + (" (taskType given)" if request.task_type else f" ({'; '.join(signals[:3])})" if signals else "")]
        reasons.append(f"priority {sel.priority.value}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in _weights(sel.priority.value).items()))
        why_first = ("requested by selection.provider" if pinned_provider == sel.provider
                     else "requested model" if pinned_key else "best score")
        reasons.append(f"chosen ({why_first}): {first.reason()}")
        if not sel.fallback:
            reasons.append("fallback: disabled by selection.fallback")
        reasons.extend(f"fallback {i}: {s.reason()}" for i, s in enumerate(rest, start=1))
        reasons.extend(s.reason() for s in ranking if s.excluded)
        if sel.local_only:
            reasons.append("localOnly: only local providers may be contacted")
        reasons.extend(f"skipped {s}" for s in dict.fromkeys(skipped))
        return Decision(
            candidates=tuple(profiles[(s.candidate.provider, s.candidate.model)] for s in chosen),
            reasons=tuple(reasons),
            task_type=task_type,
            complexity=complexity,
            fallback_mid_stream=sel.fallback_mid_stream,
            prompt_tokens=need.prompt_tokens,
            output_tokens=need.output_tokens,
            ranking=tuple(ranking),
            prompt_bound=tokens.upper_bound(tokens.request_texts(request)),
            requested_max_tokens=request.max_tokens,
        )

    def _task(self, request: ModelRequest) -> tuple[str, str, tuple[str, ...]]:
        if self._classify is not None:
            task_type, complexity, signals = self._classify(
                request.prompt or (request.messages[-1].content if request.messages else ""),
                request.system_prompt, request.context)
        else:
            task_type, complexity, signals = "code_generation", "medium", ()
        if request.task_type is not None:
            task_type = request.task_type.value
        return task_type, complexity, signals

    def _scorable(self, profile: ModelProfile, *, default: bool) -> Scorable:
        provider_stats = self.stats.get(profile.provider)
        model_stats = self.stats.model(profile.provider, profile.model)
        return Scorable(
            provider=profile.provider, kind=profile.kind, model=profile.model, local=profile.local,
            tier=profile.tier, context_window=profile.context_window, input_per_1m=profile.input_per_1m,
            output_per_1m=profile.output_per_1m, capabilities=profile.capabilities,
            latency_p50_ms=model_stats.latency_p50(), latency_samples=len(model_stats.latencies_ms),
            error_rate=provider_stats.error_rate(), available=self.stats.available(profile.provider),
            default_provider=default, priced=profile.priced,
        )

    @staticmethod
    def _nothing_fits(ranking: list[Scored]) -> Exception:
        reasons = "; ".join(s.reason() for s in ranking)
        kinds = {s.excluded.kind if s.excluded else None for s in ranking}
        if kinds == {Exclusion.MAX_COST}:
            return BudgetExceededError(f"no candidate within maxCostUsd: {reasons}")
        if kinds == {Exclusion.WINDOW}:
            return ValidationError(f"the request does not fit any model's context window: {reasons}",
                                   context_too_long=True, retryable=False)
        return ValidationError(f"no candidate model fits the request: {reasons}", retryable=False)

    def _owns(self, settings: ProviderSettings, model_id: str) -> bool:
        if model_id in settings.models or model_id == settings.default_model:
            return True
        if model_id in self.registry.reported(settings.name):
            return True
        return self.registry.catalog.lookup(settings.kind, model_id) is not None

    @staticmethod
    def _auto_order(cfg: ModelConfig, enabled: dict[str, ProviderSettings]) -> list[str]:
        order = [cfg.default_provider, *cfg.fallback_chain]
        if not cfg.fallback_chain:  # no chain configured: every provider may serve
            order.extend(cfg.provider_names())
        return [n for n in dict.fromkeys(order)]


def _weights(priority: str) -> dict[str, float]:
    return WEIGHTS.get(priority, WEIGHTS["balanced"])
