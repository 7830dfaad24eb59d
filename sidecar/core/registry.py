"""The model registry: the shipped catalog (``sidecar/data/models.json``: windows, prices,
capabilities, quality tiers) merged with provider reports and user overrides.

Responses name dated snapshots (``gpt-4o-2024-08-06``, ``claude-3-5-sonnet-20241022``):
lookups fall back from the exact id to its aliases and then to the id without its date
suffix, so a snapshot is priced and described by its base model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

import orjson

from sidecar.core.selector import infer_tier
from sidecar.providers.base import ProviderModel, ProviderSettings, Usage
from sidecar.wire.config import ModelOverride
from sidecar.wire.kinds import KINDS

__all__ = [
    "UNKNOWN_CONTEXT_WINDOW",
    "Catalog",
    "CatalogEntry",
    "ModelProfile",
    "ModelRegistry",
    "base_model_id",
]

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


def base_model_id(model_id: str) -> str:
    """``gpt-4o-2024-08-06`` → ``gpt-4o``; ids without a date suffix are returned as-is."""
    return _DATE_SUFFIX.sub("", model_id)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    provider: str
    id: str
    context_window: int
    max_output_tokens: int | None
    input_per_1m: float
    output_per_1m: float
    capabilities: frozenset[str]
    tier: str = "fast"
    deprecated: bool = False


class Catalog:
    """Read-only lookups over the shipped catalog."""

    def __init__(self, entries: list[CatalogEntry], aliases: dict[tuple[str, str], CatalogEntry]) -> None:
        self.entries = entries
        self._by_key = {(e.provider, e.id): e for e in entries} | aliases

    @classmethod
    def load(cls) -> Catalog:
        raw = orjson.loads(resources.files("sidecar.data").joinpath("models.json").read_bytes())
        entries, aliases = [], {}
        for item in raw["models"]:
            entry = CatalogEntry(
                provider=item["provider"],
                id=item["id"],
                context_window=item["contextWindow"],
                max_output_tokens=item.get("maxOutputTokens"),
                input_per_1m=item["inputPer1M"],
                output_per_1m=item["outputPer1M"],
                capabilities=frozenset(item.get("capabilities", ())),
                tier=item.get("tier", "fast"),
                deprecated=bool(item.get("deprecated", False)),
            )
            entries.append(entry)
            for alias in item.get("aliases", ()):
                aliases[(entry.provider, alias)] = entry
        return cls(entries, aliases)

    def lookup(self, provider_kind: str, model_id: str) -> CatalogEntry | None:
        """The entry for a model id, a dated snapshot of it, or one of its aliases."""
        for candidate in (model_id, base_model_id(model_id)):
            entry = self._by_key.get((provider_kind, candidate))
            if entry is not None:
                return entry
        return None


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Everything known about one model of one configured provider."""

    provider: str
    kind: str
    model: str
    local: bool
    context_window: int
    max_output_tokens: int | None
    input_per_1m: float
    output_per_1m: float
    capabilities: frozenset[str]
    tier: str
    priced: bool
    deprecated: bool
    known: bool  # in the catalog, reported by the provider, or overridden
    #: Capabilities from the catalog or the config (a missing one is really missing).
    capabilities_known: bool = False

    def cost_usd(self, usage: Usage | None) -> float:
        if usage is None:
            return 0.0
        return (usage.prompt_tokens * self.input_per_1m + usage.completion_tokens * self.output_per_1m) / 1e6


#: Window assumed for a model nobody reports (small, so the estimate errs safe).
UNKNOWN_CONTEXT_WINDOW = 8192
#: Profiles kept (all forgotten when there are more: a host naming many models).
_MAX_PROFILES = 1024


class ModelRegistry:
    """The catalog merged with what providers report and what the user overrides.

    Precedence per field: ``modelOverrides`` in config > the provider's own report
    (``/api/show``, ``/v1/models`` metadata) > the shipped catalog (by base model for
    dated snapshots) > an inference from the model's name. Ollama and custom models cost 0
    unless priced; every other model costs its list price wherever it is served.
    """

    def __init__(self, catalog: Catalog, overrides: Callable[[], Mapping[str, ModelOverride]]) -> None:
        self.catalog = catalog
        self._overrides = overrides
        self._reported: dict[tuple[str, str], ProviderModel] = {}
        #: (provider, model asked for) → the id the provider answered with (a dated snapshot).
        self._served: dict[tuple[str, str], str] = {}
        #: Profiles made, with the settings and overrides they were made from: a profile is
        #: reused while both are the same objects (a config change replaces them) and no
        #: provider reported since. Every decision asks for each candidate's profile.
        self._profiles: dict[tuple[str, str], tuple[ProviderSettings, Mapping[str, ModelOverride], ModelProfile]] = {}

    def report(self, provider: str, models: Iterable[ProviderModel]) -> None:
        """Remember what a provider said about its models (from list-models or a refresh)."""
        for model in models:
            self._reported[(provider, model.id)] = model
        self._profiles.clear()

    def reported(self, provider: str) -> list[str]:
        return [model for (name, model) in self._reported if name == provider]

    def reported_model(self, provider: str, model_id: str) -> ProviderModel | None:
        found = self._reported.get((provider, model_id))
        if found is None and ":" not in model_id:
            # Ollama names "llama3.2" and "llama3.2:latest" the same model.
            found = self._reported.get((provider, model_id + ":latest"))
        return found

    def note_served(self, provider: str, requested: str, served: str) -> None:
        """Remember which snapshot a model name resolved to (``gpt-4o`` → ``gpt-4o-2024-08-06``)."""
        if served and served != requested:
            self._served[(provider, requested)] = served

    def version(self, provider: str, model_id: str) -> str | None:
        """The model's version as providers report it: Ollama's digest, the dated snapshot
        a name was last served as, or the date in a snapshot's own id."""
        reported = self.reported_model(provider, model_id)
        if reported is not None and reported.version:
            return reported.version
        served = self._served.get((provider, model_id))
        if served is not None:
            return served
        match = _DATE_SUFFIX.search(model_id)
        return match.group(1) if match else None

    def profile(self, settings: ProviderSettings, model_id: str) -> ModelProfile:
        overrides = self._overrides()
        key = (settings.name, model_id)
        made = self._profiles.get(key)
        if made is not None and made[0] is settings and made[1] is overrides:
            return made[2]
        profile = self._profile(settings, model_id, overrides)
        if len(self._profiles) >= _MAX_PROFILES:
            self._profiles.clear()
        self._profiles[key] = (settings, overrides, profile)
        return profile

    def _profile(self, settings: ProviderSettings, model_id: str,
                 overrides: Mapping[str, ModelOverride]) -> ModelProfile:
        entry = self.catalog.lookup(settings.kind, model_id)
        reported = self.reported_model(settings.name, model_id)
        override = overrides.get(f"{settings.name}/{model_id}")
        window = (
            (override.context_window if override else None)
            or (reported.context_window if reported else None)
            or (entry.context_window if entry else None)
            or UNKNOWN_CONTEXT_WINDOW
        )
        max_out = (
            (override.max_output_tokens if override else None)
            or (reported.max_output_tokens if reported else None)
            or (entry.max_output_tokens if entry else None)
        )
        input_price = override.input_per_1m if override and override.input_per_1m is not None else None
        output_price = override.output_per_1m if override and override.output_per_1m is not None else None
        if input_price is None and entry is not None:
            input_price = entry.input_per_1m
        if output_price is None and entry is not None:
            output_price = entry.output_per_1m
        caps = set(entry.capabilities if entry else ()) | set(reported.capabilities if reported else ())
        if override and override.capabilities is not None:
            caps = set(override.capabilities)
        if settings.local:
            caps.add("local")
        # Money follows the model, not the address: an openai or anthropic entry pointed
        # at a loopback proxy still bills gpt-4o as gpt-4o. Only the kinds whose models
        # are the user's own (Ollama, custom servers) are free, unless the user priced
        # one (a rented GPU behind an SSH tunnel). "Local" decides where data may go.
        priced_by_user = override is not None and (override.input_per_1m is not None
                                                    or override.output_per_1m is not None)
        free = KINDS[settings.kind].free and not priced_by_user
        tier = (override.tier if override and override.tier else None) or (entry.tier if entry else None) or (
            infer_tier(model_id, local=settings.local)
        )
        return ModelProfile(
            provider=settings.name,
            kind=settings.kind,
            model=model_id,
            local=settings.local,
            context_window=window,
            max_output_tokens=max_out,
            input_per_1m=0.0 if free else (input_price or 0.0),
            output_per_1m=0.0 if free else (output_price or 0.0),
            capabilities=frozenset(caps),
            tier=tier,
            priced=free or (input_price is not None and output_price is not None),
            deprecated=bool(entry and entry.deprecated),
            known=bool(entry or reported or override),
            capabilities_known=entry is not None or (override is not None and override.capabilities is not None)
            or (reported is not None and reported.capabilities_reported),
        )
