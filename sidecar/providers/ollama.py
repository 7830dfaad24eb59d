"""Ollama's native API: ``POST /api/chat`` (NDJSON stream), ``/api/tags``, ``/api/show``.

The native API is used rather than Ollama's ``/v1`` because only it can set the context
size (``options.num_ctx``, https://github.com/ollama/ollama/blob/main/docs/api.md). One body builder and one
done-reason/usage mapping serve both the streaming and the non-streaming path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import orjson

from sidecar.errors import ModelError, NetworkError, ProviderError
from sidecar.providers.base import (
    Completion,
    FinishReason,
    ProviderModel,
    ProviderRequest,
    StreamDelta,
    Usage,
)
from sidecar.providers.failures import redact_errors
from sidecar.providers.framing import as_count, loads_body, text_or
from sidecar.providers.guard import DEFAULT_MAX_RESPONSE_BYTES, AnswerGuard
from sidecar.providers.http import probe
from sidecar.providers.skeleton import HttpProvider

__all__ = ["OllamaProvider", "build_chat_body", "map_done_reason", "map_usage"]

_CHAT_PATH = "/api/chat"
_TAGS_PATH = "/api/tags"
_SHOW_PATH = "/api/show"

# https://github.com/ollama/ollama/blob/main/docs/api.md: `load`/`unload` are not generation endings and map to None.
_DONE_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
# /api/show `capabilities` entries that name a capability of ours (https://github.com/ollama/ollama/blob/main/docs/api.md, show model information).
_SHOW_CAPABILITIES = {"tools": "tools", "vision": "vision", "thinking": "reasoning"}


def build_chat_body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for ``request``; sampling goes into ``options``."""
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": m.role, "content": m.content} for m in request.messages)
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
    if request.native_format:
        extra = dict(request.native_format)
        # A native `options` object adds to ours instead of replacing it.
        if isinstance(extra.get("options"), dict):
            body["options"] = {**options, **extra.pop("options")}
        body.update(extra)
    return body


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
        return build_chat_body(request, stream=stream)

    def completion(self, data: Any, request: ProviderRequest) -> Completion:
        error = self._error_line(data, request.model)
        if error is not None:
            raise error
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            raise ModelError(f"{self.name}: response has no message", provider=self.name, model_id=request.model)
        return Completion(
            content=_message_text(data),
            model=text_or(data.get("model"), request.model),
            finish_reason=map_done_reason(data.get("done_reason")),
            usage=map_usage(data),
        )

    def stream_state(self, request: ProviderRequest) -> _ChatLines:
        return _ChatLines(model=request.model)

    def read_frame(self, frame: bytes, state: _ChatLines, model: str) -> str | None:
        data = self._stream_line(frame, model)
        state.model = text_or(data.get("model"), state.model)
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
            finish_reason="length" if guard.cut else map_done_reason(final.get("done_reason")),
            usage=map_usage(final),
        )

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
            )

    async def is_available(self) -> bool:
        """``GET /`` answers 200 "Ollama is running"."""
        response = await probe(self.client, "/", headers=self.headers())
        if response is None:
            return False
        self.observe(response)
        return response.status_code == 200


def _version(entry: dict[str, object]) -> str | None:
    """``/api/tags`` names a build by its digest (``ollama list`` shows the first 12 hex
    digits, https://github.com/ollama/ollama/blob/main/docs/api.md#list-local-models);
    the modified date stands in where a server gives no digest."""
    digest = entry.get("digest")
    if isinstance(digest, str) and digest:
        return digest.removeprefix("sha256:")[:12]
    modified = entry.get("modified_at")
    return modified if isinstance(modified, str) and modified else None
