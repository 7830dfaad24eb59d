"""A per-step timeout for a loop of awaits (a stream's chunks) with one lazily moved timer.

``asyncio.timeout`` per chunk schedules and cancels a timer each time (a ``TimerHandle``,
a heap push, a cancel): ~10 % of the event loop's time when relaying streams. Here each
step only moves a deadline; the one timer, when it fires early, moves itself to the
deadline. It behaves like ``asyncio.timeout`` around each step: the step is cancelled at
its deadline and ``TimeoutError`` raised in its place; any other cancellation is left as
it is.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Watchdog"]


class Watchdog:
    """``async with dog.step(seconds):`` bounds one step; ``close()`` when the loop ends."""

    __slots__ = ("_active", "_at", "_cancelling", "_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the timer is due
        self._deadline = 0.0  # when the current step is due
        self._active = False
        self._fired = False
        self._cancelling = 0

    def step(self, seconds: float) -> Watchdog:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            if self._task is None:
                raise RuntimeError("Watchdog must be used inside a task")
        self._deadline = self._loop.time() + seconds
        return self

    async def __aenter__(self) -> None:
        assert self._loop is not None and self._task is not None
        self._active = True
        self._cancelling = self._task.cancelling()
        if self._handle is None or self._deadline < self._at:
            if self._handle is not None:
                self._handle.cancel()
            self._at = self._deadline
            self._handle = self._loop.call_at(self._deadline, self._due)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._active = False
        if self._fired:
            self._fired = False
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _due(self) -> None:
        self._handle = None
        if not self._active:
            return  # between steps: the next step sets a timer again
        assert self._loop is not None and self._task is not None
        if self._deadline > self._at:  # a later step moved the deadline
            self._at = self._deadline
            self._handle = self._loop.call_at(self._deadline, self._due)
            return
        self._fired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
