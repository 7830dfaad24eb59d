"""Command line: flags, stdio claim, logging, and the run of the event loop.

``model-sidecar [--data-dir DIR] [--log-level LEVEL] [--max-message-bytes N]``;
``--version`` prints the version and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import io
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from sidecar import __version__

__all__ = ["DATA_DIR_UNUSABLE_EXIT", "DEFAULT_MAX_MESSAGE_BYTES", "main", "parse_args", "resolve_data_dir"]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
APP_NAME = "model-sidecar"
#: Exit status when the data dir cannot be created (sysexits.h EX_CANTCREAT); no
#: ``sidecar:ready`` was sent.
DATA_DIR_UNUSABLE_EXIT = 73


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1024:
        raise argparse.ArgumentTypeError("must be at least 1024")
    return number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=APP_NAME,
        description="Model sidecar: newline-delimited JSON-RPC on stdin/stdout (see docs/protocol.md).",
    )
    parser.add_argument("--data-dir", type=Path, help="config.json and usage ledger location")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.add_argument(
        "--max-message-bytes", type=_positive_int, default=DEFAULT_MAX_MESSAGE_BYTES,
        help="longest accepted input line (default 16 MiB)",
    )
    parser.add_argument("--version", action=_VersionAction)
    return parser.parse_args(argv)


class _VersionAction(argparse.Action):
    """``--version``: like argparse's, but the text (a resource read) is only built when
    asked for, not on every start, where it would delay ``sidecar:ready``."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "show the version and build stamp, then exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``model-sidecar 0.1.0``, plus the commit and date a frozen build was stamped with."""
    text = f"{APP_NAME} {__version__}"
    try:
        from importlib import resources

        raw = resources.files("sidecar.data").joinpath("build.json").read_bytes()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return text  # a source run: no stamp
    import json

    stamp = json.loads(raw)
    return f"{text} (build {stamp.get('commit', '?')}, {stamp.get('builtAt', '?')}, {stamp.get('kind', 'frozen')})"


def resolve_data_dir(flag: Path | None) -> Path:
    """``--data-dir``, else ``MODEL_SIDECAR_DATA_DIR``, else the platform's user data dir."""
    if flag is not None:
        return flag.expanduser().resolve()
    env = os.environ.get("MODEL_SIDECAR_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def main(argv: list[str] | None = None) -> None:
    multiprocessing.freeze_support()  # a frozen binary must not re-run itself as a worker
    from sidecar.local.parent_watch import note_parent

    note_parent()  # the host to outlive (sidecar.app watches it); stdlib only
    args = parse_args(argv)
    # Claim the protocol pipes before anything else can print: from here on fd 1 is stderr.
    from sidecar import CHANNEL_NAMES, PROTOCOL_VERSION
    from sidecar.transport.claim import claim_stdio, ready_line

    wire_in, wire_out = claim_stdio()
    if isinstance(sys.stderr, io.TextIOWrapper):
        # The log is UTF-8 JSON lines on every platform (a Windows console code page
        # must not turn a non-ASCII prompt into a crash), flushed per line even in a
        # frozen build, which ignores PYTHONUNBUFFERED and PYTHONUTF8.
        sys.stderr.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=True)
    faulthandler.enable(file=sys.stderr)
    # A SIGTERM during the imports below must still mean a clean exit 0 within 2 s: the
    # clock starts its watchdog now, and serve() sees that it started.
    from sidecar.transport.lifecycle import StopClock, install_stop_handlers

    clock = StopClock()
    install_stop_handlers(lambda: None, clock)
    if hasattr(signal, "SIGUSR1"):  # the debug_state dump, once the loop takes it over
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _exit_data_dir_unusable(data_dir, exc)
    # Ready before the heavy imports: what the host sends meanwhile waits in the pipe.
    wire_out.write(ready_line(PROTOCOL_VERSION, __version__, list(CHANNEL_NAMES)))

    from sidecar.app import serve
    from sidecar.logs import configure_logging
    from sidecar.secrets import Redactor

    redactor = Redactor()
    configure_logging(args.log_level, redactor)
    # Not asyncio.run: on the way out it joins the default executor's threads, and a
    # config write or a ledger call still running there would hold the exit past 2 s.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(
            wire_in, wire_out,
            data_dir=data_dir,
            max_message_bytes=args.max_message_bytes,
            redactor=redactor,
            env=os.environ,
            clock=clock,
        ))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before the handler was installed
        pass
    sys.stderr.flush()
    # The stdin reader thread may sit in a blocking read, worker threads may still run:
    # leave without joining any of them.
    os._exit(0)


def _exit_data_dir_unusable(data_dir: Path, exc: OSError) -> None:
    """One JSON log line saying why, then exit :data:`DATA_DIR_UNUSABLE_EXIT`, before ready.

    No ``sidecar:ready``: the config and the usage ledger live in the data dir, so no
    request could be served as the protocol describes (and spending could not be
    recorded). The host sees stdout close without ready and this exit status.
    """
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, FileExistsError):
        reason = "it exists and is not a directory"
    message = f"cannot create the data dir {data_dir}: {reason}"
    line = {"event": "data_dir_unusable", "level": "error", "path": str(data_dir), "reason": reason,
            "message": message}
    sys.stderr.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stderr.flush()
    os._exit(DATA_DIR_UNUSABLE_EXIT)
