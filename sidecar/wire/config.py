"""``ModelConfig``: the shape of ``config.json`` and of ``model:get-config``/``set-config``.

Every field has a default, so a missing or partial file still validates; the stored file
holds only what the host set, and defaults are applied on top when it is read.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from sidecar.wire.base import ParamsModel
from sidecar.wire.model import Priority

__all__ = [
    "BudgetConfig",
    "CustomProviderEntry",
    "FormatTemplate",
    "ModelConfig",
    "ModelOverride",
    "ProviderEntry",
    "ProvidersConfig",
    "RateLimitConfig",
    "SelectionDefaults",
]

BUILTIN_PROVIDERS = ("openai", "anthropic", "ollama")
#: The embedded local model's default entry (see ``scripts/local_model.py``).
LOCAL_PROVIDER = "local-llm"
LOCAL_PORT = 8080
LOCAL_BASE_URL = f"http://127.0.0.1:{LOCAL_PORT}/v1"
LOCAL_MODEL = "smollm2-135m-instruct"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


class RateLimitConfig(ParamsModel):
    max_requests: int = Field(default=0, ge=0, description="Requests per window; 0 = no limit.")
    window_ms: int = Field(default=60_000, ge=1)
    strategy: Literal["linear", "exponential"] = "exponential"
    max_retries: int = Field(default=2, ge=0, le=10)
    max_tokens: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)


class ProviderEntry(ParamsModel):
    base_url: str = Field(alias="baseURL", min_length=1)
    api_key: str | None = None
    default_model: str = Field(min_length=1)
    enabled: bool = True
    models: list[str] | None = None
    headers: dict[str, str] | None = None
    timeout_ms: int | None = Field(default=None, ge=100, le=3_600_000)
    rate_limit: RateLimitConfig | None = None
    #: Extension: limits of single models, applied on top of the provider's ``rateLimit``.
    model_rate_limits: dict[str, RateLimitConfig] | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("baseURL must be an http:// or https:// URL with a host")
        _ = parts.port  # raises ValueError when the port is out of range
        return value

    @field_validator("headers")
    @classmethod
    def _http_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"header {name!r}: the value must be printable ASCII")
        return value


class CustomProviderEntry(ProviderEntry):
    local: bool = False


class ProvidersConfig(ParamsModel):
    openai: ProviderEntry = ProviderEntry(
        base_url="https://api.openai.com/v1", default_model="gpt-4o-mini"
    )
    anthropic: ProviderEntry = ProviderEntry(
        base_url="https://api.anthropic.com", default_model="claude-haiku-4-5"
    )
    ollama: ProviderEntry = ProviderEntry(base_url="http://127.0.0.1:11434", default_model="llama3.2")
    #: One default entry: the embedded local model (``scripts/local_model.py`` serves
    #: SmolLM2 there with llama-cpp-python). Hosts add entries beside it; a stored
    #: ``"local-llm"`` entry merges over this one, ``enabled: false`` turns it off.
    custom: dict[str, CustomProviderEntry] = Field(default_factory=lambda: {LOCAL_PROVIDER: CustomProviderEntry(
        base_url=LOCAL_BASE_URL, default_model=LOCAL_MODEL,
    )})

    @field_validator("custom")
    @classmethod
    def _custom_names(cls, value: dict[str, CustomProviderEntry]) -> dict[str, CustomProviderEntry]:
        for name in value:
            if name in (*BUILTIN_PROVIDERS, "auto") or not name.strip():
                raise ValueError(f"custom provider name {name!r} is reserved or empty")
        return value


class BudgetConfig(ParamsModel):
    daily_limit: float | None = Field(default=None, ge=0)
    monthly_limit: float | None = Field(default=None, ge=0)
    alert_threshold: float = Field(default=0.8, ge=0, le=1)
    block_on_limit: bool = True
    #: Extension: IANA zone for day and month boundaries (default UTC).
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class FormatTemplate(ParamsModel):
    """A named structured-output format: a JSON Schema plus extra instructions."""

    schema_: dict[str, Any] = Field(alias="schema")
    instructions: str | None = None
    max_retries: int | None = Field(default=None, ge=0, le=10)


class ModelOverride(ParamsModel):
    """What the user knows better than the catalog about one model (``provider/model``)."""

    context_window: int | None = Field(default=None, ge=256)
    max_output_tokens: int | None = Field(default=None, ge=1)
    input_per_1m: float | None = Field(default=None, ge=0, alias="inputPer1M")
    output_per_1m: float | None = Field(default=None, ge=0, alias="outputPer1M")
    tier: Literal["frontier", "strong", "fast", "small"] | None = None
    capabilities: list[str] | None = None


class SelectionDefaults(ParamsModel):
    """Defaults for ``ModelSelection`` fields a request leaves out."""

    priority: Priority = Field(default=Priority.balanced, strict=False)
    fallback: bool = True
    fallback_mid_stream: bool = False
    local_only: bool = False
    max_cost_usd: float | None = Field(default=None, ge=0)


class ModelConfig(ParamsModel):
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    default_provider: str = "ollama"
    fallback_chain: list[str] = Field(default_factory=list)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    selection: SelectionDefaults = Field(default_factory=SelectionDefaults)
    #: Extension: per-model facts that win over the catalog, keyed ``provider/model``.
    model_overrides: dict[str, ModelOverride] = Field(default_factory=dict)
    #: Extension: structured-output templates usable as ``{"type": "template", "template": name}``.
    format_templates: dict[str, FormatTemplate] = Field(default_factory=dict)
    #: Extension: overall deadline of one request, retries and fallbacks included.
    deadline_ms: int = Field(default=600_000, ge=1_000, le=3_600_000)

    def provider_names(self) -> list[str]:
        return [*BUILTIN_PROVIDERS, *self.providers.custom]

    @model_validator(mode="after")
    def _names_exist(self) -> ModelConfig:
        known = set(self.provider_names())
        if self.default_provider not in known:
            raise ValueError(f"defaultProvider {self.default_provider!r} is not a configured provider")
        unknown = [name for name in self.fallback_chain if name not in known]
        if unknown:
            raise ValueError(f"fallbackChain names unknown providers: {', '.join(unknown)}")
        return self
