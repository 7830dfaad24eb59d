"""Anthropic Messages wire format (wire-reference.md §2).

Non-streaming bodies are compact JSON without a trailing newline (the 2025
recording's usage fields). Streams reproduce the recorded event order
``message_start, content_block_start, ping, content_block_delta…,
content_block_stop, message_delta, message_stop`` including the run of spaces
the service puts before the final ``}`` of most ``data:`` lines, so clients that
compare bytes instead of parsing JSON fail here as they would in production.

Tool calls are ``tool_use`` blocks after the text block (none when the text is
empty: the first tool_use block is then block 0): ``content_block_start`` with the
id, the name and ``input: {}``, ``input_json_delta`` pieces whose first is ``""``,
``content_block_stop``. Requests are checked as the API checks them
(:mod:`.anthropic_checks`): a ``tool_use`` without its ``tool_result`` right after,
a ``tool_result`` for an unknown id, results not first, malformed tools or images
get the API's 400.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from .anthropic_checks import request_error
from .behaviours import Error, FakeToolCall
from .recording import RecordedRequest
from .wire import (
    ChatContext,
    Plan,
    Renderer,
    Route,
    WireResponse,
    arguments_pieces,
    dumps,
    random_token,
    sse,
)

__all__ = ["AnthropicRenderer"]

_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
# Spaces before the final "}" per event type, as in the byte-exact recording (§2.4);
# deltas cycle through a few widths (including none) so no fixed layout can be assumed.
_PAD_START, _PAD_BLOCK_START, _PAD_BLOCK_STOP, _PAD_DELTA_MSG, _PAD_STOP = 12, 8, 8, 7, 4
_PAD_DELTAS = (6, 3, 0, 9, 5)
_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization "
        "(00000000-0000-0000-0000-000000000000) of 50,000 input tokens per minute. For details, refer to: "
        "https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. "
        "Please reduce the prompt length or the maximum tokens requested, or try again later.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}


def _padded(payload: dict[str, Any], pad: int) -> bytes:
    raw = dumps(payload)
    return raw[:-1] + b" " * pad + b"}"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _display_name(model_id: str) -> str:
    """``claude-3-5-haiku-20241022`` → ``Claude 3.5 Haiku``; ``claude-sonnet-4-20250514`` → ``Claude Sonnet 4``."""
    stem = re.sub(r"-\d{8}$", "", model_id)
    words = stem.split("-")
    out: list[str] = []
    for word in words:
        if out and word.isdigit() and out[-1].isdigit():
            out[-1] += "." + word
        else:
            out.append(word if word.isdigit() else word.capitalize())
    return " ".join(out)


def _created_at(model_id: str) -> str:
    match = re.search(r"(\d{4})(\d{2})(\d{2})$", model_id)
    if match is None:
        return "2025-01-01T00:00:00Z"
    return f"{match[1]}-{match[2]}-{match[3]}T00:00:00Z"


def _has_text_block(plan: Plan) -> bool:
    return bool(plan.text) or not plan.tool_calls


def _call_id(call: FakeToolCall, position: int, plan: Plan) -> str:
    """The call's id, or a ``toolu_01`` id made from the message id (stable per answer)."""
    return call.id if call.id is not None else f"toolu_01{plan.response_id[-20:]}{position:02d}"


def _input(call: FakeToolCall) -> Any:
    """The ``input`` object of a non-streamed tool_use block; a raw argument string that
    is not JSON is sent as that string (a malformed answer)."""
    if not isinstance(call.arguments, str):
        return dict(call.arguments)
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def _content_blocks(plan: Plan) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": plan.text}] if _has_text_block(plan) else []
    blocks.extend({"type": "tool_use", "id": _call_id(call, i, plan), "name": call.name, "input": _input(call)}
                  for i, call in enumerate(plan.tool_calls))
    return blocks


def _tool_start(index: int, call: FakeToolCall, call_id: str) -> bytes:
    block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
    return _padded({"type": "content_block_start", "index": index, "content_block": block}, _PAD_BLOCK_START)


def _tool_frames(plan: Plan) -> list[bytes]:
    """The tool_use blocks of a stream after its text, and the stop of the open block.

    Every tool_use block starts with ``input: {}``, then ``input_json_delta`` pieces of
    the argument text, the first one empty, then stops.
    """
    frames: list[bytes] = []
    offset = 1 if _has_text_block(plan) else 0
    for i, call in enumerate(plan.tool_calls):
        index = i + offset
        if index > 0:  # block 0 started in the head
            frames.append(sse(_padded({"type": "content_block_stop", "index": index - 1}, _PAD_BLOCK_STOP),
                              "content_block_stop"))
            frames.append(sse(_tool_start(index, call, _call_id(call, i, plan)), "content_block_start"))
        pieces = [""] + [p for p in arguments_pieces(call) if p] if call.pieces is None else list(call.pieces)
        for n, piece in enumerate(pieces):
            delta = {"type": "content_block_delta", "index": index,
                     "delta": {"type": "input_json_delta", "partial_json": piece}}
            frames.append(sse(_padded(delta, _PAD_DELTAS[n % len(_PAD_DELTAS)]), "content_block_delta"))
    last = len(plan.tool_calls) + offset - 1
    frames.append(sse(_padded({"type": "content_block_stop", "index": last}, _PAD_BLOCK_STOP), "content_block_stop"))
    return frames


class AnthropicRenderer(Renderer):
    """api.anthropic.com ``/v1/messages`` and ``/v1/models``."""

    kind = "anthropic"
    chat_path = "/v1/messages"
    stream_extra_headers = {"Cache-Control": "no-cache"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.organization_id = str(uuid.uuid4())

    def new_id(self) -> str:
        return "msg_01" + random_token(22)

    # -- request side -------------------------------------------------------------

    def check_auth(self, headers: Mapping[str, str]) -> WireResponse | None:
        if self.api_key is None:
            return None
        key = headers.get("x-api-key")
        if not key:
            return self._envelope(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            return self._envelope(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return self._envelope(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def validate(self, ctx: ChatContext, raw_body: bytes) -> WireResponse | None:
        if not ctx.is_object:
            return self._envelope(400, "invalid_request_error", "Invalid JSON in request body.")
        for name in ("model", "max_tokens", "messages"):
            if name not in ctx.body:
                return self._envelope(400, "invalid_request_error", f"{name}: Field required")
        problem = request_error(ctx.body)
        return self._envelope(400, "invalid_request_error", problem) if problem is not None else None

    # -- response side ------------------------------------------------------------

    def base_headers(self, status: int) -> dict[str, str]:
        now = datetime.now(UTC)
        soon = _rfc3339(now + timedelta(seconds=1))
        headers = {
            "request-id": "req_011C" + random_token(20),
            "anthropic-organization-id": self.organization_id,
            "via": "1.1 google",
        }
        for bucket, limit in (
            ("input-tokens", 80000),
            ("output-tokens", 16000),
            ("requests", 1000),
            ("tokens", 96000),
        ):
            remaining = 0 if status == 429 else limit - 1
            headers[f"anthropic-ratelimit-{bucket}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{bucket}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{bucket}-reset"] = soon
        return headers

    def render_json(self, plan: Plan, ctx: ChatContext) -> bytes:
        body = {
            "id": plan.response_id,
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": _content_blocks(plan),
            "stop_reason": _STOP_REASON.get(plan.finish_reason, plan.finish_reason),
            "stop_sequence": None,
            "usage": {
                "input_tokens": plan.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": plan.completion_tokens,
                "service_tier": "standard",
            },
        }
        return dumps(body)

    def stream_head(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        message: dict[str, Any] = {
            "model": plan.model,
            "id": plan.response_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": plan.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 1,
                "service_tier": "standard",
                "inference_geo": "not_available",
            },
        }
        if _has_text_block(plan):
            first = _padded({"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}, _PAD_BLOCK_START)
        else:
            first = _tool_start(0, plan.tool_calls[0], _call_id(plan.tool_calls[0], 0, plan))
        return [
            sse(_padded({"type": "message_start", "message": message}, _PAD_START), "message_start"),
            sse(first, "content_block_start"),
            sse(b'{"type": "ping"}', "ping"),
        ]

    def stream_piece(self, plan: Plan, ctx: ChatContext, index: int, piece: str) -> bytes:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        return sse(_padded(delta, _PAD_DELTAS[index % len(_PAD_DELTAS)]), "content_block_delta")

    def stream_tail(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        message_delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": _STOP_REASON.get(plan.finish_reason, plan.finish_reason),
                "stop_sequence": None,
            },
            "usage": {
                "input_tokens": plan.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": plan.completion_tokens,
            },
        }
        return [
            *_tool_frames(plan),
            sse(_padded(message_delta, _PAD_DELTA_MSG), "message_delta"),
            sse(_padded({"type": "message_stop"}, _PAD_STOP), "message_stop"),
        ]

    def stream_error(self, message: str | None, ctx: ChatContext) -> bytes:
        # The documented example uses ", " / ": " separators (Python-style json.dumps).
        payload = {"type": "error", "error": {"type": "overloaded_error", "message": message or "Overloaded"}}
        return sse(json.dumps(payload, ensure_ascii=False).encode(), "error")

    def midstream_error_response(self, message: str | None, ctx: ChatContext) -> WireResponse:
        return self.error(Error(529, message=message), ctx)

    def _envelope(
        self,
        status: int,
        error_type: str,
        message: str,
        extra_headers: Mapping[str, str] | None = None,
    ) -> WireResponse:
        headers = self.base_headers(status)
        headers["Content-Type"] = self.json_content_type
        payload = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": headers["request-id"],
        }
        headers.update(extra_headers or {})
        return WireResponse(status, dumps(payload), headers)

    def error(self, err: Error, ctx: ChatContext | None) -> WireResponse:
        if err.body is not None:
            headers = self.base_headers(err.status) | {"Content-Type": self.json_content_type}
            return WireResponse(err.status, err.body, headers | dict(err.headers or {}))
        if err.status == 404:
            default_type, default_message = "not_found_error", f"model: {ctx.model if ctx else ''}"
        elif err.status in _DEFAULT_ERRORS:
            default_type, default_message = _DEFAULT_ERRORS[err.status]
        elif err.status >= 500:
            default_type, default_message = _DEFAULT_ERRORS[500]
        else:
            default_type, default_message = _DEFAULT_ERRORS[400]
        return self._envelope(
            err.status,
            err.error_type if err.error_type is not None else default_type,
            err.message if err.message is not None else default_message,
            err.headers,
        )

    def not_found(self, method: str, path: str) -> WireResponse:
        return self._envelope(404, "not_found_error", "Not Found")

    # -- model listing --------------------------------------------------------------

    def _model_info(self, model_id: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model_id,
            "display_name": _display_name(model_id),
            "created_at": _created_at(model_id),
            "max_input_tokens": self.context_length(model_id, 200000),
            "max_tokens": 8192 if "claude-3" in model_id else 64000,
        }

    def _list_models(self, request: RecordedRequest) -> WireResponse:
        params = dict(parse_qsl(request.query))
        ids = list(self.models)
        if params.get("after_id") in ids:
            ids = ids[ids.index(params["after_id"]) + 1 :]
        if params.get("before_id") in ids:
            ids = ids[: ids.index(params["before_id"])]
        try:
            limit = max(1, min(1000, int(params.get("limit", "20"))))
        except ValueError:
            return self._envelope(400, "invalid_request_error", "limit: Input should be a valid integer")
        page = ids[:limit]
        payload = {
            "data": [self._model_info(m) for m in page],
            "has_more": len(ids) > limit,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        return self.json_response(200, payload)

    def _get_model(self, request: RecordedRequest) -> WireResponse:
        model_id = request.path.removeprefix("/v1/models/")
        if model_id not in self.models:
            return self._envelope(404, "not_found_error", f"model: {model_id}")
        return self.json_response(200, self._model_info(model_id))

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/models", self._list_models),
            Route("GET", "/v1/models/{model_id:.+}", self._get_model),
        ]
