"""A fast fake OpenAI-compatible server for the benchmarks (raw asyncio, stdlib only).

    python bench/fakeserver.py [--port 0] [--chunks 50]

Prints ``http://127.0.0.1:PORT/v1`` as its first stdout line, then serves until stdin
closes or it gets SIGTERM. HTTP/1.1 with keep-alive (``Connection: close`` honoured),
requests framed by ``Content-Length`` (chunked request bodies are accepted too).

- ``POST /v1/chat/completions``: a ``chat.completion`` with ``usage`` (wire-reference
  §1.3); with ``"stream": true`` an SSE stream in OpenAI's exact wire format (§1.4/§1.5):
  a role chunk, ``--chunks`` content chunks (one word each), a finish chunk, the usage
  chunk (``choices: []``) when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``. Every event is its own write (chunked transfer encoding), so a client
  sees events arrive one by one as from a real server, not as one buffer.
- A model whose name ends in ``-slow`` streams with ``--slow-interval-ms`` (default 20 ms)
  between events: the benchmark uses it to hold hundreds of streams open at once.
- ``GET /v1/models``: a model list.
- ``GET /v1/bench/stats``: streams open now and the most open at once since the last
  look (then reset), the chat request count and the connections accepted: the benchmark checks how many of its
  "concurrent" streams really were open upstream at the same time.

Responses are built from pre-encoded byte templates: the server must never be the
bottleneck of what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

try:  # the project venv has orjson; any other venv falls back to the stdlib
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

_created = int(time.time())
_FINGERPRINT = "fp_fake000000"
_WORDS = ("The quick brown fox jumps over the lazy dog while the benchmark counts every "
          "chunk that goes by on its way to the host and back again ").split()


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _head(status: str, content_type: str, *, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{framing}\r\n"
            "openai-version: 2020-10-01\r\nx-request-id: req_fake\r\n\r\n").encode()


class Templates:
    """Pre-encoded bodies; ``%ID%`` and ``%MODEL%`` are the only per-request parts."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks,
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0,
                                               "rejected_prediction_tokens": 0}}
        text = "".join(self.word(i) for i in range(chunks))
        self.completion = _dumps({
            "id": "%ID%", "object": "chat.completion", "created": _created, "model": "%MODEL%",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage, "service_tier": "default", "system_fingerprint": _FINGERPRINT,
        })

        def event(choices: list[object], usage_value: object) -> bytes:
            payload = _dumps({"id": "%ID%", "object": "chat.completion.chunk", "created": _created,
                              "model": "%MODEL%", "service_tier": "default",
                              "system_fingerprint": _FINGERPRINT, "choices": choices, "usage": usage_value})
            return b"data: " + payload + b"\n\n"

        def choice(delta: object, finish: str | None = None) -> list[object]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        self.role_event = event(choice({"role": "assistant", "content": "", "refusal": None}), None)
        self.content_events = [event(choice({"content": self.word(i)}), None) for i in range(chunks)]
        self.finish_event = event(choice({}, "stop"), None)
        self.usage_event = event([], usage)
        self.done_event = b"data: [DONE]\n\n"
        self.models = _dumps({"object": "list", "data": [
            {"id": m, "object": "model", "created": _created, "owned_by": "fake"}
            for m in ("fake-model", "fake-model-b", "fake-slow")]})

    @staticmethod
    def word(i: int) -> str:
        return ("" if i == 0 else " ") + _WORDS[i % len(_WORDS)]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class FakeProtocol(asyncio.Protocol):
    templates: Templates
    slow_interval_s: float
    counter = 0
    open_streams = 0
    max_open_streams = 0
    connections = 0

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a stream is being written; later pipelined requests wait
        self.pending: list[tuple[bytes, bytes, bytes, bool]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        FakeProtocol.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            length = 0
            chunked = False
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            rest = self.buffer[end + 4:]
            if chunked:
                parsed = _dechunk(rest)
                if parsed is None:
                    return
                body, used = parsed
                self.buffer = rest[used:]
            else:
                if len(rest) < length:
                    return
                body, self.buffer = rest[:length], rest[length:]
            self.pending.append((method.encode(), path.encode(), body, close))
            self.pump()

    def pump(self) -> None:
        while self.pending and not self.busy and self.transport is not None:
            method, path, body, close = self.pending.pop(0)
            self.handle(method, path, body, close)

    def handle(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        t = self.templates
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            try:
                request = _loads(body)
            except ValueError:
                self.reply(b"400 Bad Request", b'{"error":{"message":"bad json","type":"invalid_request_error"}}',
                           close)
                return
            FakeProtocol.counter += 1
            rid = b"chatcmpl-fake%012d" % FakeProtocol.counter
            model = str(request.get("model") or "fake-model").encode()
            if request.get("stream"):
                opts = request.get("stream_options") or {}
                self.busy = True
                asyncio.get_running_loop().create_task(
                    self.stream(rid, model, bool(opts.get("include_usage")), close))
                return
            payload = t.completion.replace(b"%ID%", rid, 1).replace(b"%MODEL%", model, 1)
            self.reply(b"200 OK", payload, close)
        elif method == b"GET" and path.endswith(b"/models"):
            self.reply(b"200 OK", t.models, close)
        elif method == b"GET" and path.endswith(b"/bench/stats"):
            # For the benchmark: how many streams were open at once since the last look.
            stats = {"openStreams": FakeProtocol.open_streams, "maxOpenStreams": FakeProtocol.max_open_streams,
                     "requests": FakeProtocol.counter, "connections": FakeProtocol.connections}
            FakeProtocol.max_open_streams = FakeProtocol.open_streams
            self.reply(b"200 OK", _dumps(stats), close)
        else:
            self.reply(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}',
                       close)

    def reply(self, status: bytes, payload: bytes, close: bool) -> None:
        assert self.transport is not None
        head = (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(payload)).encode() + b"\r\nopenai-version: 2020-10-01\r\n"
                + (b"connection: close\r\n" if close else b"") + b"\r\n")
        self.transport.write(head + payload)
        if close:
            self.transport.close()

    async def stream(self, rid: bytes, model: bytes, usage: bool, close: bool) -> None:
        t = self.templates
        slow = model.endswith(b"-slow")
        interval = self.slow_interval_s if slow else 0.0

        def fill(event: bytes) -> bytes:
            return _chunk(event.replace(b"%ID%", rid, 1).replace(b"%MODEL%", model, 1))

        FakeProtocol.open_streams += 1
        FakeProtocol.max_open_streams = max(FakeProtocol.max_open_streams, FakeProtocol.open_streams)
        try:
            head = _head("200 OK", "text/event-stream; charset=utf-8", length=None)
            if close:
                head = head[:-2] + b"connection: close\r\n\r\n"
            transport = self.transport
            if transport is None:
                return
            transport.write(head + fill(t.role_event))
            events = [*t.content_events, t.finish_event, *((t.usage_event,) if usage else ())]
            for event in events:
                # Yield between events: every event is its own write, and concurrent
                # streams interleave as they would from a real server.
                await asyncio.sleep(interval)
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                transport.write(fill(event))
            transport.write(_chunk(t.done_event) + b"0\r\n\r\n")
            if close:
                transport.close()
        finally:
            FakeProtocol.open_streams -= 1
            self.busy = False
            self.pump()


def _dechunk(data: bytes) -> tuple[bytes, int] | None:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";", 1)[0], 16)
        start = eol + 2
        if size == 0:
            trailer_end = data.find(b"\r\n", start)
            if trailer_end < 0:
                return None
            return bytes(out), trailer_end + 2
        if len(data) < start + size + 2:
            return None
        out += data[start:start + size]
        pos = start + size + 2


async def serve(port: int, chunks: int, slow_interval_ms: float) -> None:
    FakeProtocol.templates = Templates(chunks)
    FakeProtocol.slow_interval_s = slow_interval_ms / 1000
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeProtocol, "127.0.0.1", port, backlog=2048)
    sock = server.sockets[0]
    sys.stdout.write(f"http://127.0.0.1:{sock.getsockname()[1]}/v1\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def watch_stdin() -> None:  # the parent died or closed our stdin: leave
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    if not os.environ.get("FAKESERVER_NO_STDIN"):
        threading.Thread(target=watch_stdin, daemon=True).start()
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=50, help="content chunks per stream")
    parser.add_argument("--slow-interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.chunks, args.slow_interval_ms))


if __name__ == "__main__":
    main()
