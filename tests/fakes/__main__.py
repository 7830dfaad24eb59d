"""Command line: run one fake provider server until stdin closes or SIGTERM/SIGINT.

    python -m tests.fakes --kind openai [--port 0] [--api-key K] [--models a,b] [--no-stdin]
                          [--default reply|drip] [--text T] [--chunks N] [--delay-ms D]

The first stdout line is the server's base URL (flushed at once), so a parent
process can read it and point a sidecar or a benchmark at it. With
``--no-stdin`` the server ignores stdin (useful when started with stdin
redirected from /dev/null) and runs until a signal arrives.

``--default`` sets the behaviour every chat request gets (the server's default):
``reply`` is ``Reply(text)`` (``--chunks N`` streams N pieces ``"w0", " w1", ...``
instead; ``--delay-ms D`` waits D ms before each streamed chunk), ``drip`` is
``Drip(interval_s=D/1000, text=T)``. Slow streams for hosts' cancellation and crash tests.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .behaviours import DEFAULT_TEXT, Behaviour, Drip, Reply
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
    parser.add_argument(
        "--default", choices=("reply", "drip"), default=None, help="behaviour of every chat request"
    )
    parser.add_argument("--text", default=None, help="answer text of the default behaviour")
    parser.add_argument("--chunks", type=int, default=None, help="reply: stream N pieces 'w0', ' w1', ...")
    parser.add_argument(
        "--delay-ms", type=int, default=None, help="reply: delay before each streamed chunk; drip: interval"
    )
    return parser.parse_args(argv)


def _default_behaviour(args: argparse.Namespace) -> Behaviour | None:
    if args.default is None and args.text is None and args.chunks is None and args.delay_ms is None:
        return None
    delay_s = (args.delay_ms or 0) / 1000
    if args.default == "drip":
        return Drip(interval_s=delay_s or 1.0, text=args.text if args.text is not None else "slow")
    if args.chunks is not None:
        chunks = [f"{' ' if i else ''}w{i}" for i in range(args.chunks)]
        return Reply(text="".join(chunks), chunks=chunks, chunk_delay_s=delay_s)
    return Reply(text=args.text if args.text is not None else DEFAULT_TEXT, chunk_delay_s=delay_s)


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
    behaviour = _default_behaviour(args)
    if behaviour is not None:
        server.set_default(behaviour)
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
