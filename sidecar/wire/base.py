"""Base classes of the wire models: camelCase aliases, strict params, lenient results."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["ParamsModel", "ResultModel", "dump"]


class ParamsModel(BaseModel):
    """Host → sidecar shapes: unknown fields are errors, so a typo never changes behaviour."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        # No coercion: `"maxTokens": "12"` or `"localOnly": "off"` is an error, not a guess.
        strict=True,
        ser_json_inf_nan="null",
    )


class ResultModel(BaseModel):
    """Sidecar → host shapes: hosts must ignore fields they do not know."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        ser_json_inf_nan="null",
    )


def dump(model: BaseModel) -> dict[str, Any]:
    """The wire form of a model: aliases, no ``None`` fields, JSON-compatible values."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
