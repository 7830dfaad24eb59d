"""JSON-RPC 2.0 dispatch: envelope checks, the in-flight table, cancellation, and the one
place where an exception becomes a wire error.

Each request runs in its own task, so requests are served concurrently and
``$/cancelRequest`` can cancel exactly one of them; cancelling the task closes its
upstream HTTP stream. Every request id gets exactly one response: a duplicate of an id
still in flight is refused with ``id: null`` (answering it under its own id would give
that id two responses).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
import structlog

from sidecar.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MessageTooLarge,
    MethodNotFound,
    ParseError,
    RequestCancelled,
    SidecarError,
)
from sidecar.transport.stdio import Oversized

__all__ = ["Channel", "Dispatcher", "RequestContext", "validation_errors"]

log = structlog.get_logger("sidecar.dispatch")

RequestId = int | str
Send = Callable[[dict[str, Any]], Awaitable[None]]

CANCEL_METHOD = "$/cancelRequest"
_JS_SAFE_INT = 2**53 - 1
_FORMAT_TAGS = {"json_schema", "json", "xml"}


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    request_id: RequestId
    method: str
    send: Send
    #: Text already streamed to the host; sent as ``data.partialContent`` on failure.
    partial: list[str] | None = None
    #: Why the request was cancelled ("host" or "shutdown"), when it was.
    cancel_reason: str | None = None
    #: Set once the response went to the writer: never a second one.
    answered: bool = False

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})


Handler = Callable[[Any, RequestContext], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Channel:
    """One method: its params model and its handler."""

    name: str
    params: type[pydantic.BaseModel]
    handler: Handler


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[None]
    ctx: RequestContext


@dataclass(slots=True)
class Dispatcher:
    """Turns inbound lines into handler calls and handler outcomes into responses."""

    channels: Mapping[str, Channel]
    send: Send
    accepting: bool = True
    inflight: dict[RequestId, _InFlight] = field(default_factory=dict)
    #: Every request task not yet finished, answered or not (shutdown waits for them).
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle_line(self, item: bytes | Oversized) -> None:
        """Handle one inbound line (or the marker of a discarded oversized one)."""
        if isinstance(item, Oversized):
            await self._error(None, MessageTooLarge(f"message of {item.size} bytes exceeds the limit"))
            return
        line = item.rstrip(b"\r")
        if not line.strip():
            return
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            await self._error(None, ParseError(f"line is not valid JSON: {exc}"))
            return
        await self.handle_message(message)

    async def handle_message(self, message: Any) -> None:
        if isinstance(message, list):
            await self._error(None, InvalidRequest("batches are not supported"))
            return
        if not isinstance(message, dict):
            await self._error(None, InvalidRequest("a message must be a JSON object"))
            return
        has_id = "id" in message
        msg_id = message.get("id")
        id_ok = _valid_id(msg_id)
        reply_id = msg_id if has_id and id_ok else None
        if reply_id is not None and reply_id in self.inflight:
            # Whatever else is wrong with it, a message reusing an in-flight id is never
            # answered under that id: the request in flight owns it.
            await self._error(
                None, InvalidRequest(f"id {msg_id!r} is already in flight", extra={"id": msg_id})
            )
            return
        if message.get("jsonrpc") != "2.0":
            await self._error(reply_id, InvalidRequest('"jsonrpc" must be "2.0"'))
            return
        method = message.get("method")
        if not isinstance(method, str) or not method:
            await self._error(reply_id, InvalidRequest('"method" must be a non-empty string'))
            return
        if has_id and not id_ok:
            await self._error(None, InvalidRequest('"id" must be a string or an integer'))
            return
        params = message.get("params", {})
        if not has_id:
            await self._notification(method, params)
            return
        assert msg_id is not None
        if not isinstance(params, dict):
            await self._error(msg_id, InvalidParams('"params" must be an object', errors=[
                {"path": "", "message": "params must be an object"}
            ]))
            return
        channel = self.channels.get(method)
        if channel is None:
            await self._error(msg_id, MethodNotFound(f"unknown method {method!r}"))
            return
        if not self.accepting:
            await self._error(msg_id, RequestCancelled("the sidecar is shutting down"))
            return
        ctx = RequestContext(request_id=msg_id, method=method, send=self.send)
        task = asyncio.get_running_loop().create_task(
            self._run(channel, params, ctx), name=f"request-{method}-{msg_id}"
        )
        self.inflight[msg_id] = _InFlight(task, ctx)
        self._track(task)
        task.add_done_callback(lambda _t: self._ensure_answered(ctx))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _ensure_answered(self, ctx: RequestContext) -> None:
        # A task cancelled before its first step never runs _run's handlers: answer it
        # here, so every request still gets exactly one response.
        if not ctx.answered:
            self._track(asyncio.get_running_loop().create_task(
                self._finish_error(ctx, RequestCancelled("request cancelled before it started"))
            ))

    async def _notification(self, method: str, params: Any) -> None:
        if method == CANCEL_METHOD:
            if isinstance(params, dict) and _valid_id(params.get("id")):
                self.cancel(params["id"], reason="host")
            return
        # JSON-RPC: notifications are never answered, not even when unknown.
        log.debug("notification_ignored", method=method)

    def cancel(self, request_id: RequestId, *, reason: str) -> bool:
        """Cancel one in-flight request; unknown or finished ids do nothing."""
        entry = self.inflight.get(request_id)
        if entry is None or entry.task.done():
            return False
        if entry.ctx.cancel_reason is None:
            entry.ctx.cancel_reason = reason
        entry.task.cancel()
        return True

    async def cancel_all(self, *, reason: str, timeout: float, keep: RequestId | None = None) -> None:
        """Cancel every in-flight request (but ``keep``) and wait for their answers."""
        tasks = []
        for request_id, entry in list(self.inflight.items()):
            if request_id == keep:
                continue
            self.cancel(request_id, reason=reason)
            tasks.append(entry.task)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def wait_idle(self, timeout: float) -> None:
        """Wait until every request task has sent its answer (bounded by ``timeout``)."""
        current = asyncio.current_task()
        pending = [t for t in self.tasks if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _run(self, channel: Channel, params: dict[str, Any], ctx: RequestContext) -> None:
        try:
            try:
                parsed = channel.params.model_validate(params)
            except pydantic.ValidationError as exc:
                raise InvalidParams(
                    f"invalid params for {channel.name}", errors=validation_errors(exc)
                ) from exc
            result = await channel.handler(parsed, ctx)
        except asyncio.CancelledError:
            if ctx.cancel_reason is None:
                raise  # not ours: the loop itself is going away
            reason = "by the host" if ctx.cancel_reason == "host" else "because the sidecar is shutting down"
            await self._finish_error(ctx, RequestCancelled(f"request cancelled {reason}"))
            return
        except SidecarError as exc:
            await self._finish_error(ctx, exc)
            return
        except Exception as exc:  # the one catch-all: a bug must not kill the process
            log.error(
                "internal_error",
                method=ctx.method,
                request_id=ctx.request_id,
                error=repr(exc),
                traceback=traceback.format_exc(),
            )
            await self._finish_error(ctx, InternalError(f"internal error: {type(exc).__name__}"))
            return
        payload = result.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(
            result, pydantic.BaseModel
        ) else result
        self.inflight.pop(ctx.request_id, None)
        ctx.answered = True
        try:
            await self.send({"jsonrpc": "2.0", "id": ctx.request_id, "result": payload})
        except TypeError as exc:  # orjson could not encode the result: still answer once
            log.error("result_not_encodable", method=ctx.method, request_id=ctx.request_id, error=repr(exc))
            await self._error(ctx.request_id, InternalError("internal error: the result could not be encoded"))

    async def _finish_error(self, ctx: RequestContext, exc: SidecarError) -> None:
        if ctx.answered:
            return
        ctx.answered = True
        self.inflight.pop(ctx.request_id, None)
        if ctx.partial is not None and "partialContent" not in exc.extra:
            exc.extra["partialContent"] = "".join(ctx.partial)
        await self._error(ctx.request_id, exc)

    async def _error(self, request_id: RequestId | None, exc: SidecarError) -> None:
        error = {"code": exc.code, "message": exc.message, "data": exc.to_data()}
        await self.send({"jsonrpc": "2.0", "id": request_id, "error": error})


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_JS_SAFE_INT <= value <= _JS_SAFE_INT
    return isinstance(value, str)


def validation_errors(exc: pydantic.ValidationError) -> list[dict[str, str]]:
    """pydantic errors as ``{path, message}`` with JSON-pointer paths over wire names."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = list(err["loc"])
        # A tagged union adds its tag as a path segment (responseFormat/json_schema/...):
        # drop it, it is not a field the host wrote.
        for i in range(len(loc) - 1, 0, -1):
            if loc[i - 1] == "responseFormat" and loc[i] in _FORMAT_TAGS:
                del loc[i]
        parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
        path = "/" + "/".join(parts) if parts else ""
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"path": path, "message": message})
    return out
