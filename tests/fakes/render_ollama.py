"""Ollama native API wire format (wire-reference.md §3).

Streams are NDJSON (``application/x-ndjson``, one compact object per line) and
streaming is the default when the request has no ``stream`` field. The final
``done: true`` object carries ``done_reason`` and the metrics, with zero values
omitted as Go's ``omitempty`` does. Errors are ``{"error":"..."}``. The local
server has no authentication, so ``api_key`` is ignored for this kind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping
from typing import Any

from .behaviours import Error, FakeToolCall
from .recording import RecordedRequest
from .wire import ChatContext, Plan, Renderer, Route, WireResponse, dumps, random_token

__all__ = ["NO_TOOLS_MODELS", "VISION_MODELS", "OllamaRenderer"]

MODEL_ERROR = "an error was encountered while running the model"
_DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}
_DEFAULT_ERRORS = {
    400: "invalid request",
    403: "forbidden",
    404: "",  # built from the model name
    429: "too many requests",
    499: "request canceled",
    500: MODEL_ERROR,
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_MODIFIED_AT = "2025-05-04T17:37:44.706015396-07:00"
#: Models whose template has no tools: a chat offering tools gets 400 "<model> does not support tools".
NO_TOOLS_MODELS = frozenset({"llava:7b"})
#: Models /api/show lists with the "vision" capability.
VISION_MODELS = frozenset({"llava:7b", "gemma3:4b"})
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _created_at() -> str:
    """Go's RFC 3339 with nanoseconds, trailing zeros trimmed (``time.RFC3339Nano``)."""
    ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _full_name(model: str) -> str:
    return model if ":" in model else model + ":latest"


def _architecture(model: str) -> str:
    name = model.lower()
    for prefix, arch in (("qwen3", "qwen3"), ("qwen", "qwen2"), ("gemma", "gemma3"), ("phi", "phi3")):
        if name.startswith(prefix):
            return arch
    return "llama"


def _parameter_size(model: str) -> str:
    match = re.search(r":(\d+(?:\.\d+)?)b", model.lower())
    return f"{match[1]}B" if match else "3.2B"


def _base64_problem(image: object) -> str | None:
    """Go's error for an ``images`` entry that is not standard base64, or None."""
    if not isinstance(image, str):
        return "json: cannot unmarshal " + _go_type(image) + " into Go struct field Message.messages.images of type []uint8"
    raw = image.encode()
    bad = next((i for i, byte in enumerate(raw) if byte not in _BASE64), None)
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {bad if bad is not None else len(raw)}"
    return None


def _go_type(value: object) -> str:
    names = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(value), "null" if value is None else "value")


class OllamaRenderer(Renderer):
    """Ollama ``/api/chat`` plus ``/``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/version``."""

    kind = "ollama"
    chat_path = "/api/chat"
    stream_by_default = True
    json_content_type = "application/json; charset=utf-8"
    stream_content_type = "application/x-ndjson"
    garbage_frame = b"{not json\n"

    def new_id(self) -> str:
        return ""

    #: The window a chat without ``num_ctx`` loads a model with (Ollama's default below 24 GiB of VRAM).
    default_context = 4096
    #: Seconds a model takes to load: ``/api/ps`` lists it that long after the chat that loads it.
    load_s = 0.0

    #: Put the calls of a streamed answer on the final ``done: true`` line (an
    #: end-of-generation flush does that) instead of a line of their own.
    calls_on_final = False
    #: Give each call an ``id`` (``call_`` + 8 [a-z0-9]) as servers since v0.12.10 do;
    #: by default only a ``FakeToolCall.id`` is sent.
    send_call_ids = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Model → (monotonic time it is loaded at, its window), for ``/api/ps``.
        self.running: dict[str, tuple[float, int]] = {}
        #: Models that refuse ``tools`` (full names, ``:latest`` added where missing).
        self.no_tools: set[str] = {_full_name(m) for m in NO_TOOLS_MODELS}

    def knows_model(self, model: str) -> bool:
        return _full_name(model) in {_full_name(m) for m in self.models}

    def _load(self, ctx: ChatContext) -> None:
        """A chat loads its model with its ``num_ctx`` (again, when the window differs)."""
        options = ctx.body.get("options")
        num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
        window = num_ctx if isinstance(num_ctx, int) else self.default_context
        name = _full_name(ctx.model)
        if self.running.get(name, (0.0, 0))[1] != window:
            self.running[name] = (time.monotonic() + self.load_s, window)

    def context_length(self, model: str, default: int) -> int:
        for name in (model, _full_name(model), model.removesuffix(":latest")):
            if name in self.context_lengths:
                return self.context_lengths[name]
        return default

    # -- request side -------------------------------------------------------------

    def check_auth(self, headers: Mapping[str, str]) -> WireResponse | None:
        return None

    def validate(self, ctx: ChatContext, raw_body: bytes) -> WireResponse | None:
        if not raw_body.strip():
            return self._error_body(400, "missing request body")
        if not ctx.is_object:
            return self._error_body(400, "invalid character looking for beginning of value")
        if not ctx.model:
            return self._error_body(400, "model is required")
        refused = self._check_tools_and_images(ctx)
        if refused is not None:
            return refused
        self._load(ctx)
        if ctx.body.get("messages") == []:
            # "Load a model" (docs/api.md): no messages, nothing generated, no script used.
            return self.json_response(200, {"model": ctx.model, "created_at": _created_at(),
                                             "message": {"role": "assistant", "content": ""},
                                             "done_reason": "load", "done": True})
        return None

    def _check_tools_and_images(self, ctx: ChatContext) -> WireResponse | None:
        """Ollama's 400s for tools and images: a model without tools offered some, an
        image that is not standard base64 (Go's ``[]byte``), call arguments that are not
        an object (Go's ``map[string]any``)."""
        if ctx.body.get("tools") and _full_name(ctx.model) in self.no_tools:
            return self._error_body(400, f"{ctx.model} does not support tools")
        messages = ctx.body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict):
                continue
            for image in message.get("images") or ():
                problem = _base64_problem(image)
                if problem is not None:
                    return self._error_body(400, problem)
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                arguments = function.get("arguments") if isinstance(function, dict) else None
                if not isinstance(arguments, dict):
                    return self._error_body(400, "json: cannot unmarshal " + _go_type(arguments) + " into Go struct "
                                            "field ToolCallFunction.messages.tool_calls.function.arguments of type "
                                            "api.ToolCallFunctionArguments")
        return None

    # -- response side ------------------------------------------------------------

    def base_headers(self, status: int) -> dict[str, str]:
        return {}

    @staticmethod
    def _metrics(plan: Plan) -> dict[str, int]:
        metrics = {
            "total_duration": 250_000_000 + 12_000_000 * plan.completion_tokens,
            "load_duration": 41_295_167,
            "prompt_eval_count": plan.prompt_tokens,
            "prompt_eval_duration": 1_000_000 * plan.prompt_tokens,
            "eval_count": plan.completion_tokens,
            "eval_duration": 11_000_000 * plan.completion_tokens,
        }
        return {key: value for key, value in metrics.items() if value}  # omitempty

    def _final(self, plan: Plan, content: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return {
            "model": plan.model,
            "created_at": _created_at(),
            "message": message,
            "done": True,
            "done_reason": _DONE_REASON.get(plan.finish_reason, plan.finish_reason),
            **self._metrics(plan),
        }

    def _call(self, call: FakeToolCall, index: int) -> dict[str, Any]:
        """One ``tool_calls`` entry as Ollama writes it: arguments as an object (a raw
        string argument, which no real server sends, goes as a JSON string)."""
        arguments = call.arguments if isinstance(call.arguments, str) else dict(call.arguments)
        call_id = call.id or (f"call_{random_token(8, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
                              if self.send_call_ids else None)
        entry: dict[str, Any] = {"id": call_id} if call_id else {}
        entry["function"] = {"index": index, "name": call.name, "arguments": arguments}
        return entry

    def render_json(self, plan: Plan, ctx: ChatContext) -> bytes:
        return dumps(self._final(plan, plan.text, [self._call(c, i) for i, c in enumerate(plan.tool_calls)]))

    def stream_head(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        return []

    def stream_piece(self, plan: Plan, ctx: ChatContext, index: int, piece: str) -> bytes:
        line = {
            "model": plan.model,
            "created_at": _created_at(),
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        return dumps(line) + b"\n"

    def stream_tail(self, plan: Plan, ctx: ChatContext) -> list[bytes]:
        # A call is never split: whole, with content "", in the line where it completes.
        calls = [self._call(c, i) for i, c in enumerate(plan.tool_calls)]
        if self.calls_on_final:
            return [dumps(self._final(plan, "", calls)) + b"\n"]
        lines = [dumps({"model": plan.model, "created_at": _created_at(),
                        "message": {"role": "assistant", "content": "", "tool_calls": [call]},
                        "done": False}) + b"\n" for call in calls]
        return [*lines, dumps(self._final(plan, "")) + b"\n"]

    def stream_error(self, message: str | None, ctx: ChatContext) -> bytes:
        return dumps({"error": message or MODEL_ERROR}) + b"\n"

    def _error_body(self, status: int, message: str, extra: Mapping[str, str] | None = None) -> WireResponse:
        response = self.json_response(status, {"error": message})
        response.headers.update(extra or {})
        return response

    def error(self, err: Error, ctx: ChatContext | None) -> WireResponse:
        if err.body is not None:
            headers = {"Content-Type": self.json_content_type} | dict(err.headers or {})
            return WireResponse(err.status, err.body, headers)
        if err.message is not None:
            message = err.message
        elif err.status == 404:
            message = f"model '{ctx.model if ctx else ''}' not found"
        else:
            fallback = MODEL_ERROR if err.status >= 500 else _DEFAULT_ERRORS[400]
            message = _DEFAULT_ERRORS.get(err.status, fallback)
        return self._error_body(err.status, message, err.headers)

    def not_found(self, method: str, path: str) -> WireResponse:
        # Gin's default 404 page.
        return WireResponse(404, b"404 page not found", {"Content-Type": "text/plain"})

    # -- model endpoints --------------------------------------------------------------

    def _details(self, model: str) -> dict[str, Any]:
        arch = _architecture(model)
        return {
            "parent_model": "",
            "format": "gguf",
            "family": arch,
            "families": [arch],
            "parameter_size": _parameter_size(model),
            "quantization_level": "Q4_K_M",
        }

    def _root(self, request: RecordedRequest) -> WireResponse:
        return WireResponse(200, b"Ollama is running", {"Content-Type": "text/plain; charset=utf-8"})

    def _tags(self, request: RecordedRequest) -> WireResponse:
        entries = [
            {
                "name": _full_name(m),
                "model": _full_name(m),
                "modified_at": _MODIFIED_AT,
                "size": 2019393189,
                "digest": hashlib.sha256(m.encode()).hexdigest(),
                "details": self._details(m),
            }
            for m in self.models
        ]
        return self.json_response(200, {"models": entries})

    def _show(self, request: RecordedRequest) -> WireResponse:
        body = request.json if isinstance(request.json, dict) else {}
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            return self._error_body(400, "model is required")
        if not self.knows_model(model):
            return self._error_body(404, f"model '{model}' not found")
        arch = _architecture(model)
        payload = {
            "license": "",
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {_full_name(model)}\n',
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": self._details(model),
            "model_info": {
                "general.architecture": arch,
                "general.file_type": 15,
                "general.parameter_count": 3212749888,
                "general.quantization_version": 2,
                f"{arch}.block_count": 28,
                f"{arch}.context_length": self.context_length(model, 8192),
                f"{arch}.embedding_length": 3072,
            },
            "tensors": [],
            "capabilities": ["completion",
                             *(["tools"] if _full_name(model) not in self.no_tools else []),
                             *(["vision"] if _full_name(model) in VISION_MODELS else [])],
            "modified_at": _MODIFIED_AT,
        }
        return self.json_response(200, payload)

    def _ps(self, request: RecordedRequest) -> WireResponse:
        now = time.monotonic()
        entries = [{"name": name, "model": name, "size": 2019393189,
                    "digest": hashlib.sha256(name.encode()).hexdigest(), "details": self._details(name),
                    "expires_at": "2099-01-01T00:00:00Z", "size_vram": 0, "context_length": window}
                   for name, (ready_at, window) in self.running.items() if ready_at <= now]
        return self.json_response(200, {"models": entries})

    def _version(self, request: RecordedRequest) -> WireResponse:
        return self.json_response(200, {"version": "0.12.6"})

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/", self._root, auth=False),
            Route("GET", "/api/tags", self._tags, auth=False),
            Route("POST", "/api/show", self._show, auth=False),
            Route("GET", "/api/ps", self._ps, auth=False),
            Route("GET", "/api/version", self._version, auth=False),
        ]
