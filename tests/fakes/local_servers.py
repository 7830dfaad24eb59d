"""Loopback fakes of the other local model servers, of Ollama's model download, and of
a port that accepts connections and never answers.

* `LocalServerFake(kind)`: the read-only endpoints `model:discover` reads, as LM Studio
  (``/v1/models`` owned by ``organization_owner``, ``/api/v0/models``; any other path
  gets a 200 ``{"error": "Unexpected endpoint or method. (GET /x)"}``, as LM Studio
  answers), vLLM (``/v1/models`` owned by ``vllm``, ``/version``, ``/health``), Jan
  (``/v1/models`` behind a Bearer key) and LocalAI (``/v1/models`` without
  ``owned_by``, ``/system``, ``/version``, ``/readyz``) serve them, or ``"http"``: an
  ordinary web page that is no model server at all.
* `OllamaPullFake`: Ollama's ``/``, ``/api/tags``, ``/api/show`` and ``/api/version``
  (the `OllamaRenderer`'s) plus ``POST /api/pull``, which streams the NDJSON progress
  of https://github.com/ollama/ollama/blob/main/docs/api.md#pull-a-model following a
  `PullScript`; a model pulled to the end is listed by ``/api/tags`` afterwards.
* `SilentPort`: a listening socket that accepts every connection and never sends a byte.

Each HTTP fake runs aiohttp on its own loop in a daemon thread, like `FakeServer`, and
records every request (`requests`), with ``disconnected`` set when the client went away
before the answer was complete.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

from .recording import RecordedRequest, RequestLog
from .render_ollama import OllamaRenderer
from .wire import dumps

__all__ = ["DEFAULT_LAYERS", "LocalServerFake", "OllamaPullFake", "PullScript", "SilentPort"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RECORD = web.RequestKey("local_fake_record", RecordedRequest)
_START_TIMEOUT_S = 10.0


class _ThreadedApp:
    """An aiohttp app on 127.0.0.1 in a background thread; subclasses add routes."""

    def __init__(self) -> None:
        self._log = RequestLog()
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._log.snapshot()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _ThreadedApp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(sock, started), daemon=True,
                                        name=f"{type(self).__name__}-{self._port}")
        self._thread.start()
        started.result(timeout=_START_TIMEOUT_S)
        return self

    def _serve(self, sock: socket.socket, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._startup(sock))
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self, sock: socket.socket) -> None:
        app = web.Application(middlewares=[self._record])
        self.routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    @web.middleware
    async def _record(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        record = RecordedRequest(method=request.method, path=request.path, headers=headers, body=body,
                                 received_at=time.monotonic(), query=request.query_string)
        self._log.append(record)
        request[_RECORD] = record
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            record.disconnected.set()
            raise
        except ConnectionError:
            record.disconnected.set()
            return web.Response(status=499)
        record.completed.set()
        return response

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None or runner is None or loop.is_closed():
            return

        async def shutdown() -> None:
            if runner.server is not None:
                for handler in runner.server.connections:
                    if handler.transport is not None:
                        handler.transport.abort()
            await runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=_START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_START_TIMEOUT_S)

    def __enter__(self) -> _ThreadedApp:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(payload), content_type="application/json")


DEFAULT_LOCAL_MODELS: dict[str, tuple[str, ...]] = {
    "lmstudio": ("qwen2.5-7b-instruct", "meta-llama-3.1-8b-instruct"),
    "lmstudio-v1": ("qwen/qwen3-4b-2507",),
    "vllm": ("Qwen/Qwen2.5-1.5B-Instruct",),
    "jan": ("jan-v1-4b", "llama3.2-3b-instruct"),
    "localai": ("phi-2", "gpt-4"),
    "http": (),
}


class LocalServerFake(_ThreadedApp):
    """The model-listing endpoints of LM Studio, vLLM, Jan or LocalAI, or a plain web page.

    Args:
        kind: ``"lmstudio" | "lmstudio-v1" | "vllm" | "jan" | "localai" | "http"``
            (``lmstudio-v1``: only LM Studio 0.4's ``/api/v1/models``).
        models: ids listed (per-kind defaults otherwise).
        api_key: Jan only: ``/v1/models`` answers 401 without ``Authorization: Bearer KEY``.
        loaded: LM Studio: ``{model: window}`` of the models loaded, which ``/api/v0/models``
            reports with ``state: "loaded"`` and ``loaded_context_length``.
    """

    def __init__(self, kind: str, models: Sequence[str] | None = None, *, api_key: str | None = None,
                 loaded: dict[str, int] | None = None) -> None:
        if kind not in DEFAULT_LOCAL_MODELS:
            raise ValueError(f"unknown kind {kind!r}")
        super().__init__()
        self.kind = kind
        self.models = list(DEFAULT_LOCAL_MODELS[kind] if models is None else models)
        self.api_key = api_key
        self.loaded = dict(loaded or {})

    def routes(self, app: web.Application) -> None:
        table: dict[str, Callable[[web.Request], web.Response]] = {
            "lmstudio": self._lmstudio, "lmstudio-v1": self._lmstudio_v1, "vllm": self._vllm, "jan": self._jan, "localai": self._localai,
            "http": self._plain,
        }
        answer = table[self.kind]

        async def handle(request: web.Request) -> web.Response:
            return answer(request)

        app.router.add_route("*", "/{tail:.*}", handle)

    def _openai_list(self, **extra: Any) -> web.Response:
        return _json({"object": "list", "data": [{"id": m, "object": "model", **extra} for m in self.models]})

    def _lmstudio(self, request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return _json({"data": [{"id": m, "object": "model", "owned_by": "organization_owner"}
                                   for m in self.models], "object": "list"})
        if request.path == "/api/v0/models":
            entries = [{"id": m, "object": "model", "type": "llm", "publisher": "lmstudio-community",
                        "arch": "llama", "compatibility_type": "gguf", "quantization": "Q4_K_M",
                        "max_context_length": 32768, **self._state(m)} for m in self.models]
            entries.append({"id": "text-embedding-nomic-embed-text-v1.5", "object": "model", "type": "embeddings",
                            "publisher": "nomic-ai", "arch": "nomic-bert", "compatibility_type": "gguf",
                            "quantization": "Q4_K_M", "state": "not-loaded", "max_context_length": 2048})
            return _json({"object": "list", "data": entries})
        return _json({"error": f"Unexpected endpoint or method. ({request.method} {request.path})"})

    def _state(self, model: str) -> dict[str, Any]:
        if model in self.loaded:
            return {"state": "loaded", "loaded_context_length": self.loaded[model]}
        return {"state": "not-loaded"}

    def _lmstudio_v1(self, request: web.Request) -> web.Response:
        """LM Studio 0.4's REST API v1 only; every other path gets the unexpected-endpoint 200."""
        if request.path == "/api/v1/models":
            entries = [{"type": "llm", "publisher": "qwen", "key": m, "display_name": m, "architecture": "qwen3",
                        "quantization": {"name": "Q4_K_M", "bits_per_weight": 4}, "size_bytes": 2497280256,
                        "params_string": "4B", "loaded_instances": [], "max_context_length": 262144,
                        "format": "gguf", "capabilities": {"vision": False, "trained_for_tool_use": True}}
                       for m in self.models]
            entries.append({"type": "embedding", "publisher": "nomic-ai", "key": "text-embedding-nomic-embed-text-v1.5",
                            "loaded_instances": [], "max_context_length": 2048, "format": "gguf"})
            return _json({"models": entries})
        return _json({"error": f"Unexpected endpoint or method. ({request.method} {request.path})"})

    def _vllm(self, request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return self._openai_list(created=1733500000, owned_by="vllm", root=self.models[0] if self.models else "",
                                     parent=None, max_model_len=32768)
        if request.path == "/version":
            return _json({"version": "0.11.0"})
        if request.path == "/health":
            return web.Response(status=200)
        return _json({"detail": "Not Found"}, 404)

    def _jan(self, request: web.Request) -> web.Response:
        if request.path != "/v1/models":
            return _json({"message": "Not Found"}, 404)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json({"message": "Invalid or missing API key"}, 401)
        return self._openai_list()

    def _localai(self, request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return self._openai_list()
        if request.path == "/system":
            return _json({"backends": ["llama-cpp", "whisper"], "loaded_models": [{"id": m} for m in self.models[:1]]})
        if request.path == "/version":
            return _json({"version": "2.26.0 (a1b2c3d4)"})
        if request.path == "/readyz":
            return web.Response(status=200, text="OK")
        return _json({"message": "Not Found"}, 404)

    def _plain(self, request: web.Request) -> web.Response:
        if request.path == "/":
            return web.Response(text="<!doctype html><title>It works</title>", content_type="text/html")
        return web.Response(status=404, text="404 Not Found")


#: (digest, size) of the layers a pull downloads: a model, its template, its params.
DEFAULT_LAYERS: tuple[tuple[str, int], ...] = (
    ("sha256:" + hashlib.sha256(b"model").hexdigest(), 1_321_082_688),
    ("sha256:" + hashlib.sha256(b"template").hexdigest(), 1_429),
    ("sha256:" + hashlib.sha256(b"params").hexdigest(), 96),
)


@dataclass(frozen=True)
class PullScript:
    """How one ``POST /api/pull`` goes.

    ``steps`` progress lines per layer (``completed`` growing to ``total``), with
    ``delay_s`` before each line. ``error`` is sent as ``{"error": ...}`` right after
    ``pulling manifest`` (Ollama's answer to a model that does not exist), and the stream
    ends. ``stall_after`` lines are written, then nothing more while the connection
    stays open (until the client goes away).
    """

    layers: tuple[tuple[str, int], ...] = DEFAULT_LAYERS
    steps: int = 4
    delay_s: float = 0.0
    error: str | None = None
    stall_after: int | None = None
    #: Written as they are after ``pulling manifest`` (a broken server's bytes).
    garbage: bytes | None = None
    #: The body ends normally after this many lines (no ``success``).
    end_after: int | None = None

    def lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if self.error is not None:
            return [*out, {"error": self.error}]
        for digest, total in self.layers:
            for step in range(self.steps + 1):
                line: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
                completed = total * step // self.steps
                if completed:  # Go's omitempty leaves out a zero
                    line["completed"] = completed
                out.append(line)
        return [*out, {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


class OllamaPullFake(_ThreadedApp):
    """Ollama's listing endpoints plus ``POST /api/pull`` (see `PullScript`)."""

    def __init__(self, models: Sequence[str] = ("llama3.2:latest",)) -> None:
        super().__init__()
        self.renderer = OllamaRenderer(models=models, api_key=None, context_lengths={})
        self._scripts: collections.deque[PullScript] = collections.deque()
        self._lock = threading.Lock()

    @property
    def models(self) -> list[str]:
        return self.renderer.models

    @property
    def base_url(self) -> str:
        return self.origin

    def enqueue(self, *scripts: PullScript) -> None:
        """Script the next pulls; a pull with no script left gets ``PullScript()``."""
        with self._lock:
            self._scripts.extend(scripts)

    @property
    def pulls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/api/pull"]

    def routes(self, app: web.Application) -> None:
        for route in self.renderer.routes():
            app.router.add_route(route.method, route.path, self._wrap(route.handler))
        app.router.add_post("/api/pull", self._pull)

    def _wrap(self, handler: Callable[[RecordedRequest], Any]) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            wire = handler(request[_RECORD])
            return web.Response(status=wire.status, body=wire.body, headers=wire.headers)

        return handle

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = request[_RECORD].json
        model = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return _json({"error": "model is required"}, 400)
        with self._lock:
            script = self._scripts.popleft() if self._scripts else PullScript()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        lines = script.lines()[:script.end_after]
        for index, line in enumerate(lines):
            if script.stall_after is not None and index >= script.stall_after:
                await asyncio.Event().wait()  # silent until the client disconnects
            if script.delay_s:
                await asyncio.sleep(script.delay_s)
            if line == {"status": "success"} and model not in self.renderer.models:
                self.renderer.models.append(model)  # listed once the manifest is written, as in Ollama
            await response.write(dumps(line) + b"\n")
            if index == 0 and script.garbage is not None:
                await response.write(script.garbage)
        await response.write_eof()
        return response


class SilentPort:
    """A loopback port that accepts every connection and never answers (a hung server)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"silent-{self.port}")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> SilentPort:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self._sock.close()
