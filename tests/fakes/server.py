"""`FakeServer`: a real HTTP server on 127.0.0.1 speaking one provider's wire protocol.

Each server runs aiohttp on its own event loop in a daemon thread, so it can be
used from synchronous tests, from async tests (whose loop it never touches) and
by a sidecar subprocess pointed at `base_url`. Every request is recorded; chat
requests are answered from a FIFO script of behaviours (`enqueue`) and fall back
to a default behaviour. Handler cancellation is on, so a client that goes away
cancels the handler at once and `RecordedRequest.disconnected` is set.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar, get_args

from aiohttp import web

from .behaviours import Behaviour, Cycle, Reply
from .playback import STATE_KEY, Playback, RequestState
from .recording import RecordedRequest, RequestLog
from .render_anthropic import AnthropicRenderer
from .render_llamacpp import LlamaCppRenderer
from .render_ollama import OllamaRenderer
from .render_openai import OpenAIRenderer
from .wire import Renderer, Route, WireResponse

__all__ = ["DEFAULT_MODELS", "KINDS", "FakeServer", "refusing_port", "self_signed_context"]

_T = TypeVar("_T")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RENDERERS: dict[str, type[Renderer]] = {
    "openai": OpenAIRenderer,
    "anthropic": AnthropicRenderer,
    "ollama": OllamaRenderer,
    "llamacpp": LlamaCppRenderer,
}
KINDS = tuple(RENDERERS)
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o-mini", "gpt-4o"),
    "anthropic": ("claude-3-5-haiku-20241022", "claude-sonnet-4-20250514"),
    "ollama": ("llama3.2:latest", "qwen2.5-coder:7b"),
    "llamacpp": ("SmolLM2-135M-Instruct.Q4_1.gguf",),
}
# Paths under which base_url ends in /v1 (the OpenAI-style SDK convention).
_V1_KINDS = frozenset({"openai", "llamacpp"})
_BEHAVIOUR_TYPES = get_args(Behaviour)
_START_TIMEOUT_S = 10.0


class FakeServer:
    """A loopback HTTP server that imitates one LLM provider.

    Args:
        kind: ``"openai" | "anthropic" | "ollama" | "llamacpp"``.
        api_key: when set, chat and model endpoints require it (header per provider).
        models: model ids for the listing endpoints; per-kind defaults otherwise.
        strict_models: answer the provider's 404 for chat requests naming an unknown model.
        context_lengths: per-model context window reported by Ollama ``/api/show``,
            llama.cpp ``/v1/models`` / ``/props`` and Anthropic ``max_input_tokens``.
        port: fixed port, or 0 for a free one.
        tls: serve HTTPS with this server-side context (see `self_signed_context`);
            ``base_url`` then starts with ``https://``.
    """

    def __init__(
        self,
        kind: str,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        *,
        strict_models: bool = False,
        context_lengths: Mapping[str, int] | None = None,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if kind not in RENDERERS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.api_key = api_key
        self.models = list(models) if models is not None else list(DEFAULT_MODELS[kind])
        self.strict_models = strict_models
        self._renderer = RENDERERS[kind](
            models=self.models, api_key=api_key, context_lengths=context_lengths or {}
        )
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._default: Behaviour = Reply()
        self._chat_log = RequestLog()
        self._all_log = RequestLog()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._tls = tls
        self._cycles: dict[int, int] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeServer:
        """Bind 127.0.0.1, start serving in a background thread, and return self."""
        if self._thread is not None:
            raise RuntimeError("FakeServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, started), name=f"fake-{self.kind}-{self._port}", daemon=True
        )
        self._thread.start()
        started.result(timeout=_START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        """Abort open connections (hanging handlers included) and stop the server thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._stopping:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout=_START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_START_TIMEOUT_S)

    def __enter__(self) -> FakeServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeServer not started")
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (no path; ``https`` when serving TLS)."""
        return f"{'https' if self._tls is not None else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What a client is configured with: ``…/v1`` for openai and llamacpp, the origin otherwise."""
        return self.origin + "/v1" if self.kind in _V1_KINDS else self.origin

    @property
    def chat_url(self) -> str:
        return self.origin + self._renderer.chat_path

    @property
    def renderer(self) -> Renderer:
        """The wire renderer: its knobs (Ollama's ``load_s``, ``running``) may be set from tests."""
        return self._renderer

    def url(self, path: str) -> str:
        """Absolute URL for a path on this server (``path`` starts with ``/``)."""
        return self.origin + path

    # -- scripting and recordings ---------------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Script the next chat requests, first in first out."""
        for behaviour in behaviours:
            if not isinstance(behaviour, _BEHAVIOUR_TYPES):
                raise TypeError(f"not a behaviour: {behaviour!r}")
        with self._lock:
            self._queue.extend(behaviours)

    def set_default(self, behaviour: Behaviour) -> None:
        """Behaviour for chat requests when the script is empty (initially ``Reply()``)."""
        if not isinstance(behaviour, _BEHAVIOUR_TYPES):
            raise TypeError(f"not a behaviour: {behaviour!r}")
        with self._lock:
            self._default = behaviour

    @property
    def pending(self) -> int:
        """Number of scripted behaviours not used yet."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat-endpoint requests in arrival order (a snapshot)."""
        return self._chat_log.snapshot()

    @property
    def all_requests(self) -> list[RecordedRequest]:
        """Every request, model listings and health checks included (a snapshot)."""
        return self._all_log.snapshot()

    @property
    def served(self) -> list[RecordedRequest]:
        """Chat requests answered with a `Reply` whose last byte was written (a snapshot).

        These are the calls a provider would bill: the answer, with its usage, left the
        server whole. Faults, errors and replies cut by a client disconnect are not served.
        """
        return [r for r in self.requests if isinstance(r.behaviour, Reply) and r.completed.is_set()]

    def reset(self) -> None:
        """Clear the script and the recordings; the default goes back to ``Reply()``."""
        with self._lock:
            self._queue.clear()
            self._default = Reply()
            self._cycles.clear()
        self._chat_log.clear()
        self._all_log.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` chat requests arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while len(found := self.requests) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(found)} of {count} chat requests arrived within {timeout}s")
            time.sleep(0.005)
        return found

    @property
    def open_connections(self) -> int:
        """Client TCP connections currently open on this server."""
        runner = self._runner
        if runner is None or runner.server is None:
            return 0
        server = runner.server
        return self._call(lambda: len(server.connections))

    def wait_for_connections(self, count: int = 0, timeout: float = 5.0) -> bool:
        """Poll until ``open_connections == count``; closing is noticed asynchronously."""
        deadline = time.monotonic() + timeout
        while self.open_connections != count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- event-loop side --------------------------------------------------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()

        async def run() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=_START_TIMEOUT_S)

    def _serve(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup(sock))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        self._loop = loop
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self, sock: socket.socket) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_post(self._renderer.chat_path, self._chat)
        for route in self._renderer.routes():
            if route.method == "GET":  # also answers HEAD, like the real servers
                app.router.add_get(route.path, self._route_handler(route))
            else:
                app.router.add_route(route.method, route.path, self._route_handler(route))
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self._tls).start()

    async def _shutdown(self) -> None:
        self._stopping = True
        runner = self._runner
        if runner is None:
            return
        if runner.server is not None:
            for handler in runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        await asyncio.sleep(0)
        await runner.cleanup()

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else self._default
            if isinstance(behaviour, Cycle):
                position = self._cycles.get(id(behaviour), 0)
                self._cycles[id(behaviour)] = position + 1
                behaviour = behaviour.behaviours[position % len(behaviour.behaviours)]
            return behaviour

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        received_at = time.monotonic()
        body = await request.read()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=headers,
            body=body,
            received_at=received_at,
            query=request.query_string,
        )
        self._all_log.append(record)
        if request.method == "POST" and request.path == self._renderer.chat_path:
            self._chat_log.append(record)
        state = RequestState(record)
        request[STATE_KEY] = state
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return await Playback(request, self._renderer).send(
                self._http_exception(exc, request.method, request.path)
            )
        except asyncio.CancelledError:
            self._note_disconnect(state)
            raise
        except ConnectionError:
            self._note_disconnect(state)
            # The socket is gone; aiohttp swallows the failing write of this placeholder.
            return web.Response(status=499)

    def _note_disconnect(self, state: RequestState) -> None:
        if not (self._stopping or state.server_aborted or state.record.completed.is_set()):
            state.record.disconnected.set()

    def _http_exception(self, exc: web.HTTPException, request_method: str, request_path: str) -> WireResponse:
        if exc.status == 404:
            return self._renderer.not_found(request_method, request_path)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if exc.status == 405 and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        return WireResponse(exc.status, (exc.text or exc.reason).encode(), headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        playback = Playback(request, self._renderer)
        record = request[STATE_KEY].record
        renderer = self._renderer
        denied = renderer.check_auth(record.headers)
        if denied is not None:
            return await playback.send(denied)
        ctx = renderer.context(record.json, record.headers)
        invalid = renderer.validate(ctx, record.body)
        if invalid is not None:
            return await playback.send(invalid)
        if self.strict_models and not renderer.knows_model(ctx.model):
            return await playback.send(renderer.unknown_model(ctx))
        behaviour = self._next_behaviour()
        record.behaviour = behaviour
        return await playback.run(behaviour, ctx)

    def _route_handler(self, route: Route) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            record = request[STATE_KEY].record
            playback = Playback(request, self._renderer)
            denied = self._renderer.check_auth(record.headers) if route.auth else None
            return await playback.send(denied if denied is not None else route.handler(record))

        return handle

    def __repr__(self) -> str:
        where = f"port={self._port}" if self._port is not None else "not started"
        return f"FakeServer({self.kind!r}, {where})"


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port where every connection is refused, held for the ``with`` block.

    The socket is bound but never listens, so nothing else can take the port meanwhile
    and a connect gets an immediate RST (``ECONNREFUSED``).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def self_signed_context(directory: Path | None = None) -> ssl.SSLContext:
    """A server-side TLS context with a fresh self-signed certificate for 127.0.0.1.

    Made with the ``openssl`` command line (``RuntimeError`` when it is missing), so no
    key material is kept in the repository. No client trusts it: a connection to a fake
    serving it fails certificate verification, which is the point.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is not installed")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    return context
