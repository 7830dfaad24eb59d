"""Request, selection, response and model-info types of the protocol's "Types" section."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, JsonValue, Tag, model_validator

from sidecar.wire.base import ParamsModel, ResultModel

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "AssistantTurn",
    "Attempt",
    "AttemptError",
    "Capability",
    "ChatTurn",
    "ContentPart",
    "CostPer1k",
    "ImagePart",
    "JsonFormat",
    "JsonSchemaFormat",
    "ModelInfo",
    "ModelRequest",
    "ModelResponse",
    "ModelSelection",
    "NamedToolChoice",
    "Priority",
    "ResponseFormat",
    "ResponseMetadata",
    "StreamingChunk",
    "SystemTurn",
    "TaskType",
    "TemplateFormat",
    "TextPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolDefinition",
    "ToolTurn",
    "UsageInfo",
    "UserTurn",
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


#: A tool's name, as every provider accepts it.
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
#: Image media types every provider takes.
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
ImageMediaType = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]


class TextPart(ParamsModel):
    type: Literal["text"]
    text: str


class ImagePart(ParamsModel):
    """An image, given by exactly one of ``data`` (base64, with ``mediaType``), ``url``
    (http/https) or ``path`` (an absolute local file the sidecar reads)."""

    type: Literal["image"]
    data: str | None = Field(default=None, min_length=1)
    media_type: ImageMediaType | None = None
    url: str | None = Field(default=None, pattern=r"^[hH][tT][tT][pP][sS]?://\S+$", max_length=8192)
    path: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        given = [name for name in ("data", "url", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("an image part needs exactly one of data, url or path")
        if self.data is not None and self.media_type is None:
            raise ValueError("an image given as data needs its mediaType")
        return self


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ToolCall(ParamsModel):
    """A call the model made: as a response returns it, and as the host sends it back."""

    id: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: dict[str, JsonValue]


class SystemTurn(ParamsModel):
    role: Literal["system"]
    content: str


def _text_or_parts(value: Any) -> str:
    return "string" if isinstance(value, str) else "parts"


#: A user turn's content: a string, or text and image parts (errors name one form only).
UserContent = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[ContentPart], Tag("parts")], Discriminator(_text_or_parts)
]


class UserTurn(ParamsModel):
    role: Literal["user"]
    content: UserContent


class AssistantTurn(ParamsModel):
    role: Literal["assistant"]
    content: str
    tool_calls: list[ToolCall] | None = None


class ToolTurn(ParamsModel):
    """The result of one tool call, answering the call with id ``toolCallId``."""

    role: Literal["tool"]
    tool_call_id: str = Field(min_length=1, max_length=256)
    content: str
    is_error: bool | None = None


ChatTurn = Annotated[SystemTurn | UserTurn | AssistantTurn | ToolTurn, Field(discriminator="role")]


class ToolDefinition(ParamsModel):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    #: A JSON Schema (Draft 2020-12) of an object: the call's arguments.
    parameters: dict[str, JsonValue]


class NamedToolChoice(ParamsModel):
    name: str = Field(pattern=TOOL_NAME_PATTERN)


def _mode_or_named(value: Any) -> str:
    return "named" if isinstance(value, dict) or isinstance(value, NamedToolChoice) else "mode"


ToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("mode")] | Annotated[NamedToolChoice, Tag("named")],
    Discriminator(_mode_or_named),
]


class ModelRequest(ParamsModel):
    """What to ask: a prompt or a conversation, plus sampling parameters."""

    prompt: str
    messages: list[ChatTurn] | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tool_retries: int | None = Field(default=None, ge=0, le=10)
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

    @property
    def has_images(self) -> bool:
        return any(
            isinstance(turn, UserTurn) and not isinstance(turn.content, str)
            and any(isinstance(part, ImagePart) for part in turn.content)
            for turn in self.messages or ()
        )


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
    tool_calls: list[ToolCall] | None = None
    metadata: ResponseMetadata


class ToolCallDelta(ResultModel):
    """A piece of a tool call as it streams: ``id`` and ``name`` on a call's first delta."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str


class StreamingChunk(ResultModel):
    content: str
    done: bool
    model: str | None = None
    restart: bool | None = None
    #: With a JSON responseFormat: the value parsed from the text so far (partial objects).
    partial: JsonValue = None
    tool_calls: list[ToolCallDelta] | None = None


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
