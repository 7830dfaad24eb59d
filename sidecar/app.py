"""Wiring and lifecycle: build every service, serve the stdio loop, shut down in time.

Shutdown comes from ``sidecar:shutdown``, stdin EOF or SIGTERM (SIGINT/CTRL_BREAK on
Windows). The sidecar then stops accepting requests, cancels the ones in flight (each
answered ``RequestCancelled``), closes provider connections, flushes stdout and exits 0,
within 2 s: the steps are bounded, and a watchdog exits at :data:`SHUTDOWN_HARD_LIMIT_S`.
"""

from __future__ import annotations

import asyncio
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
from sidecar.core.budget import BudgetManager
from sidecar.core.config import ConfigManager
from sidecar.core.planner import Planner
from sidecar.core.pool import ProviderPool
from sidecar.core.ratelimit import LimiterBook
from sidecar.core.registry import Catalog, ModelRegistry
from sidecar.core.router import Router
from sidecar.core.stats import StatsBook
from sidecar.providers import create_provider
from sidecar.providers.http import HttpClientFactory
from sidecar.secrets import Redactor
from sidecar.store.ledger import Ledger
from sidecar.transport.dispatcher import Dispatcher, RequestId
from sidecar.transport.stdio import EndOfInput, LineReader, LineWriter
from sidecar.wire.config import ModelConfig, ProviderEntry

__all__ = ["SHUTDOWN_BUDGET_S", "Services", "serve"]

log = structlog.get_logger("sidecar.app")

#: The protocol allows 2 s from the shutdown signal to exit. The steps below are bounded
#: to about 1.5 s in all; past SHUTDOWN_HARD_LIMIT_S the process exits regardless (a host
#: that stopped reading stdout must not keep it alive).
SHUTDOWN_BUDGET_S = 1.0
SHUTDOWN_HARD_LIMIT_S = 1.8


@dataclass
class Services:
    """Everything the channels use, built once at start-up."""

    config: ConfigManager
    pool: ProviderPool
    router: Router
    stats: StatsBook
    registry: ModelRegistry
    budget: BudgetManager
    ledger: Ledger
    limits: LimiterBook
    dispatcher: Dispatcher | None = None
    #: Sends a notification to the host (set once the writer runs).
    notify: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, data_dir: Path, env: Mapping[str, str], redactor: Redactor,
              http: HttpClientFactory | None = None) -> Services:
        config = ConfigManager(data_dir, env, redactor)
        config.load()
        deny_remote = env.get("MODEL_SIDECAR_DENY_REMOTE", "") not in ("", "0")
        pool = ProviderPool(create_provider, http or HttpClientFactory(deny_remote=deny_remote))
        pool.configure(config.provider_settings())
        config.on_change(lambda _cfg: pool.configure(config.provider_settings()))
        stats = StatsBook()
        registry = ModelRegistry(Catalog.load(), lambda: config.config.model_overrides)
        planner = Planner(pool, lambda: config.config, registry, stats, classify=_classify)
        ledger = Ledger.open(data_dir)
        report = ledger.report
        log.info("ledger_open", path=str(report.path), persistent=report.persistent,
                 stale_reservations=report.stale_reservations, moved_aside=report.moved_aside,
                 problem=report.problem)
        services: Services | None = None

        async def alert(payload: dict[str, Any]) -> None:
            if services is not None and services.notify is not None:
                await services.notify("model:budget-alert", payload)

        budget = BudgetManager(ledger, lambda: config.config.budget, timezone=config.config.budget.timezone,
                               on_alert=alert)
        config.on_change(lambda cfg: budget.set_timezone(cfg.budget.timezone))
        limits = LimiterBook()
        _configure_limits(limits, config.config)
        config.on_change(lambda cfg: _configure_limits(limits, cfg))
        router = Router(pool, lambda: config.config, stats, planner, budget=budget, limits=limits)
        services = cls(config=config, pool=pool, router=router, stats=stats, registry=registry,
                       budget=budget, ledger=ledger, limits=limits)
        return services

    async def begin_shutdown(self, *, keep: RequestId | None = None) -> None:
        """Stop accepting, cancel in-flight requests (answered), then signal the loop."""
        dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.accepting = False
            await dispatcher.cancel_all(reason="shutdown", timeout=SHUTDOWN_BUDGET_S / 2, keep=keep)
        asyncio.get_running_loop().call_soon(self.stop.set)


async def serve(
    wire_in: BinaryIO,
    wire_out: BinaryIO,
    *,
    data_dir: Path,
    max_message_bytes: int,
    redactor: Redactor,
    env: Mapping[str, str],
    early_stop: threading.Event | None = None,
) -> None:
    """Run the sidecar until shutdown; returns when everything has been answered."""
    from sidecar.channels import build_channels

    loop = asyncio.get_running_loop()
    services = Services.build(data_dir, env, redactor)
    writer = LineWriter(wire_out, scrub=redactor.scrub_bytes, on_broken_pipe=services.stop.set)
    writer.start()
    channels = build_channels(services)
    dispatcher = Dispatcher(channels=channels, send=writer.send)
    services.dispatcher = dispatcher

    async def notify(method: str, params: dict[str, Any]) -> None:
        await writer.send({"jsonrpc": "2.0", "method": method, "params": params})

    services.notify = notify
    # sidecar:ready already went out (sidecar.transport.claim), before these imports.
    log.info("serving", version=__version__, data_dir=str(data_dir), pid=os.getpid())
    reader = LineReader(wire_in, loop, max_line_bytes=max_message_bytes)
    reader.start()
    _install_signal_handlers(loop, services.stop)
    _install_debug_dump(loop, services, dispatcher)
    if early_stop is not None and early_stop.is_set():
        services.stop.set()  # the signal came while we were still importing

    from sidecar.channels.models import refresh_local_models

    # Not awaited: requests are served meanwhile; the registry fills in as answers come.
    refresh = loop.create_task(refresh_local_models(services))
    stop_wait = loop.create_task(services.stop.wait())
    reason = "shutdown"
    try:
        while not services.stop.is_set():
            get = loop.create_task(reader.inbox.get())
            await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
            try:
                item = await get
            except asyncio.CancelledError:
                break  # stop was set while waiting; nothing was taken from the inbox
            if isinstance(item, EndOfInput):
                reason = "eof"
                break
            await dispatcher.handle_line(item)
    finally:
        log.info("shutting_down", reason=reason, in_flight=len(dispatcher.inflight))
        watchdog = threading.Timer(SHUTDOWN_HARD_LIMIT_S, _hard_exit)
        watchdog.daemon = True
        watchdog.start()
        dispatcher.accepting = False
        # Lines already read are still answered (requests with RequestCancelled); give
        # the reader a moment to hand over what the host wrote just before.
        await asyncio.sleep(0.02)
        while not reader.inbox.empty():
            pending = reader.inbox.get_nowait()
            if not isinstance(pending, EndOfInput):
                await dispatcher.handle_line(pending)
        await dispatcher.cancel_all(reason="shutdown", timeout=SHUTDOWN_BUDGET_S / 2)
        await dispatcher.wait_idle(timeout=0.2)
        try:
            # Every settle of a cancelled call reaches the ledger before we go.
            await asyncio.wait_for(services.budget.drain(), 0.3)
        except TimeoutError:
            log.warning("ledger_drain_timeout")
        services.ledger.close()
        try:
            await asyncio.wait_for(services.pool.aclose(), 0.2)
        except TimeoutError:
            log.warning("provider_close_timeout")
        await writer.drain_and_close(timeout=0.4)
        stop_wait.cancel()
        refresh.cancel()


def _configure_limits(book: LimiterBook, cfg: ModelConfig) -> None:
    entries: dict[str, ProviderEntry] = {
        "openai": cfg.providers.openai, "anthropic": cfg.providers.anthropic, "ollama": cfg.providers.ollama,
        **cfg.providers.custom,
    }
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
    }


def _install_debug_dump(loop: asyncio.AbstractEventLoop, services: Services, dispatcher: Dispatcher) -> None:
    """``SIGUSR1`` logs :func:`debug_state` as one ``debug_state`` line on stderr (POSIX only).

    The tests use it to check that faults leave no task behind; a host may use it to
    look into a sidecar that seems stuck. Nothing on stdout changes.
    """
    if sys.platform == "win32" or not hasattr(signal, "SIGUSR1"):  # pragma: no cover
        return
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("debug_state", **debug_state(loop, services, dispatcher)))


def _hard_exit() -> None:
    # Runs on the watchdog thread: stdout may be blocked forever, stderr too, so write
    # nothing that could block and leave at once.
    os._exit(0)


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    if sys.platform == "win32":  # pragma: no cover - no add_signal_handler on Windows
        def handler(_signum: int, _frame: object) -> None:
            loop.call_soon_threadsafe(stop.set)

        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGBREAK"):
            signal.signal(signal.SIGBREAK, handler)
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
