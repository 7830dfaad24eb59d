"""Anthropic Messages API: ``POST /v1/messages`` and its SSE event stream.

One body builder and one stop-reason/usage mapping serve both the streaming and the
non-streaming path (https://docs.anthropic.com/en/api/messages). The base URL has no ``/v1`` suffix, as the
official SDK writes it (``https://api.anthropic.com``).
"""

from __future__ import annotations

from collections.abc import Mapping
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
    Completion,
    FinishReason,
    ProviderModel,
    ProviderRequest,
    StreamDelta,
    Usage,
)
from sidecar.providers.failures import error_from_payload, redact_errors
from sidecar.providers.framing import SSEEvent, as_count, loads_body, text_or
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

_PROMPT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def build_messages_body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
    """The Messages API body for ``request``; only the fields that are set."""
    # There is no system role (https://docs.anthropic.com/en/api/messages): `system` is its own field, and system-role turns
    # are folded into it in order.
    system_parts = [request.system] if request.system else []
    messages: list[dict[str, str]] = []
    for message in request.messages:
        if message.role == "system":
            system_parts.append(message.content)
        else:
            messages.append({"role": message.role, "content": message.content})
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": messages,
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
    if request.native_format:
        body.update(request.native_format)
    return body


def forced_tool(request: ProviderRequest) -> str | None:
    """The tool a structured-output request forces (its input is then the answer)."""
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
        # Only text blocks are content; tool_use/thinking blocks are not
        # (https://docs.anthropic.com/en/api/messages, "content") -- except the input of a
        # tool the request forced: that is the answer.
        forced = forced_tool(request)
        blocks = [block for block in data["content"] if isinstance(block, dict)]
        if forced is not None:
            text = "".join(orjson.dumps(block.get("input")).decode("utf-8") for block in blocks
                           if block.get("type") == "tool_use" and block.get("name") == forced)
        else:
            text = "".join(block["text"] for block in blocks
                           if block.get("type") == "text" and isinstance(block.get("text"), str))
        usage = data.get("usage")
        finish = map_stop_reason(data.get("stop_reason"))
        return Completion(
            content=text,
            model=text_or(data.get("model"), request.model),
            finish_reason="stop" if forced is not None and finish == "tool_calls" else finish,
            usage=map_usage(usage) if isinstance(usage, dict) else None,
        )

    def stream_state(self, request: ProviderRequest) -> _MessageStream:
        return _MessageStream(model=request.model, forced=forced_tool(request))

    def read_frame(self, frame: SSEEvent, state: _MessageStream, model: str) -> str | None:
        return self._event(frame, state, model)

    def stream_end(self, state: _MessageStream, guard: AnswerGuard, model: str) -> StreamDelta:
        tail = guard.flush()
        if not state.done:
            raise NetworkError(f"{self.name}: stream ended early (no message_stop)", provider=self.name,
                               model_id=model)
        finish = state.finish
        return StreamDelta(
            content=tail,
            model=state.model,
            finish_reason="stop" if state.forced is not None and finish == "tool_calls" else finish,
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
        elif name == "content_block_delta":
            return _delta_text(data.get("delta"), state.forced)
        # content_block_start/stop and unknown event types are ignored (https://docs.anthropic.com/en/docs/build-with-claude/streaming).
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


def _delta_text(delta: object, forced: str | None) -> str | None:
    """The text of a ``content_block_delta``: only ``text_delta`` is content;
    input_json/thinking deltas are not, unless a tool was forced: its input JSON is the
    answer."""
    if not isinstance(delta, dict):
        return None
    kind, key = ("input_json_delta", "partial_json") if forced is not None else ("text_delta", "text")
    text = delta.get(key) if delta.get("type") == kind else None
    return text if isinstance(text, str) else None


