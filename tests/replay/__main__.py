"""``python -m tests.replay FILE... [--record]``: replay (or re-record) transcripts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.replay.runner import replay


def main() -> int:
    parser = argparse.ArgumentParser(description="Replay stdio transcripts against the sidecar.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--record", action="store_true", help="rewrite the expected lines from a live run")
    args = parser.parse_args()
    failed = 0
    for path in args.files:
        try:
            replay(path, record=args.record)
        except AssertionError as exc:
            failed += 1
            sys.stderr.write(f"FAIL {path}: {exc}\n")
        else:
            sys.stderr.write(f"ok   {path}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
