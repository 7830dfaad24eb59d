"""The model selector: scores candidate models for one request, with reasons.

Pure: facts in, ranking out (no I/O, no clock). Five factors:

* **task type**: how good the model's quality tier is at this task and complexity
  (a small model is fine for a one-line explanation, not for a high-complexity plan);
* **context size**: prompt + context + ``maxTokens`` must fit the window, with a token
  estimate that errs high: a model that cannot fit is excluded, not just ranked low;
* **cost**: the worst-case cost of the call at list prices (local models cost 0);
* **performance**: measured latency (p50 of recent calls, or a prior by tier until
  there are enough samples) and measured error rate (which also scales the whole score);
* **availability**: a provider in its cool-down after failures sinks to the end.

``selection.priority`` sets the weights; ``maxCostUsd`` and ``localOnly`` are hard
filters. Scores are in 0..1 and every factor's contribution is kept for the reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "COST_SCALE_USD",
    "TIERS",
    "WEIGHTS",
    "Candidate",
    "Excluded",
    "Exclusion",
    "Need",
    "Scored",
    "infer_tier",
    "rank",
]

TIERS = ("frontier", "strong", "fast", "small")
#: How good each tier is, before task and complexity adjust it.
_TIER_QUALITY = {"frontier": 0.97, "strong": 0.88, "fast": 0.72, "small": 0.45}
#: Typical p50 latency by tier until a model has measured calls (local CPU models are slow).
_TIER_LATENCY_MS = {"frontier": 6000.0, "strong": 3500.0, "fast": 1800.0, "small": 3000.0}
#: Complexity stretches quality differences: low flattens them, high sharpens them.
_COMPLEXITY_EXPONENT = {"low": 0.35, "medium": 1.0, "high": 2.2}
#: A call costing this much scores 0.5 on cost; local calls score 1.
COST_SCALE_USD = 0.01
#: Latency at which the speed factor is 0.5.
_LATENCY_SCALE_MS = 2500.0
#: Measured samples needed before measured latency replaces the tier prior.
MIN_SAMPLES = 3
_UNAVAILABLE_FACTOR = 0.2
_DEFAULT_PROVIDER_BONUS = 0.03

#: priority → factor weights (task, cost, speed, reliability); each row sums to 1.
WEIGHTS: dict[str, dict[str, float]] = {
    "balanced": {"task": 0.40, "cost": 0.25, "speed": 0.20, "reliability": 0.15},
    "quality": {"task": 0.70, "cost": 0.05, "speed": 0.10, "reliability": 0.15},
    "cost": {"task": 0.25, "cost": 0.60, "speed": 0.05, "reliability": 0.10},
    "speed": {"task": 0.25, "cost": 0.10, "speed": 0.50, "reliability": 0.15},
}
_CODE_TASKS = {"code_generation", "refactoring", "testing", "code_review"}
_REASONING_TASKS = {"planning", "code_review", "refactoring"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bm])\b", re.IGNORECASE)


def infer_tier(model_id: str, *, local: bool) -> str:
    """A tier for a model the catalog does not know, from the size in its name.

    ``qwen2.5-coder:32b`` → strong, ``llama3.1:8b`` → fast, ``SmolLM2-135M`` → small;
    an unnamed size is small when local (what a laptop runs) and fast otherwise.
    """
    match = _SIZE.search(model_id.replace("-", " ").replace(":", " ").replace("_", " "))
    if match:
        billions = float(match.group(1)) / (1000 if match.group(2).lower() == "m" else 1)
        if billions >= 30:
            return "strong"
        if billions >= 7:
            return "fast"
        return "small"
    return "small" if local else "fast"


@dataclass(frozen=True, slots=True)
class Need:
    """What the request needs."""

    task_type: str
    complexity: str  # low | medium | high
    prompt_tokens: int  # estimate, erring high
    output_tokens: int  # maxTokens, or the default reserve
    #: Capabilities the request cannot do without (``tools``, ``vision``).
    required: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model of one provider, with what is known and measured about it."""

    provider: str
    kind: str
    model: str
    local: bool
    tier: str
    context_window: int
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    capabilities: frozenset[str] = frozenset()
    latency_p50_ms: float | None = None
    latency_samples: int = 0
    error_rate: float | None = None
    available: bool = True
    default_provider: bool = False
    #: Prices unknown (a cloud model missing from the catalog): cost counts as unknown.
    priced: bool = True
    #: The capabilities are curated (catalog or config): a missing one is really missing.
    #: A model nobody describes (a local one) is tried whatever it is asked to do.
    capabilities_known: bool = False


class Exclusion(Enum):
    """Why a candidate cannot serve the request at all."""

    NOT_LOCAL = "not_local"
    WINDOW = "window"
    MAX_COST = "max_cost"
    CAPABILITY = "capability"


@dataclass(frozen=True, slots=True)
class Excluded:
    """A typed exclusion: the kind decides, the numbers explain; text only at the edge."""

    kind: Exclusion
    #: Window case: tokens needed and the window. Cost case: estimate and the cap (USD).
    needed: float = 0.0
    limit: float = 0.0
    #: Capability case: what the request needs and the model lacks.
    missing: tuple[str, ...] = ()

    def text(self) -> str:
        if self.kind is Exclusion.NOT_LOCAL:
            return "not local (localOnly)"
        if self.kind is Exclusion.CAPABILITY:
            return "lacks " + " and ".join(self.missing) + " (the request needs it)"
        if self.kind is Exclusion.WINDOW:
            return f"needs ~{int(self.needed)} tokens, window is {int(self.limit)}"
        return f"estimated ${self.needed:.4f} > maxCostUsd ${self.limit:.4f}"


@dataclass(slots=True)
class Scored:
    candidate: Candidate
    score: float
    estimated_cost_usd: float
    factors: dict[str, float] = field(default_factory=dict)
    excluded: Excluded | None = None

    def reason(self) -> str:
        c = self.candidate
        if self.excluded:
            return f"{c.provider}/{c.model}: excluded, {self.excluded.text()}"
        parts = ", ".join(f"{name} {value:.2f}" for name, value in self.factors.items())
        cost = "free" if self.estimated_cost_usd == 0 and c.priced else f"~${self.estimated_cost_usd:.4f}"
        return f"{c.provider}/{c.model}: score {self.score:.3f} ({parts}; {c.tier} tier, {cost})"


def _task_fit(candidate: Candidate, need: Need) -> float:
    quality = _TIER_QUALITY.get(candidate.tier, _TIER_QUALITY["fast"])
    if need.task_type in _CODE_TASKS and "code" in candidate.capabilities:
        quality += 0.03
    if need.task_type in _REASONING_TASKS and need.complexity == "high" and "reasoning" in candidate.capabilities:
        quality += 0.03
    quality = min(quality, 1.0)
    return float(quality ** _COMPLEXITY_EXPONENT.get(need.complexity, 1.0))


def _cost(candidate: Candidate, need: Need) -> float:
    return (need.prompt_tokens * candidate.input_per_1m + need.output_tokens * candidate.output_per_1m) / 1e6


def rank(
    need: Need,
    candidates: list[Candidate],
    *,
    priority: str = "balanced",
    max_cost_usd: float | None = None,
    local_only: bool = False,
) -> list[Scored]:
    """Every candidate scored, best first; excluded ones last, each with its reason."""
    weights = WEIGHTS.get(priority, WEIGHTS["balanced"])
    kept: list[Scored] = []
    excluded: list[Scored] = []
    for candidate in candidates:
        cost = _cost(candidate, need)
        scored = Scored(candidate, 0.0, cost)
        needed = need.prompt_tokens + need.output_tokens
        missing = tuple(sorted(need.required - candidate.capabilities)) if candidate.capabilities_known else ()
        if local_only and not candidate.local:
            scored.excluded = Excluded(Exclusion.NOT_LOCAL)
        elif missing:
            scored.excluded = Excluded(Exclusion.CAPABILITY, missing=missing)
        elif needed > candidate.context_window:
            scored.excluded = Excluded(Exclusion.WINDOW, needed, candidate.context_window)
        elif max_cost_usd is not None and cost > max_cost_usd:
            scored.excluded = Excluded(Exclusion.MAX_COST, cost, max_cost_usd)
        if scored.excluded:
            excluded.append(scored)
            continue
        latency = (
            candidate.latency_p50_ms
            if candidate.latency_p50_ms is not None and candidate.latency_samples >= MIN_SAMPLES
            else _TIER_LATENCY_MS.get(candidate.tier, 3000.0)
        )
        factors = {
            "task": _task_fit(candidate, need),
            # Unknown prices score like an expensive call: never assume an unpriced
            # cloud model is cheap.
            "cost": 1.0 / (1.0 + (cost if candidate.priced else 0.05) / COST_SCALE_USD),
            "speed": 1.0 / (1.0 + latency / _LATENCY_SCALE_MS),
            "reliability": 1.0 - (candidate.error_rate if candidate.error_rate is not None else 0.05),
        }
        score = sum(weights[name] * value for name, value in factors.items())
        # A provider that fails often loses more than its weight says: every failure
        # costs a retry or a fallback, so unreliability also scales the whole score.
        score *= 0.5 + 0.5 * factors["reliability"]
        if candidate.default_provider:
            score += _DEFAULT_PROVIDER_BONUS
        if not candidate.available:
            score *= _UNAVAILABLE_FACTOR
        scored.score = round(score, 6)
        scored.factors = {k: round(v, 4) for k, v in factors.items()}
        kept.append(scored)
    # Stable: equal scores keep the configured order (default provider, then the chain).
    kept.sort(key=lambda s: -s.score)
    return kept + excluded

