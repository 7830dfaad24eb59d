"""The error tree matches the protocol's error table, code for code."""

from __future__ import annotations

import inspect

import pytest

from sidecar import errors
from sidecar.errors import ProviderError, SidecarError

#: The protocol's table: data.type → (code, retryable by default)
TABLE = {
    "ParseError": (-32700, False),
    "InvalidRequest": (-32600, False),
    "MessageTooLarge": (-32600, False),
    "MethodNotFound": (-32601, False),
    "InvalidParams": (-32602, False),
    "InternalError": (-32603, False),
    "NetworkError": (-32001, True),
    "RateLimitError": (-32002, True),
    "AuthenticationError": (-32003, False),
    "ModelError": (-32004, True),
    "ValidationError": (-32005, False),
    "BudgetExceededError": (-32006, False),
    "StructuredOutputError": (-32007, False),
    "AllProvidersFailedError": (-32008, False),
    "StorageError": (-32009, True),
    "RequestCancelled": (-32800, False),
}


def concrete_classes() -> list[type[SidecarError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, SidecarError) and c not in (SidecarError, ProviderError)]


def test_every_row_has_a_class_named_like_its_type() -> None:
    by_type = {c.type: c for c in concrete_classes()}
    assert set(by_type) == set(TABLE)
    for wire_type, (code, retryable) in TABLE.items():
        cls = by_type[wire_type]
        assert cls.__name__ == wire_type
        assert cls.code == code
        assert cls.default_retryable is retryable


@pytest.mark.parametrize("cls", concrete_classes(), ids=lambda c: c.__name__)
def test_data_always_has_type_and_retryable(cls: type[SidecarError]) -> None:
    if cls is errors.InvalidParams:
        exc: SidecarError = cls("m", errors=[])
    elif cls is errors.StorageError:
        exc = cls("m", path="/x", reason="read-only")
    else:
        exc = cls("m")
    data = exc.to_data()
    assert data["type"] == cls.type and isinstance(data["retryable"], bool)


def test_fallback_and_retry_rules_are_class_properties() -> None:
    assert not errors.AuthenticationError("x").may_retry_same
    assert errors.AuthenticationError("x").may_fall_back
    assert errors.NetworkError("x").may_retry_same
    assert not errors.ModelError("gone", retryable=False).may_retry_same
    assert not errors.ValidationError("bad").may_fall_back
    assert errors.ValidationError("long", context_too_long=True).may_fall_back


def test_policy_flags_are_typed_not_read_from_text() -> None:
    # Provider-wide failures are a property of the class, whatever the message says.
    assert errors.NetworkError("x").provider_wide and errors.AuthenticationError("x").provider_wide
    assert errors.RateLimitError("x").provider_wide
    assert not errors.ModelError("limiter").provider_wide
    # The sidecar's own limiter is told from a provider 429 by a typed field.
    own = errors.RateLimitError("queue full", limiter="openai")
    assert own.from_local_limiter and own.to_data()["limiter"] == "openai"
    upstream = errors.RateLimitError("limiter says 429", extra={"note": "limiter"})
    assert not upstream.from_local_limiter
