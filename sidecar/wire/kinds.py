"""The one table of provider kinds: what each config entry is and what it needs.

Every place that used to spell out "openai, anthropic, ollama" or "which ones need a
key" reads this table instead: config validation and resolution, the planner's key
check, the registry's pricing, and the provider classes (``sidecar.providers``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUILTIN_PROVIDERS", "CUSTOM", "KINDS", "ProviderKind", "kind_of"]


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """One kind of provider entry."""

    #: The kind's name, also the config key of the built-in entry ("custom": the
    #: entries under ``providers.custom``).
    name: str
    #: Environment variable a key may come from (a stored key overrides it).
    key_env: str | None
    #: Whether the provider refuses every call without a key (auto selection skips it).
    needs_key: bool
    #: Whether the entry exists in every config (``providers.openai`` ...).
    builtin: bool
    #: Whether its models cost nothing unless the config prices them: the user's own
    #: models. Every other model is billed at its list price wherever it is served.
    free: bool


CUSTOM = "custom"

KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("openai", key_env="OPENAI_API_KEY", needs_key=True, builtin=True, free=False),
        ProviderKind("anthropic", key_env="ANTHROPIC_API_KEY", needs_key=True, builtin=True, free=False),
        ProviderKind("ollama", key_env=None, needs_key=False, builtin=True, free=True),
        ProviderKind(CUSTOM, key_env=None, needs_key=False, builtin=False, free=True),
    )
}

#: The built-in entries' names, in the order hosts see them.
BUILTIN_PROVIDERS: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.builtin)


def kind_of(provider_name: str) -> ProviderKind:
    """The kind of a configured provider: a built-in's own, else custom."""
    return KINDS[provider_name if provider_name in BUILTIN_PROVIDERS else CUSTOM]
