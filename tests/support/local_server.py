"""The embedded local model served for tests and benchmarks, tied to its parent.

``scripts/local_model.py serve --until-eof`` on a free port: the server stops when the
pipe to it closes, so a test run that dies leaves no server behind.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

__all__ = ["LocalServerError", "local_server"]


class LocalServerError(RuntimeError):
    """The server did not start; the message holds the end of its stderr."""


@contextlib.contextmanager
def local_server(log: Path | None = None) -> Iterator[str]:
    """Serve the model for the ``with`` block; yields its base URL."""
    command = [sys.executable, str(REPO / "scripts" / "local_model.py"), "serve", "--port", "0", "--until-eof"]
    proc = subprocess.Popen([*command, *(["--log", str(log)] if log else [])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise LocalServerError(f"the local model server did not start: "
                               f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
    try:
        yield url
    finally:
        proc.stdin.close()  # --until-eof: the server stops
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
