"""Exit with the host: watch the parent process, besides stdin EOF.

EOF on stdin is the usual sign that the host is gone, but it never comes while another
process still holds the pipe's write end (a grandchild that inherited it, or a host
that handed stdin over). So a daemon thread also watches the parent:

* Linux: a pidfd of the parent (``os.pidfd_open``, Linux 5.3+) becomes readable when it
  exits; the thread blocks on it and wakes at once.
* Other POSIX systems: ``os.getppid()`` changes when the parent dies (the orphan is
  re-parented to init or a subreaper); it is polled every :data:`POLL_INTERVAL_S`.
* Windows: ``WaitForSingleObject`` on a ``SYNCHRONIZE`` handle of the parent.

When the parent is gone, ``on_gone`` runs (from the watch thread): the sidecar then
shuts down as for SIGTERM. ``MODEL_SIDECAR_PARENT_WATCH=0`` turns the watch off, for
a host that spawns the sidecar through a launcher that exits at once.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.transport.lifecycle import StopClock

__all__ = ["POLL_INTERVAL_S", "WATCH_ENV", "note_parent", "watch_parent"]

WATCH_ENV = "MODEL_SIDECAR_PARENT_WATCH"
#: How often the parent pid is compared where no pidfd or handle can be waited on.
POLL_INTERVAL_S = 0.5
#: The parent pid as the command line saw it first thing (see :func:`note_parent`).
_noted_parent: list[int] = []


def note_parent() -> None:
    """Remember the parent pid now, before the slow start-up imports.

    A parent that dies during them would otherwise be missed: by the time the watch
    starts, ``getppid()`` already names init. Only the standard library is imported here.
    """
    _noted_parent[:] = [os.getppid()]


def watch_parent(on_gone: Callable[[], None], clock: StopClock | None = None,
                 env: Mapping[str, str] = os.environ) -> threading.Thread | None:
    """Start the watch thread (None when it is turned off or there is no parent to watch).

    ``clock`` is started the moment the parent is found gone, as a signal starts it.
    """
    if env.get(WATCH_ENV, "") == "0":
        return None
    parent = _noted_parent[0] if _noted_parent else os.getppid()
    if parent <= 1:
        return None  # started by init (or a container's pid 1): no host to outlive
    wait = _windows_waiter(parent) if sys.platform == "win32" else _posix_waiter(parent)
    thread = threading.Thread(target=_run, args=(wait, parent, on_gone, clock), name="parent-watch", daemon=True)
    thread.start()
    return thread


def _run(wait: Callable[[], bool], parent: int, on_gone: Callable[[], None], clock: StopClock | None) -> None:
    if not wait():
        return
    if clock is not None:
        clock.start()
    import structlog

    structlog.get_logger("sidecar.app").info("parent_gone", parent_pid=parent)
    try:
        on_gone()
    except RuntimeError:
        pass  # the event loop has already closed: the sidecar is on its way out anyway


def _posix_waiter(parent: int) -> Callable[[], bool]:
    pidfd = _pidfd(parent)

    def wait() -> bool:
        try:
            while os.getppid() == parent:
                if pidfd is None:
                    select.select([], [], [], POLL_INTERVAL_S)
                elif select.select([pidfd], [], [], 5.0)[0]:
                    return True  # the parent exited (re-parenting may lag a moment behind)
            return True
        finally:
            if pidfd is not None:
                os.close(pidfd)

    return wait


def _pidfd(parent: int) -> int | None:
    """A pidfd of ``parent``, if the platform has them and it is still our parent."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(parent)
    except OSError:
        return None
    if os.getppid() != parent:  # the pid may already name another process
        os.close(fd)
        return None
    return fd


def _windows_waiter(parent: int) -> Callable[[], bool]:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        raise OSError("Windows only")
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.WaitForSingleObject.restype = wintypes.DWORD
    kernel32.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
    synchronize, infinite = 0x00100000, 0xFFFFFFFF
    handle = kernel32.OpenProcess(synchronize, False, parent)

    def wait() -> bool:
        if not handle:
            return False  # not allowed to open it: stdin EOF stays the only sign
        kernel32.WaitForSingleObject(handle, infinite)
        kernel32.CloseHandle(handle)
        return True

    return wait
