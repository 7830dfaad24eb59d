"""Request, selection, response and model-info types of the protocol's "Types" section."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, model_validator

from sidecar.wire.base import ParamsModel, ResultModel

__all__ = [
    "Attempt",
    "AttemptError",
    "Capability",
    "ChatTurn",
    "CostPer1k",
    "JsonFormat",
    "JsonSchemaFormat",
    "ModelInfo",
    "ModelRequest",
    "ModelResponse",
    "ModelSelection",
    "Priority",
    "ResponseFormat",
    "ResponseMetadata",
    "StreamingChunk",
    "TaskType",
    "TemplateFormat",
    "UsageInfo",
    "XmlFormat",
]


class TaskType(StrEnum):
    """The seven task types the classifier tells apart; ``request.taskType`` overrides it."""

    code_generation = "code_generation"
    code_explanation = "code_explanation"
    code_review = "code_review"
    planning = "planning"
    refactoring = "refactoring"
    testing = "testing"
    documentation = "documentation"


class Priority(StrEnum):
    speed = "speed"
    quality = "quality"
    cost = "cost"
    balanced = "balanced"


class Capability(StrEnum):
    chat = "chat"
    streaming = "streaming"
    json_mode = "json_mode"
    json_schema = "json_schema"
    tools = "tools"
    vision = "vision"
    long_context = "long_context"
    code = "code"
    reasoning = "reasoning"
    local = "local"


class ChatTurn(ParamsModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ModelRequest(ParamsModel):
    """What to ask: a prompt or a conversation, plus sampling parameters."""

    prompt: str
    messages: list[ChatTurn] | None = None
    model_id: str | None = Field(default=None, min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: list[str] | None = Field(default=None, max_length=4)
    system_prompt: str | None = None
    context: JsonValue = None
    task_type: TaskType | None = Field(default=None, strict=False)  # enum from its string value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> ModelRequest:
        if not self.prompt and not self.messages:
            raise ValueError("prompt may be empty only when messages are given")
        return self


class ModelSelection(ParamsModel):
    """How to choose; ``modelId`` here wins over ``request.modelId``."""

    provider: str = Field(default="auto", min_length=1)
    model_id: str | None = Field(default=None, min_length=1)
    fallback: bool = True
    fallback_mid_stream: bool = False
    priority: Priority = Field(default=Priority.balanced, strict=False)
    max_cost_usd: float | None = Field(default=None, ge=0)
    local_only: bool = False


class JsonSchemaFormat(ParamsModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")
    name: str | None = Field(default=None, min_length=1, max_length=64)
    max_retries: int | None = Field(default=None, ge=0, le=10)


class JsonFormat(ParamsModel):
    type: Literal["json"]
    max_retries: int | None = Field(default=None, ge=0, le=10)


class XmlFormat(ParamsModel):
    type: Literal["xml"]
    root_element: str | None = None
    xsd: str | None = None
    max_retries: int | None = Field(default=None, ge=0, le=10)


class TemplateFormat(ParamsModel):
    """Extension: a named template from the config's ``formatTemplates``."""

    type: Literal["template"]
    template: str = Field(min_length=1)
    max_retries: int | None = Field(default=None, ge=0, le=10)


ResponseFormat = Annotated[JsonSchemaFormat | JsonFormat | XmlFormat | TemplateFormat, Field(discriminator="type")]


class UsageInfo(ResultModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AttemptError(ResultModel):
    type: str
    message: str


class Attempt(ResultModel):
    provider: str
    model_id: str
    error: AttemptError | None = None
    #: With a responseFormat: which enforcement round (0 = first answer, 1 = first retry, …).
    structured_attempt: int | None = None


class ResponseMetadata(ResultModel):
    provider: str
    latency_ms: float
    time_to_first_token_ms: float | None = None
    cost_usd: float
    attempts: list[Attempt]
    #: ``null`` until the task classifier lands; ``request.taskType`` when given.
    task_type: TaskType | None
    selection_reasons: list[str]
    #: With a responseFormat: the output was repaired (small syntax faults) before it validated.
    repaired: bool | None = None
    #: With a responseFormat: the provider mechanism used (e.g. openai-strict, ollama-format).
    structured_mechanism: str | None = None


class ModelResponse(ResultModel):
    content: str
    model: str
    usage: UsageInfo | None = None
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None = None
    parsed: JsonValue = None
    metadata: ResponseMetadata


class StreamingChunk(ResultModel):
    content: str
    done: bool
    model: str | None = None
    restart: bool | None = None
    #: With a JSON responseFormat: the value parsed from the text so far (partial objects).
    partial: JsonValue = None


class CostPer1k(ResultModel):
    input: float
    output: float


class ModelInfo(ResultModel):
    id: str
    name: str
    provider: str
    context_window: int
    max_output_tokens: int | None = None
    cost_per_1k_tokens: CostPer1k | None = Field(default=None, alias="costPer1kTokens")
    capabilities: list[Capability]
    available: bool
    version: str | None = None
    deprecated: bool | None = None
