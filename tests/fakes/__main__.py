"""Command line: run one fake provider server until stdin closes or SIGTERM/SIGINT.

    python -m tests.fakes --kind openai [--port 0] [--api-key K] [--models a,b] [--no-stdin]

The first stdout line is the server's base URL (flushed at once), so a parent
process can read it and point a sidecar or a benchmark at it. With
``--no-stdin`` the server ignores stdin (useful when started with stdin
redirected from /dev/null) and runs until a signal arrives.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .server import KINDS, FakeServer


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes", description="Run one fake LLM provider.")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--api-key", default=None, help="require this key on chat and model endpoints")
    parser.add_argument("--models", default=None, help="comma-separated model ids for the listing endpoints")
    parser.add_argument(
        "--strict-models", action="store_true", help="404 for chat requests naming unknown models"
    )
    parser.add_argument("--no-stdin", action="store_true", help="do not stop when stdin closes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    models = [m for m in args.models.split(",") if m] if args.models else None
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = FakeServer(
        args.kind, api_key=args.api_key, models=models, strict_models=args.strict_models, port=args.port
    ).start()
    try:
        print(server.base_url, flush=True)
        if not args.no_stdin:

            def wait_for_eof() -> None:
                try:
                    while sys.stdin.buffer.read(65536):
                        pass
                finally:
                    done.set()

            threading.Thread(target=wait_for_eof, name="stdin-eof", daemon=True).start()
        # Wake up regularly so the main thread can run the Python-level signal handler.
        while not done.wait(0.2):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
