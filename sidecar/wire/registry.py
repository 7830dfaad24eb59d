"""Which model describes each method's params and result, and each notification.

This table is the protocol's public surface: the schema generator writes one file per
entry into ``schemas/``, and a test checks that it matches the channels the sidecar
announces in ``sidecar:ready``.
"""

from __future__ import annotations

from pydantic import BaseModel

from sidecar.wire.config import ConfigView
from sidecar.wire.methods import (
    BudgetAlertParams,
    CancelRequestParams,
    DiscoverResult,
    EmptyParams,
    EmptyResult,
    ErrorData,
    GenerateParams,
    HealthResult,
    ListModelsParams,
    ListModelsResult,
    PullParams,
    PullProgressParams,
    PullResult,
    ReadyParams,
    SelectParams,
    SelectResult,
    SetConfigParams,
    StreamChunkParams,
    UsageResult,
)
from sidecar.wire.model import ModelResponse

__all__ = ["ERROR_DATA", "METHODS", "NOTIFICATIONS"]

#: method → (params model, result model)
METHODS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "model:generate": (GenerateParams, ModelResponse),
    "model:stream": (GenerateParams, ModelResponse),
    "model:list-models": (ListModelsParams, ListModelsResult),
    "model:get-config": (EmptyParams, ConfigView),
    "model:set-config": (SetConfigParams, ConfigView),
    "model:health": (EmptyParams, HealthResult),
    "model:select": (SelectParams, SelectResult),
    "model:usage": (EmptyParams, UsageResult),
    "sidecar:shutdown": (EmptyParams, EmptyResult),
    "model:discover": (EmptyParams, DiscoverResult),
    "model:pull": (PullParams, PullResult),
}

#: notification → (direction, params model)
NOTIFICATIONS: dict[str, tuple[str, type[BaseModel]]] = {
    "sidecar:ready": ("sidecar→host", ReadyParams),
    "model:stream-chunk": ("sidecar→host", StreamChunkParams),
    "model:budget-alert": ("sidecar→host", BudgetAlertParams),
    "model:pull-progress": ("sidecar→host", PullProgressParams),
    "$/cancelRequest": ("host→sidecar", CancelRequestParams),
}

ERROR_DATA = ErrorData
