"""The registry reuses a model's profile between decisions, and never a stale one: a
config change (new overrides, a provider entry replaced) or a provider's report makes
the next profile anew."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from sidecar.core.registry import Catalog, ModelRegistry
from sidecar.providers.base import ProviderModel, ProviderSettings
from sidecar.wire.config import ModelOverride


def test_profiles_are_reused_until_overrides_settings_or_reports_change() -> None:
    overrides: dict[str, Mapping[str, ModelOverride]] = {"now": {}}
    registry = ModelRegistry(Catalog.load(), lambda: overrides["now"])
    openai = ProviderSettings(name="openai", kind="openai", base_url="http://127.0.0.1:1/v1",
                              default_model="gpt-4o-mini")
    first = registry.profile(openai, "gpt-4o-mini")
    assert first.input_per_1m > 0 and first.known and not first.local
    assert registry.profile(openai, "gpt-4o-mini") is first  # made once

    overrides["now"] = {"openai/gpt-4o-mini": ModelOverride.model_validate({"inputPer1M": 99.0})}
    priced = registry.profile(openai, "gpt-4o-mini")
    assert priced.input_per_1m == 99.0

    moved = dataclasses.replace(openai, local=True)
    assert registry.profile(moved, "gpt-4o-mini").local
    assert not registry.profile(openai, "gpt-4o-mini").local

    custom = ProviderSettings(name="lab", kind="custom", base_url="http://127.0.0.1:2/v1", default_model="m1")
    unknown = registry.profile(custom, "m1")
    assert not unknown.known
    registry.report("lab", [ProviderModel(id="m1", provider="lab", context_window=12_345)])
    reported = registry.profile(custom, "m1")
    assert reported.known and reported.context_window == 12_345
