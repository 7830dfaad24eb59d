"""Wiring and lifecycle: build every service, serve the stdio loop, shut down in time.

Shutdown comes from ``sidecar:shutdown``, stdin EOF or SIGTERM (SIGINT/CTRL_BREAK on
Windows). The sidecar then stops accepting requests, cancels the ones in flight (each
answered ``RequestCancelled``; one whose effect is already committed, such as a config
write, finishes and gets its real answer), closes provider connections, flushes stdout
and exits 0, within 2 s: every step takes its budget from one clock started at the
signal, and a watchdog exits at :data:`SHUTDOWN_HARD_LIMIT_S` whatever is still running.

The stdin loop never waits on the writer past a stop: when the host does not read,
answers the loop gives itself are held, and the wait for room ends at a signal or EOF.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from sidecar import __version__
from sidecar.channels import config as config_channel
from sidecar.channels import discover, generate, health, models, pull, select, usage
from sidecar.channels import lifecycle as lifecycle_channel
from sidecar.core.budget import BudgetManager
from sidecar.core.config import ConfigManager
from sidecar.core.model_lists import ModelLister
from sidecar.core.planner import Planner
from sidecar.core.pool import ProviderPool
from sidecar.core.ratelimit import LimiterBook
from sidecar.core.registry import Catalog, ModelRegistry
from sidecar.core.router import Router
from sidecar.core.stats import StatsBook
from sidecar.local.managed import ServerManager
from sidecar.local.parent_watch import watch_parent
from sidecar.providers import create_provider
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import HttpClientFactory
from sidecar.secrets import Redactor
from sidecar.store.keys import KeyStore
from sidecar.store.ledger import Ledger
from sidecar.transport.dispatcher import Channel, Dispatcher, RequestId
from sidecar.transport.lifecycle import SHUTDOWN_HARD_LIMIT_S, StopClock, install_stop_handlers
from sidecar.transport.stdio import WAKE, EndOfInput, LineSource, LineWriter, WakeUp, open_reader
from sidecar.wire.config import ModelConfig, ProviderEntry

__all__ = ["SHUTDOWN_BUDGET_S", "SHUTDOWN_HARD_LIMIT_S", "Lifecycle", "Services", "build_channels", "serve"]

#: ``notify(method, params)``: one notification to the host.
Notify = Callable[[str, dict[str, Any]], Awaitable[None]]

log = structlog.get_logger("sidecar.app")

#: The protocol allows 2 s from the shutdown signal to exit; past SHUTDOWN_HARD_LIMIT_S
#: (from the signal) the process exits regardless (a host that stopped reading stdout
#: must not keep it alive). SHUTDOWN_BUDGET_S bounds the wait of ``sidecar:shutdown`` for
#: the other requests' answers.
SHUTDOWN_BUDGET_S = 1.0
#: Held back from the request tasks for the steps after them: ledger drain (0.3 s),
#: provider close (0.2 s), the last stdout flush.
_AFTER_TASKS_S = 0.45


@dataclass(frozen=True)
class Services:
    """The long-lived services, built once at start-up; the channels are built from them."""

    config: ConfigManager
    pool: ProviderPool
    router: Router
    stats: StatsBook
    registry: ModelRegistry
    budget: BudgetManager
    ledger: Ledger
    limits: LimiterBook
    #: The local model servers the sidecar runs itself (entries with ``server``).
    servers: ServerManager
    #: Providers' model lists, cached for ``model:list-models`` and ``model:pull``.
    lister: ModelLister
    #: The environment the sidecar was started with (keys, discovery ports, test hooks).
    env: Mapping[str, str]

    @classmethod
    def build(cls, data_dir: Path, env: Mapping[str, str], redactor: Redactor, *,
              notify: Notify | None = None, http: HttpClientFactory | None = None) -> Services:
        """``notify(method, params)`` sends a notification to the host (budget alerts)."""
        config = ConfigManager(data_dir, env, redactor, keys=KeyStore.from_env(env))
        config.load()
        servers = ServerManager(env)
        pool = _provider_pool(config, servers, env, http)
        stats = StatsBook()
        registry = ModelRegistry(Catalog.load(), lambda: config.config.model_overrides)
        planner = Planner(pool, lambda: config.config, registry, stats, classify=_classify)
        ledger = _open_ledger(data_dir)

        async def alert(payload: dict[str, Any]) -> None:
            if notify is not None:
                await notify("model:budget-alert", payload)

        budget = BudgetManager(ledger, lambda: config.config.budget, timezone=config.config.budget.timezone,
                               on_alert=alert)
        config.on_change(lambda cfg: budget.set_timezone(cfg.budget.timezone))
        limits = LimiterBook()
        _configure_limits(limits, config.config)
        config.on_change(lambda cfg: _configure_limits(limits, cfg))
        router = Router(pool, lambda: config.config, stats, planner, budget=budget, limits=limits)
        return cls(config=config, pool=pool, router=router, stats=stats, registry=registry, budget=budget,
                   ledger=ledger, limits=limits, servers=servers, lister=ModelLister(pool, registry, stats),
                   env=env)


def _provider_pool(config: ConfigManager, servers: ServerManager, env: Mapping[str, str],
                   http: HttpClientFactory | None) -> ProviderPool:
    """The live providers, rebuilt on every config change (managed servers first: their
    ports go into the base URLs)."""
    deny_remote = env.get("MODEL_SIDECAR_DENY_REMOTE", "") not in ("", "0")
    # Provider HTTP on aiohttp's pool unless MODEL_SIDECAR_HTTP_TRANSPORT=httpx.
    aiohttp = env.get("MODEL_SIDECAR_HTTP_TRANSPORT", "aiohttp") != "httpx"

    def provider_settings() -> list[ProviderSettings]:
        servers.configure(config.config)
        return servers.bind(config.provider_settings())

    pool = ProviderPool(servers.factory(create_provider), http or HttpClientFactory(deny_remote=deny_remote, aiohttp=aiohttp),
                        hold=servers.hold)
    pool.configure(provider_settings())
    config.on_change(lambda _cfg: pool.configure(provider_settings()))
    servers.on_port_change = lambda: pool.configure(provider_settings())
    return pool


def _open_ledger(data_dir: Path) -> Ledger:
    ledger = Ledger.open(data_dir)
    report = ledger.report
    log.info("ledger_open", path=str(report.path), persistent=report.persistent, status=report.status,
             stale_reservations=report.stale_reservations, moved_aside=report.moved_aside,
             replayed=report.replayed, problem=report.problem)
    return ledger


@dataclass
class Lifecycle:
    """When the sidecar stops: the stop event, the clock started at the stop signal, and
    the dispatcher to cancel (bound once it exists, after the channels)."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    clock: StopClock = field(default_factory=StopClock)
    dispatcher: Dispatcher | None = None

    async def begin_shutdown(self, keep: RequestId | None = None) -> None:
        """Stop accepting, cancel in-flight requests but ``keep`` (answered), then stop the loop.

        The loop is stopped whatever happens here (a host that cancels its own
        ``sidecar:shutdown`` still gets the orderly shutdown, not the watchdog's)."""
        self.clock.start()
        dispatcher = self.dispatcher
        try:
            if dispatcher is not None:
                dispatcher.accepting = False
                await dispatcher.cancel_all(reason="shutdown", timeout=SHUTDOWN_BUDGET_S / 2, keep=keep)
        finally:
            asyncio.get_running_loop().call_soon(self.stop.set)


def build_channels(services: Services, lifecycle: Lifecycle) -> dict[str, Channel]:
    """The method table, each channel given only what it uses; its keys are the
    ``channels`` list that ``sidecar:ready`` announces."""
    config = services.config
    table: list[Channel] = [
        *generate.channels(services.router, lambda: config.config.format_templates),
        *models.channels(services.lister, lambda: config.config.provider_names()),
        *select.channels(services.router),
        *usage.channels(services.budget),
        *config_channel.channels(config),
        *health.channels(health.HealthSources(services.pool, services.stats, services.limits, services.servers,
                                              config, services.ledger)),
        *lifecycle_channel.channels(lifecycle.begin_shutdown),
        *discover.channels(services.pool, services.env),
        *pull.channels(services.lister, lambda: config.config.provider_names()),
    ]
    return {channel.name: channel for channel in table}


async def serve(
    wire_in: BinaryIO,
    wire_out: BinaryIO,
    *,
    data_dir: Path,
    max_message_bytes: int,
    redactor: Redactor,
    env: Mapping[str, str],
    clock: StopClock | None = None,
) -> None:
    """Run the sidecar until shutdown; returns when everything has been answered.

    ``clock`` is the one the command line armed for signals during start-up; it is
    already started when such a signal came.
    """
    loop = asyncio.get_running_loop()
    lifecycle = Lifecycle(clock=clock or StopClock())

    def stop() -> None:
        lifecycle.clock.start()
        lifecycle.stop.set()

    writer = LineWriter(wire_out, scrub=redactor.scrub_bytes, on_broken_pipe=stop, source=wire_in)
    writer.start()

    async def notify(method: str, params: dict[str, Any]) -> None:
        await writer.send({"jsonrpc": "2.0", "method": method, "params": params})

    services = Services.build(data_dir, env, redactor, notify=notify)
    _tune_gc()
    dispatcher = Dispatcher(channels=build_channels(services, lifecycle), send=writer.send, post=writer.post)
    lifecycle.dispatcher = dispatcher
    # sidecar:ready already went out (sidecar.transport.claim), before these imports.
    log.info("serving", version=__version__, data_dir=str(data_dir), pid=os.getpid())
    input_closed = asyncio.Event()
    reader = open_reader(wire_in, loop, max_line_bytes=max_message_bytes, on_eof=input_closed.set, output=wire_out)
    reader.start()
    _watch_for_stop(loop, lifecycle)
    _install_debug_dump(loop, services, dispatcher)
    # Not awaited: requests are served meanwhile; the registry fills in as answers come.
    refresh = loop.create_task(services.lister.refresh_local())
    reason = "shutdown"
    try:
        reason = await _read_loop(reader, dispatcher, lifecycle.stop, input_closed)
    finally:
        lifecycle.clock.start()
        log.info("shutting_down", reason=reason, in_flight=len(dispatcher.inflight))
        await _shut_down(services, lifecycle, dispatcher, reader, writer)
        reader.close()
        refresh.cancel()


#: Net allocations of container objects between two young-generation collections
#: (Python's default is 700). Most of a request's objects are freed by reference counting;
#: with 64 requests in flight the default ran a collection every few requests over their
#: live objects and promoted them, and the full collections walked every object made at
#: start-up: about 55 µs of CPU per request, a tenth of the whole (bench/README.md).
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Freeze what start-up made (modules, schemas, the classifier's tables, the services:
    it lives as long as the process, so collections need not walk it) and collect the
    young generation less often. Cyclic garbage is still collected, a little later."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _watch_for_stop(loop: asyncio.AbstractEventLoop, lifecycle: Lifecycle) -> None:
    """Signals, and the parent's death (the host may die while a grandchild holds our
    stdin), stop the loop; a signal during start-up already did."""

    def stop_soon() -> None:  # from a signal handler: the loop may be busy, or mid-step
        loop.call_soon_threadsafe(lifecycle.stop.set)

    install_stop_handlers(stop_soon, lifecycle.clock)
    watch_parent(stop_soon, lifecycle.clock)
    if lifecycle.clock.started is not None:
        lifecycle.stop.set()


async def _first(task: asyncio.Task[Any], *others: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` or any of ``others``; False (``task`` cancelled) when one of those came first."""
    await asyncio.wait({task, *others}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    return not task.cancelled()


async def _read_loop(reader: LineSource, dispatcher: Dispatcher, stop: asyncio.Event,
                     input_closed: asyncio.Event) -> str:
    """Hand each line to the dispatcher until a stop or EOF; returns why it ended.

    Nothing here waits on the output queue unless the stop (and EOF) can end that wait:
    the dispatcher never waits, and the answers it could not queue are sent here with
    the stop in sight.
    """
    loop = asyncio.get_running_loop()
    inbox = reader.inbox
    stop_wait = loop.create_task(stop.wait())
    eof_wait = loop.create_task(input_closed.wait())

    def wake(waited: asyncio.Task[Any]) -> None:
        if not waited.cancelled():
            inbox.put_nowait(WAKE)  # ends the wait for a line below

    # One waiter for the whole loop, not a task and an asyncio.wait per line.
    stop_wait.add_done_callback(wake)
    try:
        while not stop.is_set():
            item = inbox.get_nowait() if not inbox.empty() else await inbox.get()
            if isinstance(item, WakeUp):
                continue
            if isinstance(item, EndOfInput):
                # The requests read just before EOF take their first step before the
                # shutdown cancels them: as they would have, had the EOF come later.
                await asyncio.sleep(0)
                return "eof"
            dispatcher.handle_line(item)
            # The host is not reading stdout: wait for room, but not past a stop or EOF.
            if dispatcher.held and not await _first(loop.create_task(dispatcher.flush_held()), stop_wait, eof_wait):
                return "shutdown" if stop.is_set() else "eof"
        return "shutdown"
    finally:
        stop_wait.cancel()
        eof_wait.cancel()


async def _settle(aws: set[asyncio.Task[None]], timeout: float, writer: LineWriter) -> None:
    """Wait for ``aws`` up to ``timeout``, or until the host has stopped reading stdout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    pending = {task for task in aws if task is not asyncio.current_task()}
    while pending and not writer.stalled() and loop.time() < end:
        _done, pending = await asyncio.wait(pending, timeout=min(0.05, max(0.0, end - loop.time())))


async def _shut_down(services: Services, lifecycle: Lifecycle, dispatcher: Dispatcher, reader: LineSource,
                     writer: LineWriter) -> None:
    """Answer what was read, cancel what runs, let committed work finish, flush, close.

    Each step's budget comes from the clock started at the stop signal.
    """
    clock = lifecycle.clock
    dispatcher.accepting = False
    # Lines already read are still answered (requests with RequestCancelled); give the
    # reader a moment to hand over what the host wrote just before.
    await asyncio.sleep(0.02)
    while not reader.inbox.empty():
        pending = reader.inbox.get_nowait()
        if not isinstance(pending, EndOfInput | WakeUp):
            dispatcher.handle_line(pending)
    flush = asyncio.get_running_loop().create_task(dispatcher.flush_held())
    # A sidecar:shutdown in flight (EOF or a signal came while it waited for the other
    # requests) still gets its {} answer.
    keep = next((rid for rid, entry in dispatcher.inflight.items() if entry.ctx.method == lifecycle_channel.SHUTDOWN),
                None)
    await dispatcher.cancel_all(reason="shutdown", timeout=0, keep=keep)
    # Cancelled requests answer at once; one past its point of no return (a config being
    # written) swallows the cancel and finishes, and its real answer still goes out.
    # Waiting ends early when the host has stopped reading: nothing could reach it.
    await _settle({*dispatcher.tasks, flush}, clock.left(reserve=_AFTER_TASKS_S), writer)
    flush.cancel()
    try:
        # Every settle of a cancelled call reaches the ledger before we go.
        await asyncio.wait_for(services.budget.drain(), min(0.3, clock.left(reserve=0.15)))
    except TimeoutError:
        log.warning("ledger_drain_timeout")
    try:
        # Off the loop and bounded: a settle waiting on another process's lock must not
        # freeze the loop past the final flush.
        await asyncio.wait_for(asyncio.to_thread(services.ledger.close),
                               max(0.05, min(0.3, clock.left(reserve=0.5))))
    except TimeoutError:
        log.warning("ledger_close_timeout")
    try:
        await asyncio.wait_for(services.pool.aclose(), min(0.2, clock.left(reserve=0.1)))
    except TimeoutError:
        log.warning("provider_close_timeout")
    try:  # local model servers: SIGTERM, SIGKILL after a short grace
        await asyncio.wait_for(services.servers.aclose(), min(0.4, clock.left(reserve=0.1)))
    except TimeoutError:
        log.warning("local_server_stop_timeout")
    services.servers.kill_now()  # whatever is left, without waiting
    # A request still finishing committed work (a config write) gets the last moments
    # before the final flush, so its answer is queued before the writer stops.
    await _settle(set(dispatcher.tasks), clock.left(reserve=0.15), writer)
    # Lines begin until 50 ms before the watchdog, and only if they can end 10 ms before
    # it: the exit cuts no line, unless the host reads slower than ASSUMED_READ_RATE.
    await writer.drain_and_close(timeout=clock.left(reserve=0.05), grace=0.04)
    unanswered = len(dispatcher.inflight) + len(dispatcher.held)
    if unanswered or writer.pending or writer.writing:
        log.warning("shutdown_dropped", unanswered=unanswered, lines_unwritten=writer.pending,
                    line_cut=writer.writing)


def _configure_limits(book: LimiterBook, cfg: ModelConfig) -> None:
    entries: dict[str, ProviderEntry] = cfg.providers.entries()
    book.configure(
        {name: entry.rate_limit for name, entry in entries.items()},
        {(name, model): limit for name, entry in entries.items()
         for model, limit in (entry.model_rate_limits or {}).items()},
    )


def _classify(prompt: str, system: str | None, context: object) -> tuple[str, str, tuple[str, ...]]:
    from sidecar.core.classifier import classify

    result = classify(prompt, system, context)
    return result.task_type, result.complexity, result.signals


def debug_state(loop: asyncio.AbstractEventLoop, services: Services, dispatcher: Dispatcher) -> dict[str, int]:
    """Counts that show a leak from outside: live asyncio tasks, requests, threads."""
    return {
        "tasks": len(asyncio.all_tasks(loop)),
        "in_flight": len(dispatcher.inflight),
        "request_tasks": len(dispatcher.tasks),
        "open_reservations": services.budget.open_reservations,
        "threads": threading.active_count(),
        "gc_frozen": gc.get_freeze_count(),
        "gc_young_collections": gc.get_stats()[0]["collections"],
        "gc_full_collections": gc.get_stats()[2]["collections"],
    }


def _install_debug_dump(loop: asyncio.AbstractEventLoop, services: Services, dispatcher: Dispatcher) -> None:
    """``SIGUSR1`` logs :func:`debug_state` as one ``debug_state`` line on stderr (POSIX only).

    The tests use it to check that faults leave no task behind; a host may use it to
    look into a sidecar that seems stuck. Nothing on stdout changes.
    """
    if sys.platform == "win32" or not hasattr(signal, "SIGUSR1"):  # pragma: no cover
        return
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("debug_state", **debug_state(loop, services, dispatcher)))
