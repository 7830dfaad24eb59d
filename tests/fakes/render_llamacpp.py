"""llama.cpp ``llama-server`` wire format (wire-reference.md §4).

OpenAI-compatible, with llama.cpp's own habits: ``choices`` comes first in every
object, the first chunk's delta is ``{"role":"assistant","content":null}``, the
``choices: []`` usage chunk is sent unless ``stream_options.include_usage`` is
explicitly false and carries a ``timings`` object, the ``model`` field reports the
loaded model (not the requested name), and error envelopes carry the numeric
status as ``code``. As in the real server, ``/health`` and the model listing are
public even when an API key is configured; the key may come as
``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .behaviours import Error
from .recording import RecordedRequest
from .render_openai import streamed_tool_calls, wire_tool_calls
from .wire import ChatContext, Plan, Renderer, Route, WireResponse, dumps, random_token, sse

__all__ = ["LlamaCppRenderer"]

BUILD_INFO = "b6097-9515c613"
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "stop"}
_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "Invalid API Key"),
    403: ("permission_error", "Forbidden"),
    404: ("not_found_error", "File Not Found"),
    500: ("server_error", "Internal Server Error"),
    501: ("not_supported_error", "This server does not support this feature"),
    503: ("unavailable_error", "Loading model"),
}


class LlamaCppRenderer(Renderer):
    """llama-server ``/v1/chat/completions`` plus ``/health``, ``/v1/models``, ``/props``."""

    kind = "llamacpp"
    chat_path = "/v1/chat/completions"
    json_content_type = "application/json; charset=utf-8"
    stream_content_type = "text/event-stream"

    def new_id(self) -> str:
        return "chatcmpl-" + random_token(32)

    def reported_model(self, ctx: ChatContext) -> str:
        # "we no longer reflect back the model name" (llama.cpp PR #17668).
        return self.models[0] if self.models else ctx.model

    def knows_model(self, model: str) -> bool:
        return not model or model in self.models

    # -- request side -------------------------------------------------------------

    def check_auth(self, headers: Mapping[str, str]) -> WireResponse | None:
        if self.api_key is None:
            return None
        key = headers.get("authorization") or headers.get("x-api-key") or ""
        if key.removeprefix("Bearer ") == self.api_key:
            return None
        return self.error(Error(401), None)

    #: Started with ``--jinja`` (tools need it) and with a multimodal projector
    #: (``--mmproj``, images need it); tests may turn either off.
    jinja: bool = True
    mmproj: bool = True

    def validate(self, ctx: ChatContext, raw_body: bytes) -> WireResponse | None:
        if not ctx.is_object:
            return self.error(Error(400, message="Failed to parse JSON body"), ctx)
        if not isinstance(ctx.body.get("messages"), list):
            return self.error(Error(400, message="'messages' is required"), ctx)
        return self._tools_refused(ctx.body)

    def _tools_refused(self, body: dict[str, Any]) -> WireResponse | None:
        """llama-server's 400s for tools and images it cannot take (tools-wire §5, §6). An
        object ``tool_choice`` is not refused: the server logs it and uses ``auto``."""
        if body.get("tools") and not self.jinja:
            return self.error(Error(400, message="tools param requires --jinja flag"), None)
        choice = body.get("tool_choice")
        if isinstance(choice, str) and choice not in ("auto", "none", "required"):
            return self.error(Error(400, message=f"Invalid tool_choice: {choice}"), None)
        images = any(
            isinstance(part, dict) and part.get("type") == "image_url"
            for message in body["messages"] if isinstance(message, dict) and isinstance(message.get("content"), list)
            for part in message["content"]
        )
        if images and not self.mmproj:
            message = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
            return self.error(Error(400, message=message), None)
        return None

    # -- response side ------------------------------------------------------------

    def base_headers(self, status: int) -> dict[str, str]:
        return {"Server": "llama.cpp"}

    @staticmethod
    def _usage(plan: Plan) -> dict[str, int]:
        return {
            "completion_tokens": plan.completion_tokens,
            "prompt_tokens": plan.prompt_tokens,
            "total_tokens": plan.completion_tokens + plan.prompt_tokens,
        }

    @staticmethod
    def _timings(plan: Plan) -> dict[str, Any]:
        prompt_ms = 0.5 * plan.prompt_tokens + 10.0
        predicted_ms = 18.9 * max(plan.completion_tokens, 1)
        return {
            "cache_n": 0,
            "prompt_n": plan.prompt_tokens,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(plan.prompt_tokens, 1),
            "prompt_per_second": 1000.0 * plan.prompt_tokens / prompt_ms,
            "predicted_n": plan.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(plan.completion_tokens, 1),
            "predicted_per_second": 1000.0 * plan.completion_tokens / predicted_ms,
        }

    def render_json(self, plan: Plan, ctx: ChatContext) -> bytes:
        body = {
            "choices": [
                {
                    "finish_reason": _FINISH.get(plan.finish_reason, plan.finish_reason),
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": plan.text if plan.text or not plan.tool_calls else None,
                        **({"tool_calls": wire_tool_calls(plan, id_prefix="", id_length=32)} if plan.tool_calls else {}),
                    },
                }
            ],
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": BUILD_INFO,
            "object": "chat.completion",
            "usage": self._usage(plan),
            "id": plan.response_id,
            "timings": self._timings(plan),
        }
        return dumps(body)

    def _chunk(self, plan: Plan, choices: list[Any], **extra: Any) -> bytes:
        chunk = {
            "choices": choices,
            "created": plan.created,
            "id": plan.response_id,
            "model": plan.model,
            "system_fingerprint": BUILD_INFO,
            "object": "chat.completion.chunk",
            **extra,
        }
        return sse(dumps(chunk))

    def stream_head(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        choice = {"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}
        return [self._chunk(plan, [choice])]

    def stream_piece(self, plan: Plan, ctx: ChatContext, index: int, piece: str) -> bytes:
        return self._chunk(plan, [{"finish_reason": None, "index": 0, "delta": {"content": piece}}])

    def stream_tail(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        finish = {
            "finish_reason": _FINISH.get(plan.finish_reason, plan.finish_reason),
            "index": 0,
            "delta": {},
        }
        options = ctx.body.get("stream_options")
        include_usage = not (isinstance(options, dict) and options.get("include_usage") is False)
        calls = [
            self._chunk(plan, [{"finish_reason": None, "index": 0, "delta": {"tool_calls": delta}}])
            for delta in streamed_tool_calls(plan, wire_tool_calls(plan, id_prefix="", id_length=32))
        ]
        if include_usage:
            frames = [
                *calls,
                self._chunk(plan, [finish]),
                self._chunk(plan, [], usage=self._usage(plan), timings=self._timings(plan)),
            ]
        else:
            frames = [*calls, self._chunk(plan, [finish], timings=self._timings(plan))]
        return [*frames, b"data: [DONE]\n\n"]

    def stream_error(self, message: str | None, ctx: ChatContext) -> bytes:
        error = {"code": 500, "message": message or "Internal Server Error", "type": "server_error"}
        return sse(dumps({"error": error}))

    def error(self, err: Error, ctx: ChatContext | None) -> WireResponse:
        headers = self.base_headers(err.status) | {"Content-Type": self.json_content_type}
        headers |= dict(err.headers or {})
        if err.body is not None:
            return WireResponse(err.status, err.body, headers)
        fallback = _DEFAULT_ERRORS[500] if err.status >= 500 else _DEFAULT_ERRORS[400]
        default_type, default_message = _DEFAULT_ERRORS.get(err.status, fallback)
        payload = {
            "error": {
                "code": err.code if err.code is not None else err.status,
                "message": err.message if err.message is not None else default_message,
                "type": err.error_type if err.error_type is not None else default_type,
            }
        }
        return WireResponse(err.status, dumps(payload), headers)

    def not_found(self, method: str, path: str) -> WireResponse:
        return self.error(Error(404), None)

    # -- server endpoints -------------------------------------------------------------

    def _health(self, request: RecordedRequest) -> WireResponse:
        return self.json_response(200, {"status": "ok"})

    def _models(self, request: RecordedRequest) -> WireResponse:
        data = [
            {
                "id": model,
                "object": "model",
                "created": 1735142223,
                "owned_by": "llamacpp",
                "meta": {
                    "vocab_type": 2,
                    "n_vocab": 49152,
                    "n_ctx_train": self.context_length(model, 8192),
                    "n_embd": 576,
                    "n_params": 134515008,
                    "size": 85782912,
                },
            }
            for model in self.models
        ]
        return self.json_response(200, {"object": "list", "data": data})

    #: The window ``/props`` reports when it differs from the trained one (``llama-server -c``).
    n_ctx: int | None = None

    def _props(self, request: RecordedRequest) -> WireResponse:
        model = self.models[0] if self.models else ""
        payload = {
            "default_generation_settings": {
                "id": 0,
                "id_task": -1,
                "n_ctx": self.n_ctx or self.context_length(model, 8192),
                "speculative": False,
                "is_processing": False,
                "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
            },
            "total_slots": 1,
            "model_path": model,
            "chat_template": "{{ messages }}",
            "modalities": {"vision": False, "audio": False},
            "build_info": BUILD_INFO,
        }
        return self.json_response(200, payload)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/health", self._health, auth=False),
            Route("GET", "/v1/health", self._health, auth=False),
            Route("GET", "/v1/models", self._models, auth=False),
            Route("GET", "/models", self._models, auth=False),
            Route("GET", "/props", self._props),
        ]
