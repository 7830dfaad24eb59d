"""JSON-RPC 2.0 dispatch: envelope checks, the in-flight table, cancellation, and the one
place where an exception becomes a wire error.

Each request runs in its own task, so requests are served concurrently and
``$/cancelRequest`` can cancel exactly one of them; cancelling the task closes its
upstream HTTP stream. Every request id gets exactly one response: a duplicate of an id
still in flight is refused with ``id: null`` (answering it under its own id would give
that id two responses).

:meth:`Dispatcher.handle_line` never waits: the stdin loop calls it, and a loop that
waited for room in the output queue could not see a shutdown signal while the host is
not reading. An error it answers at once is queued without waiting (``post``); when the
queue is full it is held in :attr:`Dispatcher.held`, and the loop decides how long to
wait for room (:meth:`Dispatcher.flush_held`). Request tasks send with ``send``, which
waits, so a stream is slowed down by a slow host instead of filling memory.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import deque
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
from sidecar.transport.decode import MAX_DEPTH, Decoded, decode_line, pointer
from sidecar.transport.stdio import Oversized
from sidecar.wire.errors import validation_errors
from sidecar.wire.methods import RequestId

__all__ = ["Channel", "Dispatcher", "RequestContext", "RequestId"]

log = structlog.get_logger("sidecar.dispatch")

Send = Callable[[dict[str, Any]], Awaitable[None]]
#: Queue a message without waiting; False when the output queue is full.
Post = Callable[[dict[str, Any]], bool]

CANCEL_METHOD = "$/cancelRequest"
_JS_SAFE_INT = 2**53 - 1


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    request_id: RequestId
    method: str
    send: Send
    #: What a failure of this request adds to its error's ``data`` (a handler sets it;
    #: a stream adds the text it already sent as ``partialContent``).
    error_data: Callable[[], dict[str, Any]] | None = None
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
    post: Post
    accepting: bool = True
    inflight: dict[RequestId, _InFlight] = field(default_factory=dict)
    #: Every request task not yet finished, answered or not (shutdown waits for them).
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: Answers from the read path that did not fit in the output queue, in order.
    held: deque[dict[str, Any]] = field(default_factory=deque)

    def handle_line(self, item: bytes | Oversized) -> None:
        """Handle one inbound line (or the marker of a discarded oversized one); never waits."""
        if isinstance(item, Oversized):
            self._reply_error(None, MessageTooLarge(f"message of {item.size} bytes exceeds the limit"))
            return
        line = item.rstrip(b"\r")
        if not line.strip():
            return
        try:
            decoded = decode_line(line)
        except orjson.JSONDecodeError as exc:
            self._reply_error(None, ParseError(f"line is not valid JSON: {exc}"))
            return
        try:
            self.handle_message(decoded.message, decoded)
        except Exception as exc:  # a bug here must not end the stdin loop, and so the process
            log.error("internal_error", stage="envelope", error=repr(exc), traceback=traceback.format_exc())
            self._reply_error(None, InternalError(f"internal error: {type(exc).__name__}"))

    def handle_message(self, message: Any, decoded: Decoded | None = None) -> None:
        if isinstance(message, list):
            self._reply_error(None, InvalidRequest("batches are not supported"))
            return
        if not isinstance(message, dict):
            self._reply_error(None, InvalidRequest("a message must be a JSON object"))
            return
        shape = decoded or Decoded(message)
        envelope_twice = sorted({str(path[0]) for path in shape.duplicates if len(path) == 1})
        has_id = "id" in message
        msg_id = message.get("id")
        id_ok = _valid_id(msg_id) and "id" not in envelope_twice
        reply_id = msg_id if has_id and id_ok else None
        if reply_id is not None and reply_id in self.inflight:
            # Whatever else is wrong with it, a message reusing an in-flight id is never
            # answered under that id: the request in flight owns it.
            self._reply_error(
                None, InvalidRequest(f"id {msg_id!r} is already in flight", extra={"id": msg_id})
            )
            return
        if envelope_twice:
            # Which of two ids, methods or params did the host mean? Refuse to guess; an
            # id given twice makes the answer's id null. Without an id it is a
            # notification: never answered, and not acted on either.
            if has_id:
                keys = ", ".join(f'"{key}"' for key in envelope_twice)
                self._reply_error(reply_id, InvalidRequest(f"duplicate key {keys} in the message"))
            return
        deep = shape.too_deep
        if deep is not None and deep[:1] != ("params",):
            # Too deep outside params: its duplicate keys could not be looked for either.
            if has_id:
                self._reply_error(reply_id, InvalidRequest(
                    f"message nested deeper than {MAX_DEPTH} levels at {pointer(deep) or '/'}"))
            return
        if message.get("jsonrpc") != "2.0":
            self._reply_error(reply_id, InvalidRequest('"jsonrpc" must be "2.0"'))
            return
        method = message.get("method")
        if not isinstance(method, str) or not method:
            self._reply_error(reply_id, InvalidRequest('"method" must be a non-empty string'))
            return
        if has_id and not id_ok:
            self._reply_error(None, InvalidRequest('"id" must be a string or an integer'))
            return
        self._dispatch(msg_id if has_id else None, has_id, method, message.get("params", {}), shape)

    def _dispatch(self, msg_id: RequestId | None, has_id: bool, method: str, params: Any, shape: Decoded) -> None:
        problem = _params_problem(shape)
        if not has_id:
            if problem is None:  # an ambiguous cancel is not acted on
                self._notification(method, params)
            return
        assert msg_id is not None
        if not isinstance(params, dict):
            self._reply_error(msg_id, InvalidParams('"params" must be an object', errors=[
                {"path": "", "message": "params must be an object"}
            ]))
            return
        channel = self.channels.get(method)
        if channel is None:
            self._reply_error(msg_id, MethodNotFound(f"unknown method {method!r}"))
            return
        if problem is not None:
            self._reply_error(msg_id, problem)
            return
        if not self.accepting:
            self._reply_error(msg_id, RequestCancelled("the sidecar is shutting down"))
            return
        ctx = RequestContext(request_id=msg_id, method=method, send=self.send)
        task = asyncio.get_running_loop().create_task(
            self._run(channel, params, ctx), name=f"request-{method}-{msg_id}"
        )
        self.inflight[msg_id] = _InFlight(task, ctx)
        self._track(task)
        task.add_done_callback(lambda _t: self._ensure_answered(ctx))

    async def flush_held(self) -> None:
        """Send the held answers, waiting for room in the output queue."""
        while self.held:
            await self.send(self.held[0])
            self.held.popleft()

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

    def _notification(self, method: str, params: Any) -> None:
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
            await self._send_error(ctx.request_id, InternalError("internal error: the result could not be encoded"))

    async def _finish_error(self, ctx: RequestContext, exc: SidecarError) -> None:
        if ctx.answered:
            return
        ctx.answered = True
        self.inflight.pop(ctx.request_id, None)
        if ctx.error_data is not None:
            for key, value in ctx.error_data().items():
                exc.extra.setdefault(key, value)
        await self._send_error(ctx.request_id, exc)

    async def _send_error(self, request_id: RequestId | None, exc: SidecarError) -> None:
        await self.send(_error_message(request_id, exc))

    def _reply_error(self, request_id: RequestId | None, exc: SidecarError) -> None:
        message = _error_message(request_id, exc)
        if self.held or not self.post(message):
            self.held.append(message)


def _error_message(request_id: RequestId | None, exc: SidecarError) -> dict[str, Any]:
    error = {"code": exc.code, "message": exc.message, "data": exc.to_data()}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _params_problem(shape: Decoded) -> InvalidParams | None:
    """Duplicate keys or too deep a nesting inside ``params`` (paths relative to it)."""
    inside = [path[1:] for path in shape.duplicates if len(path) > 1 and path[0] == "params"]
    if inside:
        return InvalidParams("duplicate keys in params", errors=[
            {"path": pointer(path), "message": "duplicate key"} for path in inside
        ])
    deep = shape.too_deep
    if deep is not None and deep[:1] == ("params",):
        return InvalidParams(f"params nested deeper than {MAX_DEPTH} levels", errors=[
            {"path": pointer(deep[1:]), "message": f"nesting deeper than {MAX_DEPTH} levels"}
        ])
    return None


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_JS_SAFE_INT <= value <= _JS_SAFE_INT
    return isinstance(value, str)
