"""Local model servers the sidecar runs itself: a custom entry's ``server`` setting.

A managed server starts on the first request that needs it (not at start-up); that
request, and any arriving meanwhile, waits (within its own deadline) until
``GET <healthPath>`` answers 2xx. It stops after ``idleStopMs`` without requests and
always when the sidecar exits. It runs in its own process group with stdin from
``/dev/null``; its stdout and stderr become ``local_server_output`` log lines on the
sidecar's stderr (bounded in length and rate).

It never outlives the sidecar, even one killed with SIGKILL: on Linux the kernel sends
it SIGKILL when the sidecar dies (``PR_SET_PDEATHSIG``), and it inherits the read end
of a pipe whose write end only the sidecar holds (its number in
``MODEL_SIDECAR_WATCH_FD``): the embedded server exits when that pipe ends.

A server that dies is started again by the next request, after a back-off that grows
with each failure in a row; after ``maxRestarts`` failures without a successful request
in between it is given up: requests fail at once until its config changes. A request
that was being served when the server died fails with a ``ModelError`` naming it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog

from sidecar.errors import ModelError, NetworkError, ProviderError
from sidecar.local import embedded
from sidecar.providers.base import Provider, ProviderModel, ProviderSettings
from sidecar.providers.http import HttpClientFactory
from sidecar.providers.openai import OpenAICompatibleProvider
from sidecar.wire.config import LOCAL_BASE_URL, ModelConfig, ServerConfig
from sidecar.wire.methods import LocalServerHealth

__all__ = ["ManagedProvider", "ManagedServer", "ServerManager", "ServerSpec"]

log = structlog.get_logger("sidecar.local")

State = Literal["stopped", "starting", "ready", "crashed"]
HOST = "127.0.0.1"
#: Environment variables never passed on to a server (it has no use for our keys).
_SECRET_ENV = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
#: Back-off before the n-th start in a row after failures: 0.5 s, 1 s, 2 s, ... up to 30 s.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
#: How long a request whose attempt failed waits to learn whether the server died.
DEATH_CHECK_S = 1.0
#: Stopping: SIGTERM, then SIGKILL to the whole group after this grace.
STOP_GRACE_S = 3.0
#: Output lines: longer ones are cut; more than LOG_BURST lines per LOG_WINDOW_S are counted, not logged.
MAX_LINE_CHARS = 1000
LOG_BURST = 200
LOG_WINDOW_S = 10.0
TAIL_LINES = 8
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server to run, resolved from config: placeholders still in ``argv``."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    model_file: str | None
    port: int
    auto_port: bool
    health_path: str
    idle_stop_s: float
    start_timeout_s: float
    max_restarts: int

    def same_server(self, other: ServerSpec) -> bool:
        """Equal but for a port picked automatically (kept across config changes)."""
        return replace(self, port=0) == replace(other, port=0) if self.auto_port else self == other


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or HOST
    host = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def spec_from_config(name: str, base_url: str, server: ServerConfig, port: int | None = None) -> ServerSpec:
    """The spec of ``server``; raises :class:`embedded.EmbeddedUnavailable` for an embedded one that cannot run."""
    if server.run == "embedded":
        argv = tuple(embedded.command(embedded.check()))
        model_file, health = None, server.health_path or embedded.HEALTH_PATH
    else:
        argv = (*(server.command or ()), *server.args)
        model_file, health = server.model_file, server.health_path or "/health"
    auto = server.port == "auto"
    chosen = port if auto and port else (free_port() if auto else int(server.port))
    return ServerSpec(
        name=name, argv=argv, env=tuple(sorted((server.env or {}).items())), model_file=model_file,
        port=chosen, auto_port=auto, health_path=health, idle_stop_s=server.idle_stop_ms / 1000,
        start_timeout_s=server.start_timeout_ms / 1000, max_restarts=server.max_restarts,
    )


def _cannot_start(spec: ServerSpec) -> str | None:
    """Why starting ``spec`` now would fail before the process even runs."""
    if spec.model_file and not Path(spec.model_file).is_file():
        return f"model file {spec.model_file} does not exist"
    if _port_taken(spec.port):
        return f"port {spec.port} on {HOST} is in use by another program"
    return None


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when the sidecar dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the sidecar died before the request took effect
            os._exit(1)

    return preexec


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _signal(proc: asyncio.subprocess.Process, *, kill: bool) -> None:
    """SIGTERM (or SIGKILL) to the server's whole process group; on Windows, to the process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32":  # pragma: no cover - no process groups to signal
            if proc.returncode is None:
                proc.kill() if kill else proc.terminate()
            return
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)


def _process_options(watch_fd: int) -> dict[str, Any]:
    """Own process group; on POSIX also the watched pipe end and, on Linux, death with the sidecar."""
    if sys.platform == "win32":  # pragma: no cover
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True, "pass_fds": (watch_fd,), "preexec_fn": _die_with_parent()}


class _OutputLog:
    """Lines of a server's output as log events: cut to length, rate-bounded, tail kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._window_start = 0.0
        self._count = 0
        self._dropped = 0

    def line(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text.strip():
            return
        text = text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + "…"
        self.tail.append(text[:300])
        now = time.monotonic()
        if now - self._window_start > LOG_WINDOW_S:
            if self._dropped:
                log.warning("local_server_output_dropped", provider=self.name, lines=self._dropped)
            self._window_start, self._count, self._dropped = now, 0, 0
        self._count += 1
        if self._count > LOG_BURST:
            self._dropped += 1
            return
        log.info("local_server_output", provider=self.name, stream=stream, line=text)

    async def pump(self, stream: str, reader: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await reader.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self.line(stream, raw)
            if len(pending) > 65536:  # no newline in sight: log what came as one line
                self.line(stream, pending)
                pending = b""
        if pending:
            self.line(stream, pending)

    def summary(self) -> str:
        return f" (last output: {self.tail[-1]})" if self.tail else ""


class ManagedServer:
    """One server process for one provider entry, started and stopped on demand."""

    def __init__(self, spec: ServerSpec, env: Mapping[str, str],
                 on_port_change: Callable[[], None] = lambda: None, after: asyncio.Task[None] | None = None) -> None:
        self.spec = spec
        #: The stop of the server this one replaces: the first start waits for it.
        self._after = after
        #: Called when an automatic port had to change: the provider's base URL follows.
        self._on_port_change = on_port_change
        self._base_env = {k: v for k, v in env.items() if k not in _SECRET_ENV}
        self.state: State = "stopped"
        self.last_error: str | None = None
        self.restarts = 0
        self.failures = 0
        self.gave_up = False
        self._proc: asyncio.subprocess.Process | None = None
        self._exited: dict[int, asyncio.Event] = {}
        self._watch_fd: int | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        #: Why the last :meth:`stop` happened, for the requests whose start it cut short.
        self._stop_reason = "its config changed"
        self._pumps: list[asyncio.Task[None]] = []
        #: Every process started and not yet reaped (a stop in progress included).
        self._live: set[asyncio.subprocess.Process] = set()
        self._not_before = 0.0
        self._users = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.output = _OutputLog(spec.name)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a process it started has not been reaped yet."""
        return bool(self._live)

    def health(self) -> LocalServerHealth:
        return LocalServerHealth(state=self.state, pid=self.pid, port=self.spec.port, restarts=self.restarts,
                                 lastError=self.last_error, gaveUp=self.gave_up)

    def error(self, text: str) -> ModelError:
        """A ModelError naming this server; not retried on it (the server decides that)."""
        return ModelError(f"local model server of {self.spec.name!r}: {text}", provider=self.spec.name,
                          retryable=False)

    # -- use -------------------------------------------------------------------------

    async def acquire(self) -> asyncio.subprocess.Process:
        """Wait until the server is ready (starting it when needed); the process that serves."""
        self._users += 1
        self._cancel_idle()
        try:
            while True:
                proc = self._proc
                if self.state == "ready" and proc is not None and proc.returncode is None:
                    return proc
                if self.gave_up:
                    raise self.error(f"failed {self.failures} times in a row and is not restarted "
                                      f"until its config changes (last: {self.last_error})")
                stopping = self._stop_task
                if stopping is not None:  # an idle stop in progress still holds the port
                    await asyncio.wait({stopping})  # its end, even cancelled, is no error of this request
                    if self._stop_task is stopping:  # cancelled before it ran: nothing reset it
                        self._stop_task = None
                    continue
                if self._start_task is None:
                    self._start_task = asyncio.get_running_loop().create_task(self._start())
                    self._start_task.add_done_callback(_retrieve)
                await self._await_start(self._start_task)
        except BaseException:
            self.release(ok=False)
            raise

    async def _await_start(self, start: asyncio.Task[None]) -> None:
        """Wait for ``start``; a start stopped by :meth:`stop` (not by our own cancellation)
        is a retryable ModelError: the server entry was replaced or the sidecar is stopping."""
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not start.cancelled() or (current is not None and current.cancelling()):
                raise
            raise ModelError(f"local model server of {self.spec.name!r}: stopped, {self._stop_reason}",
                             provider=self.spec.name, retryable=True) from None

    def release(self, *, ok: bool) -> None:
        self._users -= 1
        if ok:
            self.failures = 0
        if self._users == 0:
            self._schedule_idle()

    def _schedule_idle(self) -> None:
        self._cancel_idle()
        if self.spec.idle_stop_s > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(self.spec.idle_stop_s, self._idle)

    async def died(self, proc: asyncio.subprocess.Process, wait_s: float) -> str | None:
        """How ``proc`` ended, if it ended or ends within ``wait_s``; None while it runs."""
        event = self._exited.get(proc.pid)
        if event is not None and not event.is_set() and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_s)
        if proc.returncode is None:
            return None
        return _describe_exit(proc.returncode) + self.output.summary()

    # -- start -----------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            if self._after is not None:
                await asyncio.wait({self._after})
                self._after = None
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.failures:
                self.restarts += 1
            self.state = "starting"
            proc = await self._spawn()
            await self._wait_healthy(proc)
            self.state = "ready"
            log.info("local_server_ready", provider=self.spec.name, pid=proc.pid, port=self.spec.port)
            if self._users == 0:  # every waiter gave up meanwhile: the idle clock starts now
                self._schedule_idle()
        except ModelError as exc:
            await self._terminate(grace=0.0)
            self._failed(exc.message)
            raise
        except BaseException:
            await self._terminate(grace=0.0)
            self.state = "stopped"
            raise
        finally:
            self._start_task = None

    def _failed(self, message: str) -> None:
        self.failures += 1
        self.state = "crashed"
        self.last_error = message
        self._not_before = time.monotonic() + min(BACKOFF_BASE_S * 2 ** (self.failures - 1), BACKOFF_MAX_S)
        self.gave_up = self.failures > self.spec.max_restarts
        log.warning("local_server_failed", provider=self.spec.name, error=message, failures=self.failures,
                    gave_up=self.gave_up)

    def _argv(self) -> list[str]:
        values = {"{port}": str(self.spec.port), "{host}": HOST, "{modelFile}": self.spec.model_file or ""}
        out = []
        for arg in self.spec.argv:
            for key, value in values.items():
                arg = arg.replace(key, value)
            out.append(arg)
        return out

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self.spec.auto_port and _port_taken(self.spec.port):
            # Another program took the port picked earlier: pick another one.
            moved = free_port()
            log.info("local_server_port_moved", provider=self.spec.name, port=moved, taken=self.spec.port)
            self.spec = replace(self.spec, port=moved)
            self._on_port_change()
        spec = self.spec
        problem = _cannot_start(spec)
        if problem:
            raise self.error(problem)
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            raise self.error(f"cannot create the pipe it watches: {exc.strerror or exc}") from None
        env = {**self._base_env, **dict(spec.env), embedded.WATCH_FD_ENV: str(read_fd)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, **_process_options(read_fd))
        except (OSError, ValueError) as exc:  # ValueError: an argument Popen refuses
            os.close(write_fd)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise self.error(f"cannot run {spec.argv[0]!r}: {reason}") from None
        except BaseException:  # cancelled meanwhile: nothing holds the write end yet
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._proc, self._watch_fd = proc, write_fd
        self._live.add(proc)
        self._exited = {pid: event for pid, event in self._exited.items() if not event.is_set()}
        self._exited[proc.pid] = asyncio.Event()
        log.info("local_server_started", provider=spec.name, pid=proc.pid, port=spec.port)
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [self._spawn_task(self.output.pump("stdout", proc.stdout)),
                       self._spawn_task(self.output.pump("stderr", proc.stderr))]
        self._spawn_task(self._watch(proc))
        return proc

    def _spawn_task(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        url = f"http://{HOST}:{self.spec.port}{self.spec.health_path}"
        deadline = time.monotonic() + self.spec.start_timeout_s
        exited = self._exited[proc.pid]
        pause = 0.05
        answered = "no answer"
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
            while True:
                if proc.returncode is not None or exited.is_set():
                    await asyncio.wait(self._pumps, timeout=0.5)  # its last words, usually the reason
                    code = proc.returncode
                    ended = "exited" if code is None else _describe_exit(code)
                    raise self.error(f"the server {ended} before it answered{self.output.summary()}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(url)
                    if response.is_success:
                        return
                    answered = f"only HTTP {response.status_code}"
                if time.monotonic() > deadline:
                    raise self.error(f"{answered} on {self.spec.health_path} within "
                                     f"{self.spec.start_timeout_s:.0f} s{self.output.summary()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(exited.wait(), pause)
                pause = min(pause * 1.5, 0.25)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._live.discard(proc)
        self._exited[proc.pid].set()
        _signal(proc, kill=True)  # anything it started goes with it
        if self._proc is not proc:
            log.info("local_server_stopped", provider=self.spec.name, pid=proc.pid, code=code)
            self._exited.pop(proc.pid, None)
            return
        self._proc = None
        self._close_watch_fd()
        if self.state != "ready":
            return  # a start in progress reports its own failure
        self._failed(f"the server (pid {proc.pid}) {_describe_exit(code)}")
        await asyncio.wait(self._pumps, timeout=0.5)  # its last words, usually the reason
        self.last_error = f"{self.last_error}{self.output.summary()}"

    # -- stop ------------------------------------------------------------------------

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle(self) -> None:
        self._idle_timer = None
        if self._users == 0 and self.state == "ready":
            log.info("local_server_idle_stop", provider=self.spec.name, idle_s=self.spec.idle_stop_s)
            self._stop_task = self._spawn_task(self.stop(STOP_GRACE_S))

    def _close_watch_fd(self) -> None:
        if self._watch_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._watch_fd)
            self._watch_fd = None

    async def stop(self, grace: float, reason: str = "its config changed") -> None:
        """Stop the server (SIGTERM to its group, SIGKILL after ``grace``); back to ``stopped``."""
        self._stop_reason = reason
        self._cancel_idle()
        task = self._start_task
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=max(grace, 0.1))
        try:
            await self._terminate(grace)
        finally:
            if not self.gave_up:
                self.state = "stopped"
            if self._stop_task is asyncio.current_task():
                self._stop_task = None

    async def _terminate(self, grace: float) -> None:
        proc, self._proc = self._proc, None
        self._close_watch_fd()
        if proc is None or proc.returncode is not None:
            return
        _signal(proc, kill=grace <= 0)
        try:
            await asyncio.wait_for(proc.wait(), grace if grace > 0 else 1.0)
        except TimeoutError:
            _signal(proc, kill=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)

    def kill_now(self) -> None:
        """SIGKILL the group at once, without waiting (the last step of a shutdown)."""
        self._close_watch_fd()
        for proc in self._live:
            if proc.returncode is None:
                _signal(proc, kill=True)


def _retrieve(task: asyncio.Task[None]) -> None:
    """The start's outcome goes to the requests waiting on it; nothing more to report."""
    if not task.cancelled():
        task.exception()


class ManagedProvider(OpenAICompatibleProvider):
    """A custom entry whose server the sidecar runs: model lists and probes never start it."""

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient, manager: ServerManager) -> None:
        super().__init__(settings, client)
        self.manager = manager

    def _running(self) -> bool:
        server = self.manager.server(self.name)
        return server is None or server.state == "ready"

    async def list_models(self) -> list[ProviderModel]:
        if self._running():
            return await super().list_models()
        wanted = dict.fromkeys([self.settings.default_model, *self.settings.models])
        return [ProviderModel(id=model, provider=self.name) for model in wanted]

    async def is_available(self) -> bool:
        server = self.manager.server(self.name)
        if server is not None and server.gave_up:
            return False
        return True if not self._running() else await super().is_available()


class ServerManager:
    """Every managed server, by provider name, kept in step with the config."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._servers: dict[str, ManagedServer] = {}
        #: name → why the embedded server cannot run (the entry then uses its baseURL).
        self.unavailable: dict[str, str] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        #: Servers replaced by a config change whose processes may still run: ``kill_now``
        #: reaches them too, even when their stop task was cancelled.
        self._retired: set[ManagedServer] = set()
        #: Re-applies the provider settings (set by the app) when a server's port moved.
        self.on_port_change: Callable[[], None] = lambda: None

    def server(self, name: str) -> ManagedServer | None:
        return self._servers.get(name)

    def health(self, name: str) -> LocalServerHealth | None:
        server = self._servers.get(name)
        return server.health() if server is not None else None

    def configure(self, cfg: ModelConfig) -> None:
        """Match the servers to ``cfg``: keep unchanged ones, stop the rest."""
        wanted: dict[str, ServerSpec] = {}
        self.unavailable = {}
        for name, entry in cfg.providers.custom.items():
            server = entry.server
            if not entry.enabled or server is None or server.run == "off":
                continue
            if server.run == "embedded" and entry.base_url != LOCAL_BASE_URL:
                continue  # the host points the entry at a server of its own
            current = self._servers.get(name)
            try:
                spec = spec_from_config(name, entry.base_url, server, current.spec.port if current else None)
            except embedded.EmbeddedUnavailable as exc:
                self.unavailable[name] = str(exc)
                continue
            wanted[name] = spec
        stopping: dict[str, asyncio.Task[None]] = {}
        for name, current in list(self._servers.items()):
            if name not in wanted or not current.spec.same_server(wanted[name]):
                del self._servers[name]
                task = self._stop_later(current)
                if task is not None:
                    stopping[name] = task
        for name, spec in wanted.items():
            if name not in self._servers:
                # The new server starts once the old one is gone (it may hold the port).
                self._servers[name] = ManagedServer(spec, self._env, lambda: self.on_port_change(),
                                                    after=stopping.get(name))

    def _stop_later(self, server: ManagedServer) -> asyncio.Task[None] | None:
        self._retired = {old for old in self._retired if old.running}
        self._retired.add(server)
        try:
            task = asyncio.get_running_loop().create_task(server.stop(STOP_GRACE_S))
        except RuntimeError:  # no loop: nothing was ever started
            return None
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return task

    def bind(self, settings: list[ProviderSettings]) -> list[ProviderSettings]:
        """``settings`` with each managed entry's base URL on its server's port."""
        out = []
        for item in settings:
            server = self._servers.get(item.name)
            out.append(replace(item, base_url=_with_port(item.base_url, server.spec.port)) if server else item)
        return out

    def factory(self, create: Callable[[ProviderSettings, HttpClientFactory], Provider],
                ) -> Callable[[ProviderSettings, HttpClientFactory], Provider]:
        """``create``, but a :class:`ManagedProvider` for the entries whose server is managed."""
        def build(settings: ProviderSettings, http: HttpClientFactory) -> Provider:
            if settings.kind == "custom" and settings.name in self._servers:
                return ManagedProvider(settings, http.build(settings), self)
            return create(settings, http)

        return build

    def hold(self, provider: Provider) -> AbstractAsyncContextManager[None]:
        """Around one attempt: the server ready first; a failure it caused by dying, named.
        Nothing for a provider whose server this manager does not run (most attempts)."""
        server = self._servers.get(provider.name) if isinstance(provider, ManagedProvider) else None
        return contextlib.nullcontext() if server is None else self._hold(provider, server)

    @asynccontextmanager
    async def _hold(self, provider: Provider, server: ManagedServer) -> AsyncIterator[None]:
        proc = await server.acquire()
        if urlsplit(provider.settings.base_url).port != server.spec.port:
            server.release(ok=False)
            # The port moved while this attempt waited; the provider object for the new
            # address is in the pool now, and the next attempt gets it.
            raise ModelError(f"local model server of {provider.name!r} moved to port {server.spec.port}; "
                             "retrying there", provider=provider.name, retryable=True)
        ok = False
        try:
            yield
            ok = True
        except ProviderError as exc:
            ended = await server.died(proc, DEATH_CHECK_S if isinstance(exc, NetworkError) else 0.0)
            if ended is None:
                raise
            raise server.error(f"the server (pid {proc.pid}) {ended} during the request; "
                                "it is started again for the next one") from exc
        finally:
            server.release(ok=ok)

    async def aclose(self, grace: float = 0.2) -> None:
        """Stop every server: SIGTERM, SIGKILL after ``grace``."""
        servers = list(self._servers.values())
        await asyncio.gather(*(s.stop(grace, "the sidecar is stopping") for s in servers), *self._stopping,
                             return_exceptions=True)

    def kill_now(self) -> None:
        """SIGKILL every server process started and not yet reaped, those still stopping included."""
        for server in [*self._servers.values(), *self._retired]:
            server.kill_now()
