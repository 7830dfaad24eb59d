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
from enum import Enum
from typing import Any

from sidecar.core import tokens
from sidecar.core.pool import ProviderPool
from sidecar.core.registry import ModelProfile, ModelRegistry
from sidecar.core.selector import WEIGHTS, Exclusion, Need, Scored, rank
from sidecar.core.selector import Candidate as Scorable
from sidecar.core.stats import StatsBook
from sidecar.core.tokens import DEFAULT_OUTPUT_TOKENS
from sidecar.errors import AllProvidersFailedError, BudgetExceededError, InvalidParams, ValidationError
from sidecar.providers.base import ProviderSettings
from sidecar.wire.config import ModelConfig
from sidecar.wire.kinds import KINDS
from sidecar.wire.model import ModelRequest, ModelSelection

__all__ = ["DEFAULT_OUTPUT_TOKENS", "Classify", "Decision", "Planner", "effective_selection"]

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


class Skip(Enum):
    """Why a provider is not asked at all (the value is how people read it)."""

    DISABLED = "disabled"
    NOT_LOCAL = "not local (localOnly)"
    NO_KEY = "no API key configured"


@dataclass(frozen=True, slots=True)
class _Providers:
    names: list[str]
    pinned: str | None
    skipped: dict[str, Skip]


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
        model_id = sel.model_id or request.model_id
        providers = self._providers(cfg, sel, model_id)
        task = self._task(request)
        required = frozenset({"tools"} if request.tools and request.tool_choice != "none" else set()) | frozenset(
            {"vision"} if request.has_images else set())
        images = tokens.image_allowance(request)  # once: the estimate and the budget's bound share it
        need = Need(task[0], task[1], tokens.estimate(request, images=images), request.max_tokens or DEFAULT_OUTPUT_TOKENS,
                    required)
        pinned_key = (providers.pinned, model_id) if providers.pinned and model_id else None
        profiles, ranking = self._rank(need, cfg, sel, providers, pinned_key)
        first = self._first(ranking, providers.pinned, pinned_key)
        rest = [s for s in ranking if s.excluded is None and s is not first] if sel.fallback else []
        why_first = ("requested by selection.provider" if providers.pinned == sel.provider
                     else "requested model" if pinned_key else "best score")
        return Decision(
            candidates=tuple(profiles[(s.candidate.provider, s.candidate.model)] for s in (first, *rest)),
            reasons=tuple(_reasons(request, sel, task, (why_first, first), rest, ranking, providers.skipped)),
            task_type=task[0],
            complexity=task[1],
            fallback_mid_stream=sel.fallback_mid_stream,
            prompt_tokens=need.prompt_tokens,
            output_tokens=need.output_tokens,
            ranking=tuple(ranking),
            prompt_bound=tokens.upper_bound(tokens.request_texts(request)) + images,
            requested_max_tokens=request.max_tokens,
        )

    def _providers(self, cfg: ModelConfig, sel: ModelSelection, model_id: str | None) -> _Providers:
        """The providers that may serve, in order: a pinned one first, the rest skipped
        with a typed reason (disabled, not local, no key)."""
        enabled = self.pool.settings()
        skipped: dict[str, Skip] = {}

        def why_not(name: str, *, explicit: bool) -> Skip | None:
            item = enabled.get(name)
            if item is None:
                return Skip.DISABLED
            if sel.local_only and not item.local:
                return Skip.NOT_LOCAL
            if not explicit and KINDS[item.kind].needs_key and not item.api_key:
                return Skip.NO_KEY
            return None

        order = self._auto_order(cfg)
        pinned: str | None = None
        if sel.provider != "auto":
            pinned = sel.provider
            if pinned not in cfg.provider_names():
                raise InvalidParams(f"unknown provider {pinned!r}", errors=[
                    {"path": "/selection/provider", "message": f"unknown provider {pinned!r}"}])
            if (why := why_not(pinned, explicit=True)) is not None:
                raise InvalidParams(f"provider {pinned!r} cannot be used: {why.value}",
                                    errors=[{"path": "/selection/provider", "message": f"{pinned}: {why.value}"}])
        elif model_id:
            # The provider that owns the model; when none is known to, the first usable one.
            owners = [n for n in order if n in enabled and self._owns(enabled[n], model_id)]
            pinned = next((n for n in owners + [n for n in order if n not in owners]
                           if why_not(n, explicit=False) is None), None)
        names = [] if pinned is None else [pinned]
        for name in order:
            if name != pinned and (why := why_not(name, explicit=False)) is not None:
                skipped.setdefault(name, why)
            elif name != pinned:
                names.append(name)
        if not names:
            raise AllProvidersFailedError(
                "no usable provider: " + "; ".join(f"{n}: {w.value}" for n, w in skipped.items())
                + f" (set {' or '.join(k.key_env for k in KINDS.values() if k.key_env)},"
                " start Ollama, or add a custom provider)",
                attempts=[],
            )
        return _Providers(names, pinned, skipped)

    def _rank(self, need: Need, cfg: ModelConfig, sel: ModelSelection, providers: _Providers,
              pinned_key: tuple[str, str] | None) -> tuple[dict[tuple[str, str], ModelProfile], list[Scored]]:
        """Every model of the usable providers (only the pinned model of a pinned one), ranked."""
        enabled = self.pool.settings()
        profiles: dict[tuple[str, str], ModelProfile] = {}
        scorables: list[Scorable] = []
        for name in providers.names:
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
        return profiles, ranking

    def _first(self, ranking: list[Scored], pinned: str | None, pinned_key: tuple[str, str] | None) -> Scored:
        """The candidate tried first: the pinned model (kept even when the window estimate
        says it may not fit, never past maxCostUsd), the pinned provider's best, or the best."""
        kept = [s for s in ranking if s.excluded is None]
        first: Scored | None = None
        if pinned_key is not None:
            first = next((s for s in ranking if (s.candidate.provider, s.candidate.model) == pinned_key), None)
            if first is not None and first.excluded and first.excluded.kind is Exclusion.MAX_COST:
                raise BudgetExceededError(f"{pinned_key[1]}: {first.excluded.text()}", provider=pinned_key[0],
                                          model_id=pinned_key[1])
            if first is not None and first.excluded and first.excluded.kind is Exclusion.CAPABILITY:
                raise ValidationError(f"{pinned_key[0]}/{pinned_key[1]}: {first.excluded.text()}",
                                      provider=pinned_key[0], model_id=pinned_key[1], retryable=False)
        elif pinned is not None:
            first = next((s for s in kept if s.candidate.provider == pinned), None)
        if first is None:
            if not kept:
                raise self._nothing_fits(ranking)
            first = kept[0]
        return first

    def _task(self, request: ModelRequest) -> tuple[str, str, tuple[str, ...]]:
        if self._classify is not None:
            task_type, complexity, signals = self._classify(
                request.prompt or (tokens.turn_text(request.messages[-1]) if request.messages else ""),
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
            default_provider=default, priced=profile.priced, capabilities_known=profile.capabilities_known,
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
    def _auto_order(cfg: ModelConfig) -> list[str]:
        order = [cfg.default_provider, *cfg.fallback_chain]
        if not cfg.fallback_chain:  # no chain configured: every provider may serve
            order.extend(cfg.provider_names())
        return [n for n in dict.fromkeys(order)]


def _weights(priority: str) -> dict[str, float]:
    return WEIGHTS.get(priority, WEIGHTS["balanced"])


def _reasons(request: ModelRequest, sel: ModelSelection, task: tuple[str, str, tuple[str, ...]],
             chosen: tuple[str, Scored], rest: list[Scored], ranking: list[Scored],
             skipped: dict[str, Skip]) -> list[str]:
    """``selectionReasons``: the decision rendered for people (nothing reads it back)."""
    task_type, complexity, signals = task
    why_first, first = chosen
    given = " (taskType given)" if request.task_type else f" ({'; '.join(signals[:3])})" if signals else ""
    reasons = [f"task: {task_type}, complexity {complexity}{given}"]
    reasons.append(f"priority {sel.priority.value}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in _weights(sel.priority.value).items()))
    reasons.append(f"chosen ({why_first}): {first.reason()}")
    if not sel.fallback:
        reasons.append("fallback: disabled by selection.fallback")
    reasons.extend(f"fallback {i}: {s.reason()}" for i, s in enumerate(rest, start=1))
    reasons.extend(s.reason() for s in ranking if s.excluded)
    if sel.local_only:
        reasons.append("localOnly: only local providers may be contacted")
    reasons.extend(f"skipped {name}: {why.value}" for name, why in skipped.items())
    return reasons
