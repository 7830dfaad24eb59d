"""Params and results of every channel, and the notifications both sides send."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sidecar.wire.base import ParamsModel, ResultModel
from sidecar.wire.config import ConfigStatus
from sidecar.wire.model import ModelInfo, ModelRequest, ModelSelection, ResponseFormat, StreamingChunk

__all__ = [
    "BudgetAlertParams",
    "CancelRequestParams",
    "DiscoverResult",
    "DiscoveredServer",
    "EmptyParams",
    "EmptyResult",
    "GenerateParams",
    "HealthResult",
    "LedgerHealth",
    "ListModelsParams",
    "ListModelsResult",
    "LocalServerHealth",
    "ProviderHealth",
    "ProviderRateLimit",
    "PullParams",
    "PullProgressParams",
    "PullResult",
    "ReadyParams",
    "SetConfigParams",
    "StreamChunkParams",
]

RequestId = int | str


class EmptyParams(ParamsModel):
    """``{}``: no params (an absent ``params`` member is accepted too)."""


class EmptyResult(ResultModel):
    """``{}``."""


class GenerateParams(ParamsModel):
    """Params of ``model:generate`` and ``model:stream``."""

    request: ModelRequest
    selection: ModelSelection | None = None
    response_format: ResponseFormat | None = None


class ListModelsParams(ParamsModel):
    provider: str | None = Field(default=None, min_length=1)
    refresh: bool = False


class ListModelsResult(ResultModel):
    models: list[ModelInfo]


class SetConfigParams(ParamsModel):
    """A JSON merge patch (RFC 7386) over the stored ``ModelConfig``."""

    config: dict[str, Any]


class ProviderRateLimit(ResultModel):
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_ms: int | None = None
    reset_tokens_ms: int | None = None


class LimiterState(ResultModel):
    """A local rate limiter: what is in flight, queued, used in the window, and paused."""

    in_flight: int
    queued: int
    window_requests: int
    window_tokens: int
    max_requests: int | None = None
    max_tokens: int | None = None
    max_concurrent: int | None = None
    window_ms: int | None = None
    paused_for_ms: int = 0
    pause_reason: str | None = None
    estimated_wait_ms: int | None = None


class LocalServerHealth(ResultModel):
    """A model server the sidecar runs itself for this provider (its entry's ``server``)."""

    state: Literal["stopped", "starting", "ready", "crashed"] = Field(description=(
        "stopped: not running (started by the next request); starting: waiting for its health path; "
        "ready: serving; crashed: died or failed to start (lastError says how; the next request starts it "
        "again unless gaveUp)."))
    pid: int | None = None
    port: int
    restarts: int = Field(default=0, description="Starts after a crash or a failed start.")
    last_error: str | None = None
    gave_up: bool = Field(default=False, description=(
        "Failed maxRestarts times in a row: requests fail at once until its config changes."))


class ProviderHealth(ResultModel):
    available: bool
    enabled: bool
    local: bool
    last_error: str | None = None
    latency_ms_p50: float | None = Field(default=None, alias="latencyMsP50")
    error_rate: float | None = None
    rate_limit: ProviderRateLimit | None = Field(
        default=None, description="What the provider's own rate-limit headers said last.")
    cool_down_ms: int = Field(
        default=0, description="Time left before routing tries this provider again after failures (0: none).")
    limiter: LimiterState | None = Field(default=None, description="The sidecar's own limiter for this provider.")
    model_limiters: dict[str, LimiterState] | None = Field(
        default=None, description="Per-model limiters configured with modelRateLimits.")
    server: LocalServerHealth | None = Field(default=None, description=(
        "The server the sidecar runs for this entry, if it runs one."))
    insecure_skip_verify: bool | None = Field(default=None, description=(
        "true: this provider's TLS certificates are not checked (insecureSkipVerify in its entry)."))
    proxy: str | None = Field(default=None, description=(
        "The proxy this provider's requests go through (password previewed); absent: direct."))
    state: Literal["ready", "loading", "down"] = Field(default="ready", description=(
        "loading: a model is being loaded (a managed server starting; an Ollama model asked for and not "
        "yet in /api/ps), so a request waits instead of failing; down: not available; ready: otherwise."))
    loading_models: list[str] | None = Field(default=None, description="loading: the models being loaded.")


class LedgerHealth(ResultModel):
    """The usage ledger: where spending is recorded, and whether it can be."""

    status: Literal["persistent", "memory", "readonly"] = Field(
        description="persistent: the file, writable; readonly: the file can be read, not written (paid calls "
                    "are refused); memory: no file (paid calls are refused, free calls are served).")
    path: str
    problem: str | None = Field(default=None, description="Why the ledger is not plainly writable, or the "
                                                          "last write it could not make.")
    moved_aside: str | None = Field(default=None, description="Where a corrupt ledger was moved at start: "
                                                              "the spend recorded in it no longer counts.")
    pending: int = Field(default=0, description="Usage records journalled or held in memory, counted in "
                                                "model:usage, not written into the ledger yet.")


class HealthResult(ResultModel):
    providers: dict[str, ProviderHealth]
    config: ConfigStatus | None = Field(default=None, description="How config.json loaded.")
    ledger: LedgerHealth | None = Field(default=None, description="The usage ledger's state.")


class ReadyParams(ResultModel):
    """``sidecar:ready``, the first line on stdout."""

    protocol_version: int
    version: str
    channels: list[str]
    pid: int


class StreamChunkParams(ResultModel):
    """``model:stream-chunk``."""

    request_id: RequestId
    seq: int
    chunk: StreamingChunk


class BudgetAlertParams(ResultModel):
    """``model:budget-alert``: sent once per period when spending crosses the threshold,
    and once more when it reaches the limit (then ``threshold`` is 1)."""

    period: str
    spent_usd: float
    limit_usd: float
    threshold: float


class CancelRequestParams(ParamsModel):
    """``$/cancelRequest`` (host → sidecar)."""

    id: RequestId


class ValidationIssue(ResultModel):
    path: str = Field(description="JSON pointer to the offending field ('' for the whole object).")
    message: str


class ErrorData(ResultModel):
    """``error.data`` of every error the sidecar sends."""

    type: str
    retryable: bool
    provider: str | None = None
    model_id: str | None = None
    status: int | None = Field(default=None, description="Upstream HTTP status, when there was one.")
    retry_after_ms: int | None = None
    attempts: list[dict[str, Any]] | None = None
    errors: list[ValidationIssue] | None = Field(default=None, description="InvalidParams only.")
    partial_content: str | None = Field(default=None, description="Text already streamed before a failure.")
    usage: dict[str, Any] | None = Field(default=None, description="BudgetExceededError: the model:usage result.")
    context_too_long: bool | None = Field(default=None, description="ValidationError: the context did not fit.")
    prompt_tokens: int | None = Field(default=None, description=(
        "ValidationError refused before sending: the prompt's estimated tokens (errs high)."))
    context_window: int | None = Field(default=None, description=(
        "ValidationError refused before sending: the window the local server runs the model with."))
    limiter: str | None = Field(default=None, description="RateLimitError from the sidecar's own limiter: its name.")
    reason: str | None = Field(default=None, description="Own limiter: queueFull | waitTooLong | waitTimedOut.")
    provider_type: str | None = Field(default=None, description="The provider's own error type, when it sent one.")
    provider_code: str | None = Field(default=None, description="The provider's own error code, when it sent one.")
    id: int | str | None = Field(default=None, description="InvalidRequest for a duplicate: the id in flight.")


class SelectParams(ParamsModel):
    """Params of ``model:select``: what ``model:generate`` would get, minus the format."""

    request: ModelRequest
    selection: ModelSelection | None = None


class SelectCandidate(ResultModel):
    provider: str
    model_id: str
    score: float | None = Field(default=None, description="0..1; absent when excluded.")
    estimated_cost_usd: float = Field(description="Worst case: prompt estimate plus all output tokens.")
    context_window: int
    tier: str
    local: bool
    available: bool
    factors: dict[str, float] | None = None
    excluded: str | None = Field(default=None, description="Why this model cannot serve the request.")


class SelectResult(ResultModel):
    """The decision ``model:generate`` would act on, without calling a model."""

    provider: str
    model_id: str
    task_type: str
    complexity: str
    prompt_tokens: int = Field(description="Estimated prompt tokens (errs high).")
    reasons: list[str]
    candidates: list[SelectCandidate] = Field(description="Every model considered, best first; excluded last.")
    fallbacks: list[str] = Field(description="provider/model in the order they would be tried after the first.")


class UsagePeriod(ResultModel):
    period_start: str
    period_end: str
    spent_usd: float
    reserved_usd: float = Field(description="Held by calls in flight (their worst-case cost).")
    limit_usd: float | None
    remaining_usd: float | None = Field(description="max(0, limit - spent - reserved); null without a limit.")
    over: bool
    alert_sent: bool


class UsageEntry(ResultModel):
    spent_usd: float
    requests: int
    prompt_tokens: int
    completion_tokens: int


class UsageResult(ResultModel):
    """``model:usage``: spend in the current day and month, limits, and where it went."""

    timezone: str
    daily: UsagePeriod
    monthly: UsagePeriod
    by_provider: dict[str, UsageEntry] = Field(description="This month, per provider.")
    by_model: dict[str, UsageEntry] = Field(description="This month, per provider/model.")
    block_on_limit: bool
    alert_threshold: float


class DiscoveredServer(ResultModel):
    """One local model server found by ``model:discover``."""

    kind: Literal["ollama", "lmstudio", "llamacpp", "vllm", "jan", "localai", "openai-compatible"]
    base_url: str = Field(alias="baseURL", description="As a provider entry's baseURL is written (/v1 but for "
                                                        "Ollama).")
    models: list[str]
    configured: bool = Field(description="Some enabled provider entry's baseURL points at this server.")
    provider: str | None = Field(default=None, description="That provider's name.")


class DiscoverResult(ResultModel):
    """``model:discover``: local servers found by short loopback probes; nothing is changed."""

    servers: list[DiscoveredServer]


#: Ollama model names: ``[host[:port]/][namespace/]model[:tag]`` (``hf.co/org/repo:Q4_K_M``).
_OLLAMA_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"


class PullParams(ParamsModel):
    """Params of ``model:pull``: download a model into an Ollama provider."""

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1, max_length=512, pattern=_OLLAMA_MODEL_NAME)
    stall_timeout_ms: int = Field(default=60_000, ge=100, le=3_600_000, description=(
        "Extension: the pull fails with NetworkError when no byte arrives for this long."))


class PullResult(ResultModel):
    provider: str
    model: str
    digest: str | None = Field(default=None, description="The pulled model's digest, as /api/tags lists it.")
    size_bytes: int | None = Field(default=None, description="Its size on disk, as /api/tags lists it.")


class PullProgressParams(ResultModel):
    """``model:pull-progress``: Ollama's progress lines, at most ~10 a second plus each new status."""

    request_id: RequestId
    status: str
    completed_bytes: int | None = None
    total_bytes: int | None = None
    digest: str | None = None
