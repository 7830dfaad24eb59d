"""Anthropic Messages API: ``POST /v1/messages`` and its SSE event stream.

One body builder and one stop-reason/usage mapping serve both the streaming and the
non-streaming path (https://docs.anthropic.com/en/api/messages). The base URL has no ``/v1`` suffix, as the
official SDK writes it (``https://api.anthropic.com``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import orjson

from sidecar.errors import (
    AuthenticationError,
    ModelError,
    NetworkError,
    SidecarError,
)
from sidecar.providers.base import (
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
    Usage,
)
from sidecar.providers.failures import error_from_payload, redact_errors
from sidecar.providers.framing import SSEEvent, as_count, json_text, loads_body, text_or
from sidecar.providers.guard import DEFAULT_MAX_RESPONSE_BYTES, AnswerGuard
from sidecar.providers.http import probe
from sidecar.providers.skeleton import HttpProvider
from sidecar.wire.kinds import KINDS

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "build_messages_body",
    "map_stop_reason",
    "map_usage",
    "wire_messages",
    "wire_tools",
]

ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` is required by the Messages API (https://docs.anthropic.com/en/api/messages); used when the request sets none.
DEFAULT_MAX_TOKENS = 4096

_MESSAGES_PATH = "/v1/messages"
_MODELS_PATH = "/v1/models"
#: Guard against a listing whose cursor never advances.
_MAX_MODEL_PAGES = 50

# https://docs.anthropic.com/en/api/messages (stop_reason).
_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use (forcing tool use).
_CHOICES = {"auto": "auto", "required": "any", "none": "none"}

_PROMPT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def build_messages_body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
    """The Messages API body for ``request``; only the fields that are set."""
    # There is no system role (https://docs.anthropic.com/en/api/messages): `system` is its own field, and system-role turns
    # are folded into it in order.
    system_parts = [request.system] if request.system else []
    system_parts.extend(m.content for m in request.messages if m.role == "system")
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": wire_messages(m for m in request.messages if m.role != "system"),
    }
    if system_parts:
        body["system"] = "\n\n".join(system_parts)
    if request.temperature is not None:
        # The contract allows 0-2 (OpenAI's range); Anthropic accepts 0-1.
        body["temperature"] = min(max(request.temperature, 0.0), 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    # frequency_penalty / presence_penalty do not exist in the Messages API:
    # they are dropped rather than sent and refused.
    if stream:
        body["stream"] = True
    body.update(_native_format(request))
    body.update(wire_tools(request))
    return body


def _native_format(request: ProviderRequest) -> dict[str, Any]:
    """The structured-output fields; a forced structured-output tool never goes along with
    the request's own tools (it would replace them, and its call would pass for theirs)."""
    native = dict(request.native_format or {})
    if request.tools:
        native.pop("tools", None)
        native.pop("tool_choice", None)
    return native


def wire_tools(request: ProviderRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use)."""
    if not request.tools:
        return {}
    tools = []
    for tool in request.tools:
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        entry["input_schema"] = tool.parameters
        tools.append(entry)
    out: dict[str, Any] = {"tools": tools}
    choice = request.tool_choice
    wire: dict[str, Any] | None = None
    if isinstance(choice, NamedTool):
        wire = {"type": "tool", "name": choice.name}
    elif choice is not None:
        wire = {"type": _CHOICES[choice]}
    # At most one call: `disable_parallel_tool_use`, which `none` does not take.
    if request.parallel_tool_calls is False and choice != "none":
        wire = (wire or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    if wire is not None:
        out["tool_choice"] = wire
    return out


def wire_messages(turns: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as Messages API turns.

    Tool results are ``tool_result`` blocks of one user turn: consecutive results share
    it, and a user turn right after them joins it behind them ("the tool_result blocks
    must come FIRST in the content array. Any text must come AFTER all tool results",
    https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/implement-tool-use).
    """
    out: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the open results turn's blocks
    for turn in turns:
        if turn.role == "tool":
            if results is None:
                results = []
                out.append({"role": "user", "content": results})
            results.append(_tool_result(turn))
        elif turn.role == "user" and results is not None:
            results.extend(_user_blocks(turn))
            results = None
        else:
            results = None
            out.append({"role": turn.role, "content": _content(turn)})
    return out


def _content(turn: ChatMessage) -> str | list[dict[str, Any]]:
    """A user or assistant turn's content: its text, or blocks when it has images or
    tool calls."""
    if turn.tool_calls:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": turn.content}] if turn.content else []
        blocks.extend({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
                      for call in turn.tool_calls)
        return blocks
    return _user_blocks(turn) if turn.parts else turn.content


def _user_blocks(turn: ChatMessage) -> list[dict[str, Any]]:
    """A user turn as ``text`` and ``image`` blocks in order (an empty text is no block:
    the API refuses empty text blocks)."""
    parts = turn.parts or (turn.content,)
    return [_part(part) for part in parts if not isinstance(part, str) or part]


def _part(part: ContentPart) -> dict[str, Any]:
    # https://docs.anthropic.com/en/docs/build-with-claude/vision: base64 without a data: prefix, or a URL.
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if part.url is not None:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}


def _tool_result(turn: ChatMessage) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": turn.tool_call_id}
    if turn.content:  # content may be absent (an empty text block is refused)
        block["content"] = turn.content
    if turn.is_error:
        block["is_error"] = True
    return block


def _input(call: ToolCall) -> Any:
    """A call's arguments as the ``input`` object (the core serialized them from one)."""
    return orjson.loads(call.arguments) if call.arguments else {}


def forced_tool(request: ProviderRequest) -> str | None:
    """The tool a structured-output request forces (its input is then the answer); None
    when the request offers its own tools (the forced tool is not sent then)."""
    if request.tools:
        return None
    choice = (request.native_format or {}).get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    return None


def map_stop_reason(value: object) -> FinishReason | None:
    """The portable finish reason for an Anthropic ``stop_reason`` (None if unknown)."""
    return _STOP_REASONS.get(value) if isinstance(value, str) else None


def map_usage(fields: Mapping[str, Any]) -> Usage:
    """Prompt tokens include cache writes and reads (they are billed input), see https://docs.anthropic.com/en/api/messages (usage)."""
    return Usage(
        prompt_tokens=sum(as_count(fields.get(name)) for name in _PROMPT_FIELDS),
        completion_tokens=as_count(fields.get("output_tokens")),
    )


@dataclass(slots=True)
class _MessageStream:
    """What a Messages stream has said so far."""

    model: str
    forced: str | None
    finish: FinishReason | None = None
    usage_fields: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    #: Tool-call pieces of the last event, taken by the skeleton.
    pending_calls: list[ToolCallDelta] = field(default_factory=list)
    #: Content-block index -> call index (0, 1, ... over the answer's tool_use blocks).
    calls: dict[int, int] = field(default_factory=dict)
    #: Content-block indexes of tool_use blocks whose input JSON has had a non-empty piece.
    started: set[int] = field(default_factory=set)
    #: Content-block indexes of the forced structured-output tool: their input is text.
    forced_blocks: set[int] = field(default_factory=set)


class AnthropicProvider(HttpProvider[_MessageStream]):
    """Claude models through the Messages API."""

    kind: ClassVar[str] = "anthropic"
    chat_path: ClassVar[str] = _MESSAGES_PATH
    framing: ClassVar[Literal["sse", "ndjson"]] = "sse"
    capabilities: ClassVar[frozenset[str]] = frozenset({"chat", "streaming", "tools"})
    key_env_var: ClassVar[str | None] = KINDS["anthropic"].key_env

    def headers(self, model: str | None) -> dict[str, str]:
        key = self.api_key
        if not key:
            raise AuthenticationError(
                f"{self.name}: no API key; set {self.key_env_var} or providers.anthropic.apiKey",
                provider=self.name,
                model_id=model,
                retryable=False,
            )
        headers = {
            "x-api-key": key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        headers.update(self.settings.headers)
        return headers

    def chat_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        return build_messages_body(request, stream=stream)

    def output_limit(self, body: dict[str, Any]) -> int | None:
        return int(body["max_tokens"])  # required by the Messages API: our default when unset

    def completion(self, data: Any, request: ProviderRequest) -> Completion:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise ModelError(f"{self.name}: response has no content blocks", provider=self.name,
                             model_id=request.model)
        # Text blocks are the content and tool_use blocks the calls; thinking blocks are
        # neither (https://docs.anthropic.com/en/api/messages, "content") -- except the input
        # of a tool the request forced for structured output: that is the answer.
        forced = forced_tool(request)
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in data["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and forced is None and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                call = self._tool_use(block, request.model)
                if call.name == forced:
                    texts.append(call.arguments)
                else:
                    calls.append(call)
        usage = data.get("usage")
        return Completion(
            content="".join(texts),
            model=text_or(data.get("model"), request.model),
            finish_reason=_finish(map_stop_reason(data.get("stop_reason")), forced, bool(calls)),
            usage=map_usage(usage) if isinstance(usage, dict) else None,
            tool_calls=tuple(calls),
        )

    def _tool_use(self, block: dict[str, Any], model: str) -> ToolCall:
        """A ``tool_use`` block as a call; its ``input`` object as JSON text."""
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise ModelError(f"{self.name}: a tool_use block has no id or name", provider=self.name,
                             model_id=model)
        return ToolCall(call_id, name, json_text(block.get("input", {}), provider=self.name, model=model))

    def stream_state(self, request: ProviderRequest) -> _MessageStream:
        return _MessageStream(model=request.model, forced=forced_tool(request))

    def read_frame(self, frame: SSEEvent, state: _MessageStream, model: str) -> str | None:
        return self._event(frame, state, model)

    def stream_end(self, state: _MessageStream, guard: AnswerGuard, model: str) -> StreamDelta:
        tail = guard.flush()
        if not state.done:
            raise NetworkError(f"{self.name}: stream ended early (no message_stop)", provider=self.name,
                               model_id=model)
        return StreamDelta(
            content=tail,
            model=state.model,
            finish_reason=_finish(state.finish, state.forced, bool(state.calls)),
            usage=map_usage(state.usage_fields) if state.usage_fields else None,
        )

    def _event(self, event: SSEEvent, state: _MessageStream, model: str) -> str | None:
        """Read one event into ``state``; its text, if any."""
        if event.event == "ping" or not event.data:
            return None
        # Every payload is parsed, so a garbled line is a ModelError even when its event
        # is one we would ignore.
        data = loads_body(event.data, provider=self.name, model=model)
        if not isinstance(data, dict):
            raise ModelError(f"{self.name}: unexpected stream payload", provider=self.name, model_id=model)
        # Without an `event:` line the event is "message"; the payload's own `type` names
        # the event then (it always repeats it, https://docs.anthropic.com/en/docs/build-with-claude/streaming).
        name = event.event
        if name == "message" and isinstance(data.get("type"), str):
            name = data["type"]
        if name == "message_stop":
            state.done = True
        elif name == "error":
            raise error_from_payload(data.get("error"), provider=self.name, model=model)
        elif name == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                state.model = text_or(message.get("model"), state.model)
                if isinstance(message.get("usage"), dict):
                    state.usage_fields.update(message["usage"])
        elif name == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                state.finish = map_stop_reason(delta.get("stop_reason")) or state.finish
            # message_delta usage is cumulative: newest value wins (https://docs.anthropic.com/en/docs/build-with-claude/streaming).
            if isinstance(data.get("usage"), dict):
                state.usage_fields.update(data["usage"])
        elif name in ("content_block_start", "content_block_delta", "content_block_stop"):
            try:
                return _block_event(name, data, state)
            except ValueError as exc:
                raise ModelError(f"{self.name}: {exc}", provider=self.name, model_id=model) from exc
        # Unknown event types are ignored (https://docs.anthropic.com/en/docs/build-with-claude/streaming).
        return None

    async def list_models(self) -> list[ProviderModel]:
        with redact_errors(*self.secrets):
            models: list[ProviderModel] = []
            after: str | None = None
            for _ in range(_MAX_MODEL_PAGES):
                params: dict[str, str | int] = {"limit": 1000}
                if after:
                    params["after_id"] = after
                page = await self.fetch("GET", _MODELS_PATH, None, DEFAULT_MAX_RESPONSE_BYTES, params=params)
                entries = page.get("data") if isinstance(page, dict) else None
                if not isinstance(entries, list):
                    raise ModelError(f"{self.name}: model list has no data array", provider=self.name)
                models.extend(
                    self._model(entry)
                    for entry in entries
                    if isinstance(entry, dict) and isinstance(entry.get("id"), str)
                )
                last_id = page.get("last_id")
                if not page.get("has_more") or not isinstance(last_id, str) or last_id == after:
                    break
                after = last_id
            return models

    def _model(self, entry: dict[str, Any]) -> ProviderModel:
        capabilities = set(self.capabilities)
        # 2026 listings describe capabilities as {"name": {"supported": bool}} (https://docs.anthropic.com/en/api/models-list).
        reported = entry.get("capabilities")
        if isinstance(reported, dict):
            for name, ours in (
                ("image_input", "vision"),
                ("structured_outputs", "json_schema"),
                ("thinking", "reasoning"),
            ):
                flag = reported.get(name)
                if isinstance(flag, dict) and flag.get("supported") is True:
                    capabilities.add(ours)
        context = entry.get("max_input_tokens")
        output = entry.get("max_tokens")
        display = entry.get("display_name")
        return ProviderModel(
            id=entry["id"],
            provider=self.name,
            context_window=context if isinstance(context, int) and context > 0 else None,
            max_output_tokens=output if isinstance(output, int) and output > 0 else None,
            capabilities=frozenset(capabilities),
            display_name=display if isinstance(display, str) else None,
        )

    async def is_available(self) -> bool:
        """One ``GET /v1/models?limit=1`` answers 2xx."""
        try:
            headers = self.headers(None)
        except SidecarError:
            return False
        response = await probe(self.client, _MODELS_PATH, headers=headers, params={"limit": 1})
        if response is None:
            return False
        self.observe(response)
        return response.is_success


def _finish(finish: FinishReason | None, forced: str | None, called: bool) -> FinishReason | None:
    """The finish reason: a forced structured-output tool's use is a finished answer."""
    return "stop" if forced is not None and finish == "tool_calls" and not called else finish


def _block_event(name: str, data: dict[str, Any], state: _MessageStream) -> str | None:
    """One content-block event: text deltas are returned, tool_use pieces go to
    ``state.pending_calls`` numbered by call, not by block (blocks count text too).

    https://docs.anthropic.com/en/docs/build-with-claude/streaming: a tool_use block
    starts with its id, name and ``input: {}``, its input JSON arrives in
    ``input_json_delta.partial_json`` pieces (the first may be empty), and a block with
    no piece at all has the input ``{}``.
    """
    index = data.get("index")
    if not isinstance(index, int):
        return None
    if name == "content_block_start":
        _start_block(data.get("content_block"), index, state)
    elif name == "content_block_stop" and index not in state.started:
        if index in state.forced_blocks:
            return "{}"
        if index in state.calls:
            state.pending_calls.append(ToolCallDelta(state.calls[index], "{}"))
    elif name == "content_block_delta":
        return _block_delta(data.get("delta"), index, state)
    return None


def _start_block(block: object, index: int, state: _MessageStream) -> None:
    """A tool_use block's start: its call numbered (ValueError without id or name)."""
    if not isinstance(block, dict) or block.get("type") != "tool_use":
        return
    name, call_id = block.get("name"), block.get("id")
    if state.forced is not None and name == state.forced:
        state.forced_blocks.add(index)
        return
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise ValueError("a tool_use block has no id or name")
    call = len(state.calls)
    state.calls[index] = call
    state.pending_calls.append(ToolCallDelta(call, "", id=call_id, name=name))


def _block_delta(delta: object, index: int, state: _MessageStream) -> str | None:
    """A ``content_block_delta``'s text: ``text_delta`` (none when a tool was forced), or
    the forced tool's input JSON; a call's input JSON goes to ``pending_calls``."""
    if not isinstance(delta, dict):
        return None
    if delta.get("type") == "text_delta":
        text = delta.get("text")
        return text if isinstance(text, str) and state.forced is None else None
    piece = delta.get("partial_json")
    if delta.get("type") != "input_json_delta" or not isinstance(piece, str):
        return None
    if piece:
        state.started.add(index)
    if index in state.forced_blocks:
        return piece
    if index in state.calls and piece:
        state.pending_calls.append(ToolCallDelta(state.calls[index], piece))
    return None
