"""OpenAI Chat Completions, for the official API and every OpenAI-compatible server.

``OpenAIProvider`` speaks ``POST /chat/completions`` (https://platform.openai.com/docs/api-reference/chat) and serves the
official API; ``OpenAICompatibleProvider`` is the same wire for custom entries
(llama.cpp, vLLM, LM Studio, Ollama ``/v1``, see https://github.com/ollama/ollama/blob/main/docs/openai.md), which need no
key and still want the old ``max_tokens`` name. Both share one body builder and one
finish-reason/usage mapping so the streaming and non-streaming paths cannot drift.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator
from typing import Any, ClassVar, Literal

from sidecar.errors import (
    AuthenticationError,
    ModelError,
    NetworkError,
    ProviderError,
    RateLimitError,
    SidecarError,
)
from sidecar.providers.base import (
    TOOL_ERROR_PREFIX,
    ChatMessage,
    Completion,
    ContentPart,
    FinishReason,
    NamedTool,
    ProviderModel,
    ProviderRequest,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    Usage,
)
from sidecar.providers.failures import error_from_payload, redact_errors
from sidecar.providers.framing import SSEEvent, as_count, loads_body, text_or
from sidecar.providers.guard import DEFAULT_MAX_RESPONSE_BYTES, AnswerGuard
from sidecar.providers.http import probe
from sidecar.providers.skeleton import HttpProvider
from sidecar.wire.kinds import KINDS

__all__ = [
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "build_chat_body",
    "is_reasoning_model",
    "map_finish_reason",
    "map_usage",
]

_CHAT_PATH = "/chat/completions"
_MODELS_PATH = "/models"

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    # Deprecated spelling of tool_calls (https://platform.openai.com/docs/api-reference/chat/create, the finish_reason enum).
    "function_call": "tool_calls",
}



def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is an OpenAI reasoning model (o-series, gpt-5 family minus ``-chat``)."""
    model = model.lower()
    if model.startswith("gpt-5"):
        return "-chat" not in model
    return model.startswith(("o1", "o3", "o4"))


def _rejects_stop(model: str) -> bool:
    # https://platform.openai.com/docs/api-reference/chat/create: `stop` is "not supported by o3/o4-mini".
    model = model.lower()
    return model.startswith(("o3", "o4-mini"))


def build_chat_body(request: ProviderRequest, *, official: bool, stream: bool) -> dict[str, Any]:
    """The Chat Completions body for ``request``; only the fields that are set.

    ``official`` selects the official API's dialect: ``max_completion_tokens`` (custom
    servers such as llama.cpp only know ``max_tokens``) and no sampling parameters for
    reasoning models.
    """
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(wire_message(m, official=official) for m in request.messages)
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    body.update(_tool_fields(request, official=official))

    # https://platform.openai.com/docs/api-reference/chat/create: reasoning models (o-series, gpt-5 family) answer 400
    # `unsupported_value` to non-default temperature/top_p/penalties, and o3/o4-mini
    # reject `stop`; OpenAI-compatible servers get whatever was asked.
    reasoning = official and is_reasoning_model(request.model)
    if not reasoning:
        for name, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("frequency_penalty", request.frequency_penalty),
            ("presence_penalty", request.presence_penalty),
        ):
            if value is not None:
                body[name] = value
    if request.max_tokens is not None:
        # `max_tokens` is deprecated and refused by o-series/gpt-5 on the official API.
        body["max_completion_tokens" if official else "max_tokens"] = request.max_tokens
    if request.stop and not (official and _rejects_stop(request.model)):
        body["stop"] = list(request.stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.native_format:
        body.update(request.native_format)
    return body


def wire_message(message: ChatMessage, *, official: bool = True) -> dict[str, Any]:
    """One turn as Chat Completions wants it: images as ``image_url`` content parts, an
    assistant's calls as ``tool_calls`` with their arguments as a JSON string (``content``
    null when it said nothing else; ``""`` for other servers: llama-cpp-python's server
    answers 500 to a null content), a tool result as a ``tool`` message."""
    if message.role == "tool":
        # Chat Completions has no error flag on a tool result: the text says it.
        content = TOOL_ERROR_PREFIX + message.content if message.is_error else message.content
        return {"role": "tool", "tool_call_id": message.tool_call_id or "", "content": content}
    if message.tool_calls:
        return {
            "role": "assistant", "content": message.content or (None if official else ""),
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in message.tool_calls
            ],
        }
    if message.parts:
        return {"role": message.role, "content": [_wire_part(part) for part in message.parts]}
    return {"role": message.role, "content": message.content}


def _wire_part(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    # https://platform.openai.com/docs/guides/images-vision: an http(s) URL or a base64 data URL.
    return {"type": "image_url", "image_url": {"url": part.data_url}}


def _tool_fields(request: ProviderRequest, *, official: bool) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` (none of them without tools:
    the API refuses ``parallel_tool_calls`` alone)."""
    if not request.tools:
        return {}
    tools, choice = (request.tools, request.tool_choice) if official else _compatible_choice(request)
    fields: dict[str, Any] = {"tools": [_wire_tool(tool, official=official) for tool in tools]}
    if choice is not None:
        fields["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if isinstance(choice, NamedTool) else choice
        )
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def _compatible_choice(request: ProviderRequest) -> tuple[tuple[ToolSpec, ...], ToolChoice | None]:
    """The tools and choice sent to an OpenAI-compatible server.

    Servers honour different forms: llama.cpp's server takes only the strings (it reads
    the object form as ``auto``), llama-cpp-python's ``chatml-function-calling`` handler
    forces a named function but fails on ``required``, vLLM takes both. So ``required``
    with one tool becomes the named form, and a named choice offers only that tool: a
    server that forces it calls it, one that reads ``auto`` has nothing else to call.
    ``required`` with several tools stays ``required``.
    """
    tools, choice = request.tools, request.tool_choice
    if choice == "required" and len(tools) == 1:
        choice = NamedTool(tools[0].name)
    if isinstance(choice, NamedTool):
        tools = tuple(tool for tool in tools if tool.name == choice.name) or tools
    return tools, choice


def _wire_tool(tool: ToolSpec, *, official: bool) -> dict[str, Any]:
    """One tool: the official API gets the strict form of its schema when there is one
    (https://platform.openai.com/docs/guides/function-calling, strict mode); other servers
    the schema lowered to what llama.cpp's grammar converter takes (the answer is still
    validated against the original)."""
    # Imported on first use: structured/lower brings jsonschema (~5 MB, ~80 ms), which a
    # sidecar that never sees a tool never needs.
    from sidecar.structured.grammar_profiles import lower_for_grammar
    from sidecar.structured.lower import openai_strict_schema

    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if official:
        strict = openai_strict_schema(tool.parameters)
        function["parameters"] = strict if strict is not None else tool.parameters
        if strict is not None:
            function["strict"] = True
    else:
        function["parameters"] = lower_for_grammar(tool.parameters).schema
    return {"type": "function", "function": function}


def map_finish_reason(value: object) -> FinishReason | None:
    """The portable finish reason for an OpenAI-style ``finish_reason`` (None if unknown)."""
    return _FINISH_REASONS.get(value) if isinstance(value, str) else None


def _with_calls(finish: FinishReason | None, has_calls: bool) -> FinishReason | None:
    """The finish reason of an answer that may hold calls: a forced call (tool_choice
    required or named) ends with "stop" (https://platform.openai.com/docs/guides/function-calling),
    so calls make it "tool_calls"; "length" and "content_filter" still say the answer was cut."""
    return "tool_calls" if has_calls and finish in (None, "stop") else finish


def map_usage(value: object) -> Usage | None:
    """``usage{prompt_tokens, completion_tokens}`` as :class:`Usage` (None when absent)."""
    if not isinstance(value, dict):
        return None
    return Usage(
        prompt_tokens=as_count(value.get("prompt_tokens")),
        completion_tokens=as_count(value.get("completion_tokens")),
    )


def tool_calls_of(message: object) -> tuple[ToolCall, ...]:
    """An answer's ``message.tool_calls`` (or the deprecated lone ``function_call``, which
    some compatible servers still send) with the argument text as the model wrote it: the
    spec warns it may not be valid JSON, and the router judges it."""
    if not isinstance(message, dict):
        return ()
    entries = message.get("tool_calls")
    if isinstance(entries, list) and entries:
        return tuple(call for call in map(_call_of, entries) if call is not None)
    legacy = _call_of({"function": message.get("function_call")})
    return (legacy,) if legacy is not None else ()


def _call_of(entry: object) -> ToolCall | None:
    function = entry.get("function") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(function, dict):
        return None
    return ToolCall(
        id=text_or(entry.get("id"), ""),
        name=text_or(function.get("name"), ""),
        arguments=_arguments_text(function.get("arguments")),
    )


def _arguments_text(value: object) -> str:
    """The argument text: a string as sent; an object (a few compatible servers send
    one) as JSON text."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _first_choice(data: dict[str, Any]) -> dict[str, Any] | None:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


@dataclasses.dataclass(slots=True)
class _ChatStream:
    """What a Chat Completions stream has said so far."""

    model: str
    finish: FinishReason | None = None
    usage: Usage | None = None
    done: bool = False
    #: Whether any finish_reason came, even one we do not know (mapped to None).
    finished: bool = False
    #: Tool-call pieces of the last frame, for the skeleton to yield.
    pending_calls: list[ToolCallDelta] = dataclasses.field(default_factory=list)
    #: The wire index of each call seen -> its index in this answer (0, 1, ... in order).
    call_slots: dict[int, int] = dataclasses.field(default_factory=dict)
    #: The id of the last call seen (a server that sends no index repeats it per piece).
    last_call_id: str = ""
    #: (call index, "id" | "name") already passed on.
    heads_sent: set[tuple[int, str]] = dataclasses.field(default_factory=set)


def _call_delta(entry: object, state: _ChatStream) -> ToolCallDelta | None:
    """One ``delta.tool_calls`` entry as a piece of call ``index`` of this answer (None
    when it carries nothing new).

    ``index`` numbers the calls (https://platform.openai.com/docs/api-reference/chat-streaming);
    ``id`` and ``name`` come on a call's first piece. Some servers repeat them on every
    piece (llama-cpp-python) or send no index: a piece without one continues the last
    call unless it carries a new id. Calls are numbered 0, 1, ... in the order they
    start, and each call's id and name are passed on once.
    """
    if not isinstance(entry, dict):
        return None
    function = entry.get("function")
    if not isinstance(function, dict):
        function = {}
    call_id = text_or(entry.get("id"), "")
    slot = _call_slot(entry.get("index"), call_id, state)
    state.last_call_id = call_id or state.last_call_id
    new_id = _first_time(state, slot, "id", call_id)
    new_name = _first_time(state, slot, "name", text_or(function.get("name"), ""))
    arguments = _arguments_text(function.get("arguments"))
    if not (arguments or new_id or new_name):
        return None
    return ToolCallDelta(index=slot, arguments_delta=arguments, id=new_id, name=new_name)


def _first_time(state: _ChatStream, slot: int, field: str, value: str) -> str | None:
    """``value`` the first time call ``slot`` brings a non-empty ``field``, else None."""
    if not value or (slot, field) in state.heads_sent:
        return None
    state.heads_sent.add((slot, field))
    return value


def _call_slot(wire: object, call_id: str, state: _ChatStream) -> int:
    """This answer's index of the call a piece belongs to (see :func:`_call_delta`)."""
    if not isinstance(wire, int) or isinstance(wire, bool):
        fresh = not state.call_slots or (bool(call_id) and call_id != state.last_call_id)
        wire = -1 - len(state.call_slots) if fresh else max(state.call_slots, key=state.call_slots.__getitem__)
    return state.call_slots.setdefault(wire, len(state.call_slots))


class OpenAIProvider(HttpProvider[_ChatStream]):
    """The official OpenAI API (``https://api.openai.com/v1``)."""

    kind: ClassVar[str] = "openai"
    chat_path: ClassVar[str] = _CHAT_PATH
    framing: ClassVar[Literal["sse", "ndjson"]] = "sse"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"chat", "streaming", "json_mode", "json_schema", "tools"}
    )
    key_env_var: ClassVar[str | None] = KINDS["openai"].key_env

    @property
    def official(self) -> bool:
        """The official API: its dialect (see :func:`build_chat_body`) and a required key."""
        return self.kind == "openai" and self.settings.kind != "custom"

    def headers(self, model: str | None) -> dict[str, str]:
        key = self.api_key
        if not key and self.official:
            raise AuthenticationError(
                f"{self.name}: no API key; set {self.key_env_var} or providers.{self.kind}.apiKey",
                provider=self.name,
                model_id=model,
                retryable=False,
            )
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        headers.update(self.settings.headers)
        return headers

    def chat_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        return build_chat_body(request, official=self.official, stream=stream)

    def completion(self, data: Any, request: ProviderRequest) -> Completion:
        # Some compatible servers answer 200 with an error envelope.
        if isinstance(data, dict) and data.get("error"):
            raise error_from_payload(data["error"], provider=self.name, model=request.model)
        choice = _first_choice(data) if isinstance(data, dict) else None
        if choice is None:
            raise ModelError(f"{self.name}: response has no choices", provider=self.name, model_id=request.model)
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        calls = tool_calls_of(message)
        finish = _with_calls(map_finish_reason(choice.get("finish_reason")), bool(calls))
        return Completion(
            content=content if isinstance(content, str) else "",
            model=text_or(data.get("model"), request.model),
            finish_reason=finish,
            usage=map_usage(data.get("usage")),
            tool_calls=calls,
        )

    def stream_state(self, request: ProviderRequest) -> _ChatStream:
        return _ChatStream(model=request.model)

    def read_frame(self, frame: SSEEvent, state: _ChatStream, model: str) -> str | None:
        return self._chunk(frame.data, state, model)

    def _chunk(self, data: bytes, state: _ChatStream, model: str) -> str | None:
        """Read one event's payload into ``state``; its text, if any."""
        if not data:
            return None
        if data.strip() == b"[DONE]":
            state.done = True
            return None
        chunk = loads_body(data, provider=self.name, model=model)
        if not isinstance(chunk, dict):
            raise ModelError(f"{self.name}: unexpected stream payload", provider=self.name, model_id=model)
        if chunk.get("error"):
            raise error_from_payload(chunk["error"], provider=self.name, model=model)
        state.model = text_or(chunk.get("model"), state.model)
        # The usage chunk has `choices: []` (https://platform.openai.com/docs/api-reference/chat-streaming); older llama.cpp builds put usage on
        # the finish chunk instead: take it wherever it is.
        state.usage = map_usage(chunk.get("usage")) or state.usage
        choice = _first_choice(chunk)
        if choice is None:
            return None
        raw_finish = choice.get("finish_reason")
        state.finished = state.finished or (isinstance(raw_finish, str) and bool(raw_finish))
        state.finish = map_finish_reason(raw_finish) or state.finish
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return None
        calls = delta.get("tool_calls")
        if not isinstance(calls, list) and isinstance(delta.get("function_call"), dict):
            calls = [{"index": 0, "function": delta["function_call"]}]  # the deprecated single call
        if isinstance(calls, list):
            state.pending_calls.extend(d for call in calls if (d := _call_delta(call, state)) is not None)
        # `content` may be null; llama.cpp's `reasoning_content` is not content.
        text = delta.get("content")
        return text if isinstance(text, str) else None

    def stream_end(self, state: _ChatStream, guard: AnswerGuard, model: str) -> StreamDelta:
        """The last delta (the held-back text, finish reason, usage), or the stream's error."""
        tail = guard.flush()
        if not state.done:
            raise NetworkError(
                f"{self.name}: stream ended early (no [DONE])", provider=self.name, model_id=model
            )
        if not state.finished:
            # Every server we speak to ends a generation with a finish_reason; a bare
            # [DONE] is an interrupted one (llama-cpp-python's server does this to a
            # running stream when another request arrives, unless started with
            # --interrupt_requests False). Not a success with half an answer.
            raise NetworkError(
                f"{self.name}: stream interrupted by the server ([DONE] without a finish_reason)",
                provider=self.name, model_id=model,
            )
        finish = _with_calls(state.finish, bool(state.call_slots))
        return StreamDelta(content=tail, model=state.model, finish_reason=finish, usage=state.usage)

    async def list_models(self) -> list[ProviderModel]:
        with redact_errors(*self.secrets):
            data = await self.fetch("GET", _MODELS_PATH, None, DEFAULT_MAX_RESPONSE_BYTES)
            entries = data.get("data") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise ModelError(f"{self.name}: model list has no data array", provider=self.name)
            capabilities = self.capabilities | ({"local"} if self.is_local else set())
            models = []
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                    continue
                # llama.cpp reports the trained context as meta.n_ctx_train (https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md, GET /v1/models).
                meta = entry.get("meta")
                n_ctx = meta.get("n_ctx_train") if isinstance(meta, dict) else None
                models.append(
                    ProviderModel(
                        id=entry["id"],
                        provider=self.name,
                        context_window=n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None,
                        capabilities=capabilities,
                    )
                )
            return models

    async def is_available(self) -> bool:
        """``GET /models`` answers 2xx (llama.cpp's ``/health`` is not under ``/v1``)."""
        try:
            headers = self.headers(None)
        except SidecarError:
            return False
        response = await probe(self.client, _MODELS_PATH, headers=headers)
        if response is None:
            return False
        self.observe(response)
        return response.is_success


class OpenAICompatibleProvider(OpenAIProvider):
    """A custom entry: any server speaking Chat Completions; the key is optional."""

    kind: ClassVar[str] = "custom"
    capabilities: ClassVar[frozenset[str]] = frozenset({"chat", "streaming", "json_mode", "json_schema"})
    key_env_var: ClassVar[str | None] = None

    #: Set once the server refused OpenAI's nested ``json_schema`` form. Servers differ:
    #: LM Studio accepts only that form, llama-cpp-python's server only the flat
    #: ``{"type": "json_object", "schema": ...}`` (it answers 500 "Input should be 'text'
    #: or 'json_object'"), llama.cpp's server both. The nested form goes first; a refusal
    #: that names ``response_format`` switches this provider to the flat one.
    flat_schema_format: bool = False

    def _dialect(self, request: ProviderRequest) -> ProviderRequest:
        native = request.native_format or {}
        form = native.get("response_format")
        if not (self.flat_schema_format and isinstance(form, dict) and form.get("type") == "json_schema"):
            return request
        schema = (form.get("json_schema") or {}).get("schema")
        flat = {"type": "json_object", **({"schema": schema} if schema is not None else {})}
        return dataclasses.replace(request, native_format={**native, "response_format": flat})

    def _refused_schema_form(self, request: ProviderRequest, exc: ProviderError) -> bool:
        form = (request.native_format or {}).get("response_format")
        return (
            not self.flat_schema_format
            and isinstance(form, dict) and form.get("type") == "json_schema"
            and not isinstance(exc, (NetworkError, RateLimitError, AuthenticationError))
            and "response_format" in (exc.upstream or "")
        )

    async def generate(self, request: ProviderRequest) -> Completion:
        try:
            return await super().generate(self._dialect(request))
        except ProviderError as exc:
            if not self._refused_schema_form(request, exc):
                raise
        self.flat_schema_format = True
        return await super().generate(self._dialect(request))

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamDelta, None]:
        sent = False
        try:
            # aclosing: a consumer that stops early closes the upstream stream at once,
            # not whenever the inner generator is collected.
            async with contextlib.aclosing(super().stream(self._dialect(request))) as deltas:
                async for delta in deltas:
                    sent = True
                    yield delta
            return
        except ProviderError as exc:
            if sent or not self._refused_schema_form(request, exc):
                raise
        self.flat_schema_format = True
        async with contextlib.aclosing(super().stream(self._dialect(request))) as deltas:
            async for delta in deltas:
                yield delta
