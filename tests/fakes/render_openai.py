"""OpenAI Chat Completions wire format (wire-reference.md §1).

Non-streaming bodies follow the recorded gpt-4.1 layout (2-space indent, trailing
newline); streams follow the recorded 2025+ transcripts (``service_tier``,
``obfuscation``, ``usage: null`` on every chunk when usage was asked for, a
``choices: []`` usage chunk, ``data: [DONE]``). Error bodies use the 2-space
layout recorded for ``/v1/chat/completions`` (no trailing newline).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from .behaviours import Error
from .recording import RecordedRequest
from .wire import (
    ChatContext,
    Plan,
    Renderer,
    Route,
    WireResponse,
    arguments_pieces,
    arguments_text,
    dumps,
    random_token,
    sse,
)

__all__ = ["OpenAIRenderer", "mask_key", "tool_turn_error"]

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}
# Fixed `created` stamps for listed models (the API reports when each model was published).
_MODEL_CREATED = 1721172741


def mask_key(key: str) -> str:
    """Mask an API key the way OpenAI's 401 message does: first 8 chars, stars, last 4.

    Keys of 12 characters or fewer are echoed unmasked, as the service does for
    obviously malformed keys.
    """
    if len(key) <= 12:
        return key
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def _default_error(status: int, model: str) -> tuple[str, str, str | None]:
    """(message, type, code) defaults per status, from the §1.6 table."""
    if status == 401:
        return _NO_KEY, "invalid_request_error", None
    if status == 403:
        return (
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        )
    if status == 404:
        return (
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )
    if status == 429:
        return (
            f"Rate limit reached for {model or 'gpt-4o-mini'} in organization org-fake on requests per min "
            "(RPM): Limit 60, Used 60, Requested 1. Please try again in 1s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            "rate_limit_exceeded",
        )
    if status == 503:
        return "The server is overloaded or not ready yet.", "server_error", None
    if status >= 500:
        return _SERVER_ERROR, "server_error", None
    return "Invalid request.", "invalid_request_error", None


def tool_turn_error(body: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(message, param) of the 400 the API gives a request whose tool fields or tool turns
    are malformed (tools-wire §6), or None."""
    if not body.get("tools"):
        for field in ("tool_choice", "parallel_tool_calls"):
            if field in body:
                return f"Invalid value for '{field}': '{field}' is only allowed when 'tools' are specified.", field
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    open_ids: list[str] = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if not call_id:
                return ("Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
                        f"messages.[{n}].tool_call_id")
            if call_id not in open_ids:
                return ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        "with 'tool_calls'.", f"messages.[{n}].role")
            open_ids.remove(call_id)
            continue
        if open_ids:
            break
        open_ids = [c.get("id") for c in message.get("tool_calls") or () if isinstance(c, dict)]
    if open_ids:
        return ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(open_ids)}",
                "messages")
    return None


def wire_tool_calls(plan: Plan, *, id_prefix: str = "call_", id_length: int = 24) -> list[dict[str, Any]]:
    """The plan's calls as ``message.tool_calls`` (arguments as a JSON string)."""
    return [
        {
            "id": call.id or id_prefix + random_token(id_length),
            "type": "function",
            "function": {"name": call.name, "arguments": arguments_text(call)},
        }
        for call in plan.tool_calls
    ]


def streamed_tool_calls(plan: Plan, calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The ``delta.tool_calls`` lists of a stream: per call, a first piece with ``id``,
    ``type``, ``name`` and ``arguments: ""``, then one per argument piece."""
    deltas: list[list[dict[str, Any]]] = []
    for index, (call, wire) in enumerate(zip(plan.tool_calls, calls, strict=True)):
        head = {"index": index, "id": wire["id"], "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        deltas.append([head])
        deltas.extend([{"index": index, "function": {"arguments": piece}}] for piece in arguments_pieces(call))
    return deltas


class OpenAIRenderer(Renderer):
    """api.openai.com ``/v1/chat/completions`` and ``/v1/models``."""

    kind = "openai"
    chat_path = "/v1/chat/completions"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fingerprint = "fp_" + secrets.token_hex(5)

    def new_id(self) -> str:
        return "chatcmpl-" + random_token(29)

    # -- request side -------------------------------------------------------------

    def check_auth(self, headers: Mapping[str, str]) -> WireResponse | None:
        if self.api_key is None:
            return None
        auth = headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key == self.api_key:
            return None
        if scheme.lower() != "bearer" or not key:
            return self._envelope(401, _NO_KEY, "invalid_request_error", None, None)
        message = (
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return self._envelope(401, message, "invalid_request_error", None, "invalid_api_key")

    def validate(self, ctx: ChatContext, raw_body: bytes) -> WireResponse | None:
        if not ctx.is_object:
            return self._envelope(400, _BAD_JSON, "invalid_request_error", None, None)
        if not ctx.model:
            return self._envelope(
                400, "you must provide a model parameter", "invalid_request_error", None, None
            )
        if "messages" not in ctx.body:
            return self._envelope(
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "messages",
                "missing_required_parameter",
            )
        refused = tool_turn_error(ctx.body)
        if refused is not None:
            return self._envelope(400, refused[0], "invalid_request_error", refused[1], None)
        return None

    # -- response side ------------------------------------------------------------

    def base_headers(self, status: int) -> dict[str, str]:
        return {
            "openai-version": "2020-10-01",
            "openai-organization": "user-fakeorg",
            "openai-project": "proj_fakeproject",
            "openai-processing-ms": "12",
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-limit-tokens": "800000",
            "x-ratelimit-remaining-requests": "0" if status == 429 else "4999",
            "x-ratelimit-remaining-tokens": "799986",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "1ms",
            "x-request-id": "req_" + secrets.token_hex(16),
        }

    def _usage(self, plan: Plan) -> dict[str, Any]:
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def render_json(self, plan: Plan, ctx: ChatContext) -> bytes:
        body = {
            "id": plan.response_id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": plan.text if plan.text or not plan.tool_calls else None,
                        "refusal": None,
                        **({"tool_calls": wire_tool_calls(plan)} if plan.tool_calls else {}),
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": _FINISH.get(plan.finish_reason, plan.finish_reason),
                }
            ],
            "usage": self._usage(plan),
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
        }
        return dumps(body, indent=True) + b"\n"

    @staticmethod
    def _stream_options(ctx: ChatContext) -> dict[str, Any]:
        options = ctx.body.get("stream_options")
        return options if isinstance(options, dict) else {}

    def _chunk(self, plan: Plan, ctx: ChatContext, choices: list[Any], usage: Any = None) -> bytes:
        options = self._stream_options(ctx)
        chunk: dict[str, Any] = {
            "id": plan.response_id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if options.get("include_usage") is True:
            chunk["usage"] = usage
        if options.get("include_obfuscation", True) is not False:
            chunk["obfuscation"] = random_token(3 + secrets.randbelow(12))
        return sse(dumps(chunk))

    @staticmethod
    def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def stream_head(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return [self._chunk(plan, ctx, [self._choice(delta)])]

    def stream_piece(self, plan: Plan, ctx: ChatContext, index: int, piece: str) -> bytes:
        return self._chunk(plan, ctx, [self._choice({"content": piece})])

    def stream_tail(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        finish = _FINISH.get(plan.finish_reason, plan.finish_reason)
        frames = [self._chunk(plan, ctx, [self._choice({"tool_calls": delta})])
                  for delta in streamed_tool_calls(plan, wire_tool_calls(plan))]
        frames.append(self._chunk(plan, ctx, [self._choice({}, finish)]))
        if self._stream_options(ctx).get("include_usage") is True:
            frames.append(self._chunk(plan, ctx, [], self._usage(plan)))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def stream_error(self, message: str | None, ctx: ChatContext) -> bytes:
        error = {"message": message or _SERVER_ERROR, "type": "server_error", "param": None, "code": None}
        return sse(dumps({"error": error}))

    def _envelope(
        self,
        status: int,
        message: str,
        error_type: str,
        param: str | None,
        code: str | int | None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> WireResponse:
        payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        response = self.json_response(status, payload, indent=True)
        response.headers.update(extra_headers or {})
        return response

    def error(self, err: Error, ctx: ChatContext | None) -> WireResponse:
        model = ctx.model if ctx is not None else ""
        message, error_type, code = _default_error(err.status, model)
        if err.body is not None:
            headers = self.base_headers(err.status) | {"Content-Type": self.json_content_type}
            return WireResponse(err.status, err.body, headers | dict(err.headers or {}))
        return self._envelope(
            err.status,
            err.message if err.message is not None else message,
            err.error_type if err.error_type is not None else error_type,
            err.param,
            err.code if err.code is not None else code,
            err.headers,
        )

    def not_found(self, method: str, path: str) -> WireResponse:
        return self._envelope(404, f"Invalid URL ({method} {path})", "invalid_request_error", None, None)

    # -- model listing --------------------------------------------------------------

    def _model_entry(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}

    def _list_models(self, request: RecordedRequest) -> WireResponse:
        payload = {"object": "list", "data": [self._model_entry(m) for m in self.models]}
        response = self.json_response(200, payload, indent=True)
        return WireResponse(200, response.body + b"\n", response.headers)

    def _get_model(self, request: RecordedRequest) -> WireResponse:
        model_id = request.path.removeprefix("/v1/models/")
        if model_id not in self.models:
            message, error_type, code = _default_error(404, model_id)
            return self._envelope(404, message, error_type, None, code)
        return self.json_response(200, self._model_entry(model_id), indent=True)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/models", self._list_models),
            Route("GET", "/v1/models/{model_id:.+}", self._get_model),
        ]
