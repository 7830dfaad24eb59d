"""The sidecar's one error tree: every class is one row of the protocol's error table.

Everything the sidecar raises on purpose derives from :class:`SidecarError`. Each class
carries its JSON-RPC ``code``, its wire ``type`` (``data.type``) and whether a host may
retry the same request (``retryable``). Context is keyword-only and ends up in
``error.data``. Coding mistakes use built-in exceptions and surface as ``InternalError``.

::

    SidecarError
    ├── ParseError                  -32700  line is not JSON
    ├── InvalidRequest              -32600  not a JSON-RPC request object
    │   └── MessageTooLarge         -32600  line over --max-message-bytes
    ├── MethodNotFound              -32601
    ├── InvalidParams               -32602  data.errors = [{path, message}]
    ├── InternalError               -32603  a bug; the sidecar keeps serving
    ├── ProviderError                       failures of one upstream attempt
    │   ├── NetworkError            -32001  connect/read failure or timeout
    │   ├── RateLimitError          -32002  429 or local limiter queue full
    │   ├── AuthenticationError     -32003  401/403, missing key
    │   ├── ModelError              -32004  model missing or overloaded (404, 5xx, 529)
    │   └── ValidationError         -32005  provider rejected the request (400, too long)
    ├── BudgetExceededError         -32006
    ├── StructuredOutputError       -32007
    ├── AllProvidersFailedError     -32008  data.attempts
    ├── StorageError                -32009  data dir not writable; data.path, data.reason
    └── RequestCancelled            -32800  $/cancelRequest or shutdown
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "AllProvidersFailedError",
    "AttemptRecord",
    "AuthenticationError",
    "BudgetExceededError",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MessageTooLarge",
    "MethodNotFound",
    "ModelError",
    "NetworkError",
    "ParseError",
    "ProviderError",
    "RateLimitError",
    "RequestCancelled",
    "SidecarError",
    "StorageError",
    "StructuredOutputError",
    "ValidationError",
]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One upstream attempt of a request, as ``metadata.attempts`` and ``data.attempts``
    list it: typed while the request runs, rendered only when it is sent."""

    provider: str
    model_id: str
    #: The failure's ``data.type`` and message; both ``None`` for the attempt that answered.
    error_type: str | None = None
    error_message: str | None = None
    #: Which structured-output round the attempt belonged to (0 = the first).
    structured_attempt: int | None = None

    @classmethod
    def failed(cls, provider: str, model_id: str, error: SidecarError) -> AttemptRecord:
        return cls(provider, model_id, error.wire_type, error.message)

    def wire(self) -> dict[str, Any]:
        record: dict[str, Any] = {"provider": self.provider, "modelId": self.model_id}
        if self.error_type is not None:
            record["error"] = {"type": self.error_type, "message": self.error_message or ""}
        if self.structured_attempt is not None:
            record["structuredAttempt"] = self.structured_attempt
        return record


class SidecarError(Exception):
    """Base of every error the sidecar sends on purpose."""

    code: ClassVar[int] = -32603
    type: ClassVar[str] = "InternalError"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model_id: str | None = None,
        retryable: bool | None = None,
        attempts: list[AttemptRecord] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model_id = model_id
        self.retryable = self.default_retryable if retryable is None else retryable
        self.attempts = attempts
        self.extra: dict[str, Any] = dict(extra or {})

    @property
    def wire_type(self) -> str:
        """The ``data.type`` this error is sent with."""
        return self.type

    def to_data(self) -> dict[str, Any]:
        """The JSON-RPC ``error.data`` object (camelCase, no secrets: callers redact)."""
        data: dict[str, Any] = {"type": self.wire_type, "retryable": self.retryable}
        if self.provider is not None:
            data["provider"] = self.provider
        if self.model_id is not None:
            data["modelId"] = self.model_id
        if self.attempts is not None:
            data["attempts"] = [attempt.wire() for attempt in self.attempts]
        data.update(self.extra)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, provider={self.provider!r})"


class ParseError(SidecarError):
    """The input line is not valid JSON (or not UTF-8)."""

    code = -32700
    type = "ParseError"


class InvalidRequest(SidecarError):
    """The message is JSON but not a JSON-RPC 2.0 request or notification we accept."""

    code = -32600
    type = "InvalidRequest"


class MessageTooLarge(InvalidRequest):
    """An input line exceeded the configured maximum size and was discarded."""

    type = "MessageTooLarge"


class MethodNotFound(SidecarError):
    """No channel of that name."""

    code = -32601
    type = "MethodNotFound"


class InvalidParams(SidecarError):
    """Params failed validation; ``data.errors`` lists ``{path, message}`` entries."""

    code = -32602
    type = "InvalidParams"

    def __init__(self, message: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message, extra={"errors": errors or []})
        self.errors = errors or []


class InternalError(SidecarError):
    """A bug in the sidecar. The request fails; the process keeps serving."""

    code = -32603
    type = "InternalError"


class ProviderError(SidecarError):
    """A failure of one upstream attempt; the router decides on retry and fallback."""

    #: Whether the router may try the next provider in the chain after this error.
    fallback_allowed: ClassVar[bool] = True
    #: Whether the router may retry the same provider after this error.
    retry_same: ClassVar[bool] = True
    #: Whether the error says something about the whole provider (its address, key or
    #: rate limit), so that its other models would fail alike and it cools down.
    provider_wide: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model_id: str | None = None,
        retryable: bool | None = None,
        status: int | None = None,
        retry_after_ms: int | None = None,
        extra: dict[str, Any] | None = None,
        upstream: str | None = None,
    ) -> None:
        super().__init__(
            message, provider=provider, model_id=model_id, retryable=retryable, extra=extra
        )
        self.status = status
        self.retry_after_ms = retry_after_ms
        #: The provider's own error text, as it sent it: what a provider module may
        #: classify (which parameter a server refused); our message is for people.
        self.upstream = upstream

    @property
    def may_retry_same(self) -> bool:
        """Whether another attempt on the same provider and model could succeed."""
        return self.retry_same and self.retryable

    @property
    def may_fall_back(self) -> bool:
        """Whether the next candidate of the fallback chain may be tried."""
        return self.fallback_allowed

    def to_data(self) -> dict[str, Any]:
        data = super().to_data()
        if self.status is not None:
            data["status"] = self.status
        if self.retry_after_ms is not None:
            data["retryAfterMs"] = self.retry_after_ms
        return data


class NetworkError(ProviderError):
    """Connect or read failure, a broken stream, or a timeout."""

    code = -32001
    type = "NetworkError"
    default_retryable = True
    provider_wide = True


class RateLimitError(ProviderError):
    """The provider answered 429, or the local limiter's queue is full."""

    code = -32002
    type = "RateLimitError"
    default_retryable = True
    provider_wide = True

    def __init__(self, message: str, *, limiter: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: The sidecar's own limiter that refused (None: the provider itself said 429).
        self.limiter = limiter
        if limiter is not None:
            self.extra.setdefault("limiter", limiter)

    @property
    def from_local_limiter(self) -> bool:
        """Refused by the sidecar's own limiter, not by the provider: nobody to blame."""
        return self.limiter is not None


class AuthenticationError(ProviderError):
    """401/403 or a missing key: never retried on the same provider."""

    code = -32003
    type = "AuthenticationError"
    retry_same = False
    provider_wide = True


class ModelError(ProviderError):
    """The model is missing (not retryable) or overloaded/failing (retryable)."""

    code = -32004
    type = "ModelError"
    default_retryable = True


class ValidationError(ProviderError):
    """The provider rejected the request; only context-too-long may fall back."""

    code = -32005
    type = "ValidationError"
    retry_same = False

    def __init__(self, message: str, *, context_too_long: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.context_too_long = context_too_long
        if context_too_long:
            self.extra["contextTooLong"] = True

    @property
    def may_fall_back(self) -> bool:
        return self.context_too_long


class BudgetExceededError(SidecarError):
    """The budget blocks the request; ``data.usage`` tells where spending stands."""

    code = -32006
    type = "BudgetExceededError"


class StructuredOutputError(SidecarError):
    """Output still invalid after retries; carries validation errors and last content."""

    code = -32007
    type = "StructuredOutputError"


class AllProvidersFailedError(SidecarError):
    """Every candidate of the fallback chain failed; ``data.attempts`` lists them."""

    code = -32008
    type = "AllProvidersFailedError"


class StorageError(SidecarError):
    """The data dir cannot be written (disk full, read-only, locked past a bounded wait).

    Raised before anything goes upstream; ``data.path`` and ``data.reason`` say what
    failed. Retryable: the same request may succeed once the disk is writable again.
    """

    code = -32009
    type = "StorageError"
    default_retryable = True

    def __init__(self, message: str, *, path: str, reason: str, **kwargs: Any) -> None:
        extra = {"path": path, "reason": reason, **(kwargs.pop("extra", None) or {})}
        super().__init__(message, extra=extra, **kwargs)
        self.path = path
        self.reason = reason


class RequestCancelled(SidecarError):
    """Cancelled by ``$/cancelRequest`` or by shutdown."""

    code = -32800
    type = "RequestCancelled"
