"""The provider interface: one wire protocol behind five methods, nothing about routing.

A provider turns a :class:`ProviderRequest` into upstream HTTP and the answer back into
:class:`Completion` (``generate``) or a sequence of :class:`StreamDelta` (``stream``).
It raises only :mod:`sidecar.errors` provider errors, carrying its own name and the
model. It never retries, never falls back and never sleeps: that is the router's job.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import httpx

from sidecar.errors import SidecarError
from sidecar.providers.guard import DEFAULT_MAX_RESPONSE_BYTES, AnswerGuard
from sidecar.secrets import is_sensitive_header

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]

__all__ = [
    "TOOL_ERROR_PREFIX",
    "ChatMessage",
    "Completion",
    "ContentPart",
    "FinishReason",
    "ImageInput",
    "NamedTool",
    "Provider",
    "ProviderModel",
    "ProviderRequest",
    "ProviderSettings",
    "RateLimitSnapshot",
    "Role",
    "StreamDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolSpec",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image a user turn shows: inline bytes (base64, no ``data:`` prefix, with the
    media type read from the bytes) or a URL the provider fetches."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @property
    def data_url(self) -> str:
        """The image as a URL: its own, or a ``data:`` URL of the inline bytes."""
        return self.url if self.url is not None else f"data:{self.media_type};base64,{self.data}"


#: A piece of a user turn: text, or an image.
ContentPart = str | ImageInput


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call as the model made it; ``arguments`` is the JSON text it produced
    (validated by the router, not here)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: ``index`` numbers the calls of one answer from 0;
    ``id`` and ``name`` come with a call's first delta."""

    index: int
    arguments_delta: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: ``parameters`` is the JSON Schema of its arguments."""

    name: str
    parameters: dict[str, Any]
    description: str | None = None


#: A failed tool's result starts with this where the wire has no error flag for it
#: (OpenAI's and Ollama's tool turns; Anthropic has ``is_error``).
TOOL_ERROR_PREFIX = "Error: "


@dataclass(frozen=True, slots=True)
class NamedTool:
    """``tool_choice`` forcing one tool."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedTool


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of the conversation.

    ``content`` is the turn's text. A user turn showing images also has ``parts`` (text
    and images in order; ``content`` is then their text joined). An assistant turn may
    carry the ``tool_calls`` it made; a ``tool`` turn answers the call ``tool_call_id``
    (``tool_name`` is that call's tool, which Ollama wants instead of the id).
    """

    role: Role
    content: str
    parts: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """A request already resolved to one model; every field optional but the model.

    ``system`` is kept apart from ``messages`` because Anthropic wants it as its own
    field; OpenAI-style providers put it first as a ``system`` message.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: tuple[str, ...] | None = None
    #: Context size the request needs (Ollama's ``num_ctx``); ``None`` leaves the server default.
    context_window: int | None = None
    #: Provider-native structured output parameters (filled by the structured output layer).
    native_format: dict[str, Any] | None = None
    #: Tools offered to the model; ``tool_choice`` None leaves the provider's default (auto).
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    #: False asks for at most one call; None leaves the provider's default.
    parallel_tool_calls: bool | None = None
    #: Bound on one stream line or event, a non-streamed body and the answer's text
    #: (config ``maxResponseBytes``).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer."""

    content: str
    model: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    #: The tool calls of the answer, in order, each with an id unique within it.
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One event of a stream: a piece of text, pieces of tool calls, and/or end-of-stream
    facts."""

    content: str = ""
    model: str | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderModel:
    """A model as the provider itself reports it (merged into the registry later)."""

    id: str
    provider: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = frozenset()
    display_name: str | None = None
    #: What the provider says identifies this build of the model (Ollama's digest).
    version: str | None = None
    #: The provider listed this model's capabilities itself (Ollama's ``/api/show``): a
    #: capability missing from them is really missing.
    capabilities_reported: bool = False


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """What the provider's rate-limit headers said on the last response."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_ms: int | None = None
    reset_tokens_ms: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One configured provider entry, resolved (key from config or environment)."""

    name: str
    kind: str
    base_url: str
    default_model: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout_ms: int | None = None
    local: bool = False
    models: tuple[str, ...] = ()
    #: Time to the first token, a model load included (``None``: see ``core.local_fit.timeouts``).
    first_token_timeout_ms: int | None = None
    #: Load the default model after start-up (local providers).
    preload: bool = False
    #: Ollama: how long a model stays loaded after a request ("10m", "-1": for ever).
    keep_alive: str | None = None
    #: The proxy requests go through (``None``: direct), chosen by
    #: :func:`sidecar.providers.network.choose_proxy`; may hold user info.
    proxy: str | None = None
    #: A PEM bundle trusted besides the system store (``caFile``).
    ca_file: str | None = None
    #: ``insecureSkipVerify``: no certificate check at all for this provider.
    insecure_skip_verify: bool = False


class Provider(abc.ABC):
    """One upstream endpoint speaking one wire protocol.

    Subclasses implement :meth:`generate`, :meth:`stream` and :meth:`list_models`;
    ``stream`` is an async generator and closing it (``aclose``, or cancelling the
    task iterating it) closes the upstream HTTP response.
    """

    #: The config key / wire family this class speaks ("openai", "anthropic", "ollama").
    kind: ClassVar[str]
    #: Capabilities every model of this provider has (``ModelInfo.capabilities``).
    capabilities: ClassVar[frozenset[str]] = frozenset({"chat", "streaming"})
    #: Environment variable holding the key, if the provider takes one.
    key_env_var: ClassVar[str | None] = None

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self.last_rate_limit: RateLimitSnapshot | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def is_local(self) -> bool:
        return self.settings.local

    @property
    def api_key(self) -> str | None:
        """The configured key without surrounding whitespace (a key read from a file or an
        environment variable often ends in a newline, which HTTP forbids in a header)."""
        key = self.settings.api_key
        return key.strip() if key else None

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """What must never leave the process: the key and credential header values."""
        headers = self.settings.headers
        return (self.settings.api_key, *(v for k, v in headers.items() if is_sensitive_header(k)))

    @property
    def local_url(self) -> str | None:
        """The base URL of a local provider (its errors name the server), else None."""
        return self.settings.base_url if self.settings.local else None

    def answer_guard(self, request: ProviderRequest, max_tokens: int | None = None) -> AnswerGuard:
        """The size, token and secret guard of one answer to ``request``.

        ``max_tokens`` is the output limit the upstream request really carries when it
        differs from the request's (a default the provider's API requires).
        """
        return AnswerGuard(
            provider=self.name, model=request.model, secrets=self.secrets,
            max_bytes=request.max_response_bytes,
            max_tokens=max_tokens if max_tokens is not None else request.max_tokens,
        )

    @staticmethod
    def guarded(completion: Completion, guard: AnswerGuard) -> Completion:
        """A non-streamed answer through ``guard``: secrets scrubbed, its size checked, and
        cut at the output-token ceiling with ``finish_reason="length"``. The usage the
        provider reported is kept: that is what it bills."""
        content = guard.whole(completion.content)
        finish = "length" if guard.cut else completion.finish_reason
        return dataclasses.replace(completion, content=content, finish_reason=finish)

    @abc.abstractmethod
    async def generate(self, request: ProviderRequest) -> Completion:
        """Send one non-streaming request."""

    @abc.abstractmethod
    def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamDelta, None]:
        """Send one streaming request and yield its deltas as they arrive."""

    @abc.abstractmethod
    async def list_models(self) -> list[ProviderModel]:
        """The models the endpoint reports."""

    async def get_model_info(self, model_id: str) -> ProviderModel | None:
        """What the endpoint says about one model (default: look it up in the list)."""
        for model in await self.list_models():
            if model.id == model_id:
                return model
        return None

    async def is_available(self) -> bool:
        """Whether the endpoint answers at all (a cheap probe; never raises)."""
        try:
            await self.list_models()
        except SidecarError:
            return False
        return True

    async def aclose(self) -> None:
        await self.client.aclose()
