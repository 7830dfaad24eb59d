"""The shipped model catalog (``sidecar/data/models.json``): windows, prices, capabilities.

Responses name dated snapshots (``gpt-4o-2024-08-06``, ``claude-3-5-sonnet-20241022``):
lookups fall back from the exact id to its aliases and then to the id without its date
suffix, so a snapshot is priced and described by its base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import orjson

from sidecar.providers.base import Usage

__all__ = ["Catalog", "CatalogEntry", "base_model_id"]

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

    def cost_usd(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input_per_1m + usage.completion_tokens * self.output_per_1m) / 1e6


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

    def cost_usd(self, provider_kind: str, model_id: str, usage: Usage | None, *, local: bool) -> float:
        """What a call cost at list price; local and unknown models cost 0."""
        if local or usage is None:
            return 0.0
        entry = self.lookup(provider_kind, model_id)
        return 0.0 if entry is None else entry.cost_usd(usage)
