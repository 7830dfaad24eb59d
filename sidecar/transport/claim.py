"""Start-up, before anything heavy is imported: take the protocol pipes, announce readiness.

:func:`claim_stdio` moves the protocol pipes to private descriptors and points fd 1 at
stderr and fd 0 at the null device, so a stray ``print``, a C library or a child process
can never write into (or read from) the protocol stream. :func:`ready_line` is the
``sidecar:ready`` notification, written as soon as the pipes are claimed: requests the
host sends meanwhile wait in the pipe (then in the reader's queue) until the dispatcher
runs, so none fails because imports were still going on. Only the standard library is
imported here, to keep spawn-to-ready short.
"""

from __future__ import annotations

import json
import os
import sys
from typing import BinaryIO

__all__ = ["claim_stdio", "ready_line"]


def claim_stdio() -> tuple[BinaryIO, BinaryIO]:
    """Take fds 0 and 1 for the protocol; leave the process with devnull/stderr there.

    Returns binary, unbuffered file objects for the protocol input and output. The
    duplicated descriptors are non-inheritable (PEP 446), so child processes never hold
    the host's pipe open (which would also stop stdin EOF from ever arriving).
    """
    wire_in = os.dup(0)
    wire_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        # Bytes in, bytes out: no CRLF translation of the protocol pipes.
        msvcrt.setmode(wire_in, os.O_BINARY)  # type: ignore[attr-defined]
        msvcrt.setmode(wire_out, os.O_BINARY)  # type: ignore[attr-defined]
        _redirect_windows_std_handles()
    return os.fdopen(wire_in, "rb", buffering=0), os.fdopen(wire_out, "wb", buffering=0)


def _redirect_windows_std_handles() -> None:  # pragma: no cover
    # Child processes on Windows inherit the Win32 std handles, not the CRT fds: point
    # those at the new fd 0/1 too, as the MCP SDK's stdio claim does.
    import ctypes
    import msvcrt

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    kernel32.SetStdHandle(-10, msvcrt.get_osfhandle(0))  # type: ignore[attr-defined]
    kernel32.SetStdHandle(-11, msvcrt.get_osfhandle(1))  # type: ignore[attr-defined]


def ready_line(protocol_version: int, version: str, channels: list[str]) -> bytes:
    """The ``sidecar:ready`` notification as one protocol line (ASCII JSON, ``\\n``)."""
    message = {
        "jsonrpc": "2.0",
        "method": "sidecar:ready",
        "params": {
            "protocolVersion": protocol_version,
            "version": version,
            "channels": channels,
            "pid": os.getpid(),
        },
    }
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
