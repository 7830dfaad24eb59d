"""When shutdown began, and the watchdog that ends the process in time whatever happens.

The protocol gives the sidecar 2 s from a shutdown signal (SIGTERM, SIGINT/CTRL_BREAK,
stdin EOF, ``sidecar:shutdown``, or the host closing stdout) to exit. :class:`StopClock`
records that moment once and starts a watchdog thread that calls ``os._exit(0)``
:data:`SHUTDOWN_HARD_LIMIT_S` later, so neither a host that stopped reading stdout nor a
handler busy on the event loop can keep the process alive. The orderly shutdown steps
take their time budgets from :meth:`StopClock.left`. Only the standard library is
imported here: the command line arms the clock before the heavy imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["SHUTDOWN_HARD_LIMIT_S", "STOP_SIGNALS", "StopClock", "install_stop_handlers"]

#: From the shutdown signal to ``os._exit``; the protocol allows 2 s.
SHUTDOWN_HARD_LIMIT_S = 1.8

STOP_SIGNALS: tuple[signal.Signals, ...] = (
    (signal.SIGINT, signal.SIGBREAK) if sys.platform == "win32"  # type: ignore[attr-defined]
    else (signal.SIGTERM, signal.SIGINT)
)


def _hard_exit() -> None:
    # Runs on the watchdog thread: stdout may be blocked forever, stderr too, so write
    # nothing that could block and leave at once.
    os._exit(0)


class StopClock:
    """The moment shutdown began (monotonic seconds) and its watchdog."""

    def __init__(self, limit: float = SHUTDOWN_HARD_LIMIT_S, on_expiry: Callable[[], None] = _hard_exit) -> None:
        self.limit = limit
        self._on_expiry = on_expiry
        self.started: float | None = None

    def start(self) -> float:
        """Mark the start of shutdown (only the first call counts) and arm the watchdog.

        Called from signal handlers too, so it takes no lock: a handler interrupting
        another call at worst arms a second watchdog a few microseconds later.
        """
        if self.started is None:
            self.started = time.monotonic()
            watchdog = threading.Timer(self.limit, self._on_expiry)
            watchdog.daemon = True
            watchdog.name = "shutdown-watchdog"
            watchdog.start()
        return self.started

    def left(self, reserve: float = 0.0) -> float:
        """Seconds until ``reserve`` seconds before the watchdog fires (never negative)."""
        started = self.start()
        return max(0.0, started + self.limit - reserve - time.monotonic())


def install_stop_handlers(on_stop: Callable[[], None], clock: StopClock) -> None:
    """SIGTERM/SIGINT (SIGINT/SIGBREAK on Windows) start ``clock`` at once, then ``on_stop``.

    A plain ``signal.signal`` handler rather than the event loop's: it runs between two
    bytecodes of the main thread even while a handler keeps the loop busy, so the
    watchdog starts at the signal, not when the loop next looks.
    """

    def handler(_signum: int, _frame: object) -> None:
        clock.start()
        on_stop()

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
