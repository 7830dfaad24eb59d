"""Executes one behaviour against one chat request on the server's event loop.

`Playback` owns the response side of a request: it writes complete responses,
streams frames with the scripted delays, and implements the faults (hanging,
aborting the TCP connection mid-body, dripping bytes). It marks the request's
`RecordedRequest.completed` when the last byte was handed to the socket and
tells the server (through `RequestState.server_aborted`) when a broken
connection was its own doing rather than the client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import assert_never

from aiohttp import web

from .behaviours import (
    Behaviour,
    CutStream,
    Cycle,
    Drip,
    Error,
    Flood,
    Hang,
    Malformed,
    MidStreamError,
    Raw,
    Reply,
)
from .recording import RecordedRequest
from .wire import ChatContext, Plan, Renderer, WireResponse, split_pieces

__all__ = ["STATE_KEY", "Playback", "RequestState"]


@dataclass
class RequestState:
    """Per-request bookkeeping shared between the middleware and `Playback`."""

    record: RecordedRequest
    server_aborted: bool = False


STATE_KEY = web.RequestKey("fake_request_state", RequestState)
# How long a cut waits for already-written bytes to leave the socket buffer before aborting.
_DRAIN_LIMIT_S = 2.0
_DRAIN_POLL_S = 0.005


class Playback:
    """Writes the response for one request."""

    def __init__(self, request: web.Request, renderer: Renderer) -> None:
        self.request = request
        self.renderer = renderer
        self.state = request[STATE_KEY]

    # -- primitives -------------------------------------------------------------------

    async def send(self, wire: WireResponse) -> web.StreamResponse:
        """Write a complete response (status, headers, body) and mark it completed."""
        response = web.Response(status=wire.status, body=wire.body, headers=wire.headers)
        await response.prepare(self.request)
        await response.write_eof()
        self.state.record.completed.set()
        return response

    async def open(self, headers: dict[str, str], content_length: int | None = None) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=headers)
        if content_length is None:
            response.enable_chunked_encoding()
        else:
            response.content_length = content_length
        await response.prepare(self.request)
        return response

    async def finish(self, response: web.StreamResponse) -> web.StreamResponse:
        await response.write_eof()
        self.state.record.completed.set()
        return response

    async def abort(self, response: web.StreamResponse) -> web.StreamResponse:
        """Drop the TCP connection without finishing the body (no terminating chunk)."""
        transport = self.request.transport
        self.state.server_aborted = True
        if transport is not None:
            # abort() discards unsent bytes; let what was written reach the client first.
            for _ in range(int(_DRAIN_LIMIT_S / _DRAIN_POLL_S)):
                if not transport.get_write_buffer_size():
                    break
                await asyncio.sleep(_DRAIN_POLL_S)
            transport.abort()
        return response

    def stream_headers(self, plan: Plan) -> dict[str, str]:
        headers = self.renderer.base_headers(200)
        headers["Content-Type"] = self.renderer.stream_content_type
        headers.update(self.renderer.stream_extra_headers)
        headers.update(plan.extra_headers)
        return headers

    def json_headers(self, plan: Plan) -> dict[str, str]:
        headers = self.renderer.base_headers(200)
        headers["Content-Type"] = self.renderer.json_content_type
        headers.update(plan.extra_headers)
        return headers

    async def write_all(self, response: web.StreamResponse, frames: Iterable[bytes]) -> None:
        for frame in frames:
            await response.write(frame)

    # -- behaviours ---------------------------------------------------------------------

    async def run(self, behaviour: Behaviour, ctx: ChatContext) -> web.StreamResponse:
        match behaviour:
            case Reply():
                return await self._reply(behaviour, ctx)
            case Error():
                return await self.send(self.renderer.error(behaviour, ctx))
            case Raw():
                headers = {"Content-Type": behaviour.content_type, **(behaviour.headers or {})}
                return await self.send(WireResponse(behaviour.status, behaviour.body, headers))
            case Hang():
                # Ends by cancellation: client disconnect or server shutdown.
                await asyncio.get_running_loop().create_future()
                raise AssertionError("unreachable")
            case CutStream():
                return await self._cut(behaviour, ctx)
            case Drip():
                return await self._drip(behaviour, ctx)
            case MidStreamError():
                return await self._mid_stream_error(behaviour, ctx)
            case Malformed():
                return await self._malformed(behaviour, ctx)
            case Flood():
                return await self._flood(behaviour, ctx)
            case Cycle():  # the server resolves a Cycle to one of its behaviours first
                raise TypeError("a Cycle must be resolved before playback")
            case _:
                assert_never(behaviour)

    def _plan(self, text: str, at_least: int, ctx: ChatContext) -> Plan:
        return self.renderer.plan(Reply(text=text, chunks=split_pieces(text, at_least=at_least)), ctx)

    async def _reply(self, reply: Reply, ctx: ChatContext) -> web.StreamResponse:
        plan = self.renderer.plan(reply, ctx)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)
        if not ctx.stream:
            return await self.send(
                WireResponse(200, self.renderer.render_json(plan, ctx), self.json_headers(plan))
            )
        response = await self.open(self.stream_headers(plan))
        await self.write_all(response, self.renderer.stream_head(plan, ctx))
        for index, piece in enumerate(plan.pieces):
            if reply.chunk_delay_s > 0:
                await asyncio.sleep(reply.chunk_delay_s)
            await response.write(self.renderer.stream_piece(plan, ctx, index, piece))
        await self.write_all(response, self.renderer.stream_tail(plan, ctx))
        return await self.finish(response)

    async def _cut(self, cut: CutStream, ctx: ChatContext) -> web.StreamResponse:
        plan = self._plan(cut.text, cut.after_chunks, ctx)
        if not ctx.stream:
            body = self.renderer.render_json(plan, ctx)
            response = await self.open(self.json_headers(plan), content_length=len(body))
            await response.write(body[: len(body) // 2])
            return await self.abort(response)
        response = await self.open(self.stream_headers(plan))
        await self.write_all(response, self.renderer.stream_head(plan, ctx))
        for index, piece in enumerate(plan.pieces[: cut.after_chunks]):
            await response.write(self.renderer.stream_piece(plan, ctx, index, piece))
        return await self.abort(response)

    async def _drip(self, drip: Drip, ctx: ChatContext) -> web.StreamResponse:
        plan = self.renderer.plan(Reply(text=drip.text), ctx)
        if ctx.stream:
            frames = [
                *self.renderer.stream_head(plan, ctx),
                *(self.renderer.stream_piece(plan, ctx, i, p) for i, p in enumerate(plan.pieces)),
                *self.renderer.stream_tail(plan, ctx),
            ]
            body = b"".join(frames)
            response = await self.open(self.stream_headers(plan))
        else:
            body = self.renderer.render_json(plan, ctx)
            response = await self.open(self.json_headers(plan), content_length=len(body))
        step = max(1, drip.chunk_size)
        for offset in range(0, len(body), step):
            await asyncio.sleep(drip.interval_s)
            await response.write(body[offset : offset + step])
        return await self.finish(response)

    async def _mid_stream_error(self, fault: MidStreamError, ctx: ChatContext) -> web.StreamResponse:
        if not ctx.stream:
            return await self.send(self.renderer.midstream_error_response(fault.message, ctx))
        plan = self._plan(fault.text, fault.after_chunks, ctx)
        response = await self.open(self.stream_headers(plan))
        await self.write_all(response, self.renderer.stream_head(plan, ctx))
        for index, piece in enumerate(plan.pieces[: fault.after_chunks]):
            await response.write(self.renderer.stream_piece(plan, ctx, index, piece))
        await response.write(self.renderer.stream_error(fault.message, ctx))
        return await self.finish(response)

    async def _malformed(self, fault: Malformed, ctx: ChatContext) -> web.StreamResponse:
        plan = self._plan(fault.text, fault.after_chunks, ctx)
        if not ctx.stream:
            return await self.send(WireResponse(200, b"{not json", self.json_headers(plan)))
        response = await self.open(self.stream_headers(plan))
        await self.write_all(response, self.renderer.stream_head(plan, ctx))
        for index, piece in enumerate(plan.pieces):
            if index == fault.after_chunks:
                await response.write(self.renderer.garbage_frame)
            await response.write(self.renderer.stream_piece(plan, ctx, index, piece))
        if fault.after_chunks >= len(plan.pieces):
            await response.write(self.renderer.garbage_frame)
        await self.write_all(response, self.renderer.stream_tail(plan, ctx))
        return await self.finish(response)

    async def _flood(self, flood: Flood, ctx: ChatContext) -> web.StreamResponse:
        # Render a normal answer around a marker, then write the fill where the marker is.
        marker = "FLOOD-MARKER-5f0c"
        plan = self.renderer.plan(Reply(text=marker, chunks=[marker]), ctx)
        if ctx.stream:
            frames = [*self.renderer.stream_head(plan, ctx), self.renderer.stream_piece(plan, ctx, 0, marker),
                      *self.renderer.stream_tail(plan, ctx)]
            response = await self.open(self.stream_headers(plan))
        else:
            frames = [self.renderer.render_json(plan, ctx)]
            response = await self.open(self.json_headers(plan))
        body = b"".join(frames)
        at = body.index(marker.encode())
        await response.write(body[:at])
        block = (flood.fill * (flood.chunk_size // max(1, len(flood.fill)) + 1))[: flood.chunk_size]
        sent = 0
        while flood.total_bytes is None or sent < flood.total_bytes:
            if flood.interval_s > 0:
                await asyncio.sleep(flood.interval_s)
            piece = block if flood.total_bytes is None else block[: flood.total_bytes - sent]
            await response.write(piece)
            sent += len(piece)
        await response.write(body[at + len(marker):])
        return await self.finish(response)
