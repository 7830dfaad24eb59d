"""Ollama's native API: ``POST /api/chat`` (NDJSON stream), ``/api/tags``, ``/api/show``.

The native API is used rather than Ollama's ``/v1`` because only it can set the context
size (``options.num_ctx``, https://github.com/ollama/ollama/blob/main/docs/api.md). One body builder and one
done-reason/usage mapping serve both the streaming and the non-streaming path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar, Literal

import orjson

from sidecar.errors import ModelError, NetworkError, ProviderError
from sidecar.providers.base import (
    TOOL_ERROR_PREFIX,
    ChatMessage,
    Completion,
    FinishReason,
    ImageInput,
    NamedTool,
    ProviderModel,
    ProviderRequest,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from sidecar.providers.failures import redact_errors
from sidecar.providers.framing import as_count, json_text, loads_body, text_or
from sidecar.providers.guard import DEFAULT_MAX_RESPONSE_BYTES, AnswerGuard
from sidecar.providers.http import probe
from sidecar.providers.images import fetch_image
from sidecar.providers.skeleton import HttpProvider

__all__ = ["OllamaProvider", "build_chat_body", "map_done_reason", "map_usage", "read_tool_calls"]

_CHAT_PATH = "/api/chat"
_TAGS_PATH = "/api/tags"
_SHOW_PATH = "/api/show"
_PS_PATH = "/api/ps"

# https://github.com/ollama/ollama/blob/main/docs/api.md: `load`/`unload` are not generation endings and map to None.
_DONE_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
# /api/show `capabilities` entries that name a capability of ours (https://github.com/ollama/ollama/blob/main/docs/api.md, show model information).
_SHOW_CAPABILITIES = {"tools": "tools", "vision": "vision", "thinking": "reasoning"}


def build_chat_body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for ``request``; sampling goes into ``options``."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend(_wire_message(m) for m in request.messages)
    options: dict[str, Any] = {}
    for name, value in (
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("num_predict", request.max_tokens),
        ("frequency_penalty", request.frequency_penalty),
        ("presence_penalty", request.presence_penalty),
        ("num_ctx", request.context_window),
    ):
        if value is not None:
            options[name] = value
    if request.stop:
        options["stop"] = list(request.stop)
    # Always explicit: Ollama streams unless told `"stream": false` (https://github.com/ollama/ollama/blob/main/docs/api.md).
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": stream}
    if options:
        body["options"] = options
    tools = _wire_tools(request)
    if tools:
        body["tools"] = tools
    if request.native_format:
        extra = dict(request.native_format)
        # A native `options` object adds to ours instead of replacing it.
        if isinstance(extra.get("options"), dict):
            body["options"] = {**options, **extra.pop("options")}
        body.update(extra)
    return body


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    """One ``messages`` entry (https://github.com/ollama/ollama/blob/main/docs/api.md#chat-request-with-tools):
    images as bare base64 in ``images``, calls with their arguments as an object, a tool
    result with ``tool_name`` (and ``tool_call_id``, which servers since v0.12.10 read)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "tool":
        if message.is_error:
            out["content"] = TOOL_ERROR_PREFIX + message.content
        if message.tool_name:
            out["tool_name"] = message.tool_name
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {**({"id": call.id} if call.id else {}),
             "function": {"name": call.name, "arguments": _arguments_object(call.arguments)}}
            for call in message.tool_calls
        ]
    images = [part for part in message.parts if isinstance(part, ImageInput)]
    if images:
        out["images"] = [_inline(image) for image in images]
    return out


def _arguments_object(text: str) -> dict[str, Any]:
    """Ollama reads a call's arguments as an object; the router only sends back calls
    whose arguments are one (anything else becomes ``{}``)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _inline(image: ImageInput) -> str:
    if image.data is None:
        # OllamaProvider fetches every image URL before a body is built.
        raise ValueError("an image URL reached the Ollama body unfetched")
    return image.data


def _wire_tools(request: ProviderRequest) -> list[dict[str, Any]]:
    """``tools`` in OpenAI's shape. Ollama has no ``tool_choice`` and no parallel-calls
    field: "none" sends no tools, a named choice sends only that tool, and "required" or
    a named tool cannot be forced on the wire (the router checks the answer and asks
    again when it has no call)."""
    choice = request.tool_choice
    if choice == "none":
        return []
    tools = request.tools
    if isinstance(choice, NamedTool):
        tools = tuple(tool for tool in tools if tool.name == choice.name)
    return [
        {"type": "function", "function": {
            "name": tool.name,
            **({"description": tool.description} if tool.description is not None else {}),
            "parameters": tool.parameters,
        }}
        for tool in tools
    ]


def read_tool_calls(data: Mapping[str, Any], taken: set[str], first: int = 0, *, provider: str,
                    model: str) -> list[ToolCall]:
    """The calls of one answer object's ``message.tool_calls``, numbered from ``first``.

    Arguments come as an object and go on as its JSON text (unchecked: the router
    validates them). Servers since v0.12.10 send an ``id``; otherwise, or when an id
    repeats, one is made (``call_<index>_<random>``) and added to ``taken``, so ids are
    unique within the answer and a streamed call keeps the id it was first given.
    """
    message = data.get("message")
    entries = message.get("tool_calls") if isinstance(message, dict) else None
    calls: list[ToolCall] = []
    for entry in entries if isinstance(entries, list) else ():
        function = entry.get("function") if isinstance(entry, dict) else None
        function = function if isinstance(function, dict) else {}
        name, arguments = function.get("name"), function.get("arguments")
        # A call the model botched (no name, arguments not an object) still goes to the
        # router, which sends it back to the model with what is wrong.
        text = arguments if isinstance(arguments, str) else json_text(
            arguments if arguments is not None else {}, provider=provider, model=model)
        given = entry.get("id") if isinstance(entry, dict) else None
        index = first + len(calls)
        call_id = given if isinstance(given, str) and given and given not in taken else (
            f"call_{index}_{secrets.token_hex(4)}")
        taken.add(call_id)
        calls.append(ToolCall(call_id, name if isinstance(name, str) else "", text))
    return calls


def map_done_reason(value: object) -> FinishReason | None:
    """The portable finish reason for Ollama's ``done_reason`` (None if unknown)."""
    return _DONE_REASONS.get(value) if isinstance(value, str) else None


def map_usage(final: Mapping[str, Any]) -> Usage:
    """Counts of the ``done: true`` object; omitted when zero (``omitempty``)."""
    return Usage(
        prompt_tokens=as_count(final.get("prompt_eval_count")),
        completion_tokens=as_count(final.get("eval_count")),
    )


def _message_text(data: Mapping[str, Any]) -> str:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


@dataclasses.dataclass(slots=True)
class _ChatLines:
    """What an ``/api/chat`` stream has said so far."""

    model: str
    done: bool = False
    #: The ``done: true`` object: reason, counts, maybe a last piece of text.
    final: dict[str, Any] | None = None
    #: Calls read from the last line, taken out by the skeleton after each line.
    pending_calls: list[ToolCallDelta] = dataclasses.field(default_factory=list)
    #: Ids of the calls so far (a call comes whole, in one line: its index is its rank).
    call_ids: set[str] = dataclasses.field(default_factory=set)


class OllamaProvider(HttpProvider[_ChatLines]):
    """A local (or remote) Ollama server; no key unless one is configured for a proxy."""

    kind: ClassVar[str] = "ollama"
    chat_path: ClassVar[str] = _CHAT_PATH
    framing: ClassVar[Literal["sse", "ndjson"]] = "ndjson"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"chat", "streaming", "json_mode", "json_schema", "local"}
    )
    key_env_var: ClassVar[str | None] = None

    def headers(self, model: str | None = None) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        headers.update(self.settings.headers)
        return headers

    def _error_line(self, data: object, model: str | None) -> ModelError | None:
        """A ``{"error": "..."}`` object (mid-stream it comes with HTTP 200)."""
        if isinstance(data, dict) and "error" in data:
            message = data["error"] if isinstance(data["error"], str) else "error in response"
            return ModelError(f"{self.name}: {message}", provider=self.name, model_id=model)
        return None

    def chat_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        body = build_chat_body(request, stream=stream)
        if self.settings.keep_alive is not None:
            # Every request sets how long the model stays loaded after it (docs/api.md, keep_alive).
            body.setdefault("keep_alive", _keep_alive(self.settings.keep_alive))
        return body

    def completion(self, data: Any, request: ProviderRequest) -> Completion:
        error = self._error_line(data, request.model)
        if error is not None:
            raise error
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            raise ModelError(f"{self.name}: response has no message", provider=self.name, model_id=request.model)
        calls = tuple(read_tool_calls(data, set(), provider=self.name, model=request.model))
        return Completion(
            content=_message_text(data),
            model=text_or(data.get("model"), request.model),
            # done_reason is "stop" after calls too; /v1 says "tool_calls", as we do.
            finish_reason="tool_calls" if calls else map_done_reason(data.get("done_reason")),
            usage=map_usage(data),
            tool_calls=calls,
        )

    def stream_state(self, request: ProviderRequest) -> _ChatLines:
        return _ChatLines(model=request.model)

    def read_frame(self, frame: bytes, state: _ChatLines, model: str) -> str | None:
        data = self._stream_line(frame, model)
        state.model = text_or(data.get("model"), state.model)
        # A call is never split: it comes whole in the line where the model finished it,
        # which may be the done line (docs/api.md, "Chat request (with tools, streaming)").
        first = len(state.call_ids)
        for i, call in enumerate(read_tool_calls(data, state.call_ids, first, provider=self.name, model=model)):
            state.pending_calls.append(ToolCallDelta(first + i, call.arguments, id=call.id, name=call.name))
        if data.get("done") is True:
            state.done, state.final = True, data
            return None
        return _message_text(data)

    def stream_end(self, state: _ChatLines, guard: AnswerGuard, model: str) -> StreamDelta:
        final = state.final
        if final is None:
            raise NetworkError(f"{self.name}: stream ended early (no done: true)", provider=self.name,
                               model_id=model)
        # The done object may still carry a last piece of text (docs/api.md, "Chat request
        # (streaming)": the final response object).
        last = guard.feed(_message_text(final))
        return StreamDelta(
            content=last + guard.flush(),
            model=state.model,
            finish_reason="length" if guard.cut else "tool_calls" if state.call_ids else map_done_reason(
                final.get("done_reason")),
            usage=map_usage(final),
        )

    async def generate(self, request: ProviderRequest) -> Completion:
        return await super().generate(await self._fetch_images(request))

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamDelta, None]:
        request = await self._fetch_images(request)
        # aclosing: a consumer that stops early closes the upstream stream at once.
        async with contextlib.aclosing(super().stream(request)) as deltas:
            async for delta in deltas:
                yield delta

    async def _fetch_images(self, request: ProviderRequest) -> ProviderRequest:
        """``request`` with each image URL replaced by its bytes: Ollama takes images
        only inline (docs/api.md, ``images``: "a list of base64-encoded images")."""
        if not any(isinstance(p, ImageInput) and p.data is None for m in request.messages for p in m.parts):
            return request
        messages = []
        for message in request.messages:
            parts = tuple([
                await fetch_image(self.client, part.url, provider=self.name, model=request.model)
                if isinstance(part, ImageInput) and part.data is None and part.url is not None else part
                for part in message.parts
            ])
            messages.append(dataclasses.replace(message, parts=parts))
        return dataclasses.replace(request, messages=tuple(messages))

    def _stream_line(self, line: bytes, model: str) -> dict[str, Any]:
        data = loads_body(line, provider=self.name, model=model)
        error = self._error_line(data, model)
        if error is not None:
            raise error
        if not isinstance(data, dict) or "done" not in data:
            # Every /api/chat line carries `done`; anything else is garbage.
            raise ModelError(f"{self.name}: unexpected stream line", provider=self.name, model_id=model)
        return data

    async def list_models(self) -> list[ProviderModel]:
        with redact_errors(*self.secrets):
            data = await self.fetch("GET", _TAGS_PATH, None, DEFAULT_MAX_RESPONSE_BYTES)
            entries = data.get("models") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise ModelError(f"{self.name}: model list has no models array", provider=self.name)
            models = []
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                model_id = entry.get("model") or entry.get("name")
                if not isinstance(model_id, str) or not model_id:
                    continue
                models.append(
                    ProviderModel(
                        id=model_id,
                        provider=self.name,
                        capabilities=self._capabilities(entry.get("capabilities")),
                        capabilities_reported=isinstance(entry.get("capabilities"), list),
                        version=_version(entry),
                    )
                )
            return models

    def _capabilities(self, reported: object) -> frozenset[str]:
        extra = (
            {_SHOW_CAPABILITIES[c] for c in reported if isinstance(c, str) and c in _SHOW_CAPABILITIES}
            if isinstance(reported, list)
            else set()
        )
        return self.capabilities | extra

    async def get_model_info(self, model_id: str) -> ProviderModel | None:
        """``POST /api/show``: trained context length and capabilities; None if unknown."""
        with redact_errors(*self.secrets):
            try:
                data = await self.fetch("POST", _SHOW_PATH, model_id, DEFAULT_MAX_RESPONSE_BYTES,
                                         content=orjson.dumps({"model": model_id}))
            except ProviderError as exc:
                if exc.status == 404:
                    return None
                raise
            if not isinstance(data, dict):
                raise ModelError(f"{self.name}: unexpected /api/show answer", provider=self.name)
            info = data.get("model_info")
            context: object = None
            if isinstance(info, dict):
                # The key is "<general.architecture>.context_length", e.g. llama.context_length.
                arch = info.get("general.architecture")
                context = info.get(f"{arch}.context_length") if isinstance(arch, str) else None
            return ProviderModel(
                id=model_id,
                provider=self.name,
                context_window=context if isinstance(context, int) and context > 0 else None,
                capabilities=self._capabilities(data.get("capabilities")),
                capabilities_reported=isinstance(data.get("capabilities"), list),
            )

    async def running_models(self) -> dict[str, int | None]:
        """``GET /api/ps``: the models loaded now, each with the window it runs with
        (``context_length``, the ``num_ctx`` it was loaded with; older servers leave it out,
        https://github.com/ollama/ollama/blob/main/docs/api.md#list-running-models)."""
        with redact_errors(*self.secrets):
            data = await self.fetch("GET", _PS_PATH, None, DEFAULT_MAX_RESPONSE_BYTES)
            entries = data.get("models") if isinstance(data, dict) else None
            running: dict[str, int | None] = {}
            for entry in entries if isinstance(entries, list) else ():
                name = entry.get("model") or entry.get("name") if isinstance(entry, dict) else None
                if isinstance(name, str) and name:
                    context = entry.get("context_length")
                    running[name] = context if isinstance(context, int) and context > 0 else None
            return running

    async def load(self, model: str) -> None:
        """Load ``model`` without generating: ``/api/chat`` with no messages ("Load a
        model", docs/api.md), kept loaded for the entry's ``keepAlive``."""
        body: dict[str, Any] = {"model": model, "messages": [], "stream": False}
        if self.settings.keep_alive is not None:
            body["keep_alive"] = _keep_alive(self.settings.keep_alive)
        with redact_errors(*self.secrets):
            data = await self.fetch("POST", _CHAT_PATH, model, DEFAULT_MAX_RESPONSE_BYTES, content=orjson.dumps(body))
            error = self._error_line(data, model)
            if error is not None:
                raise error

    async def is_available(self) -> bool:
        """``GET /`` answers 200 "Ollama is running"."""
        response = await probe(self.client, "/", headers=self.headers())
        if response is None:
            return False
        self.observe(response)
        return response.status_code == 200


def _keep_alive(value: str) -> str | float:
    """Ollama reads a JSON number as seconds and a string as a Go duration, which needs
    a unit ("10m"): "-1" and "300" go as numbers."""
    try:
        return float(value)
    except ValueError:
        return value


def _version(entry: dict[str, object]) -> str | None:
    """``/api/tags`` names a build by its digest (``ollama list`` shows the first 12 hex
    digits, https://github.com/ollama/ollama/blob/main/docs/api.md#list-local-models);
    the modified date stands in where a server gives no digest."""
    digest = entry.get("digest")
    if isinstance(digest, str) and digest:
        return digest.removeprefix("sha256:")[:12]
    modified = entry.get("modified_at")
    return modified if isinstance(modified, str) and modified else None
