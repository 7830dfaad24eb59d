"""Run the sidecar with cProfile on its event-loop thread, switched by signals.

Benchmark only. ``SIGRTMIN+3`` starts profiling, ``SIGRTMIN+4`` stops it (the sidecar
uses ``SIGUSR1`` itself) and writes the stats
to ``BENCH_PROFILE_OUT`` (so start-up imports and warm-up stay out of the figures).
Used by ``bench/profile_sidecar.py --cprofile``.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":
    out = os.environ["BENCH_PROFILE_OUT"]
    from sidecar import cli

    profile = cProfile.Profile()

    def start(_signum: int, _frame: object) -> None:
        profile.enable()

    def stop(_signum: int, _frame: object) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGRTMIN + 3, start)
    signal.signal(signal.SIGRTMIN + 4, stop)
    cli.main(sys.argv[1:])
