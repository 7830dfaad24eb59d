"""Where the sidecar spends its time per request: py-spy on the sidecar under load.

    .venv/bin/python bench/profile_sidecar.py [--load generate|conc|stream] [--seconds 8]
                                              [--httpx] [--tmpfs] [--top 25]

Starts ``bench/fakeserver.py``, a host (``bench/worker.py sidecar``) driving the source
sidecar, and ``py-spy record`` on the sidecar process (py-spy comes from the throwaway
venv ``bench/.venv-transport``, installed there on first use), then prints the functions
with the most samples: on their own ("self") and with what they call ("total", only
the sidecar's own functions), and the share of each thread. The raw collapsed stacks are
kept next to the output (``--raw FILE``) for a flame graph.

Loads: ``generate``: ``model:generate`` one at a time; ``conc``: 64 in flight;
``stream``: ``model:stream``, 64 in flight; ``stream-seq``: ``model:stream`` one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench.compare import (  # noqa: E402
    TRANSPORT_VENV,
    FakeServer,
    Worker,
    ensure_venv,
    venv_python,
    write_config,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=["generate", "conc", "stream", "stream-seq"], default="generate")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--httpx", action="store_true", help="the sidecar on httpx's own transport")
    parser.add_argument("--tmpfs", action="store_true", help="data dir (usage ledger) on /dev/shm")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, default=None, help="keep the collapsed stacks here")
    parser.add_argument("--cprofile", action="store_true",
                        help="cProfile the event-loop thread instead (exact call counts, µs per request)")
    args = parser.parse_args()
    problem = ensure_venv(TRANSPORT_VENV, ["py-spy"], "import sys", False)
    py_spy = TRANSPORT_VENV / "bin" / "py-spy"
    if not py_spy.exists():
        subprocess.run([str(venv_python(TRANSPORT_VENV)), "-m", "pip", "install", "-q", "py-spy"], check=True)
    if problem:
        raise SystemExit(problem)
    logs = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    data_dir = Path(tempfile.mkdtemp(prefix="bench-profile-", dir="/dev/shm" if args.tmpfs else None))
    raw = args.raw or logs / "stacks.txt"
    fake = FakeServer(logs)
    write_config(data_dir, fake.base_url)
    env = {"MODEL_SIDECAR_HTTP_TRANSPORT": "httpx"} if args.httpx else {}
    pstats_out = logs / "sidecar.pstats"
    if args.cprofile:
        cmd = [sys.executable, str(BENCH / "sidecar_cprofile.py")]
        env |= {"BENCH_PROFILE_OUT": str(pstats_out)}
    else:
        cmd = [sys.executable, "-m", "sidecar"]
    worker = Worker("sidecar", sys.executable, "sidecar", fake.base_url, logs, sidecar_cmd=cmd, data_dir=data_dir,
                    env=env)
    pid = worker.pids["server"]
    try:
        worker.command(cmd="conc", n=200, inflight=64, stream=args.load.startswith("stream"))  # warm-up
        if args.cprofile:
            os.kill(pid, signal.SIGRTMIN + 3)
            spy = None
        else:
            spy = subprocess.Popen([str(py_spy), "record", "-p", str(pid), "-d", str(args.seconds),
                                    "-r", "200", "--format", "raw", "--threads", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
        deadline = time.perf_counter() + args.seconds
        done = 0
        while time.perf_counter() < deadline:
            if args.load in ("generate", "stream-seq"):
                reply = worker.command(cmd="seq", n=50, stream=args.load == "stream-seq")
                done += len(reply["lat"])
            else:
                reply = worker.command(cmd="conc", n=256, inflight=64, stream=args.load.startswith("stream"))
                done += reply["done"]
        if spy is not None:
            spy.wait(args.seconds + 30)
        else:
            os.kill(pid, signal.SIGRTMIN + 4)
            for _ in range(100):
                time.sleep(0.1)
                if pstats_out.exists() and pstats_out.stat().st_size:
                    break
            time.sleep(0.3)
    finally:
        worker.close()
        fake.close()
        if args.tmpfs:
            shutil.rmtree(data_dir, ignore_errors=True)
    if args.cprofile:
        print(f"load {args.load}, {done} requests; stats in {pstats_out}")
        summarize_pstats(pstats_out, done, args.top)
    else:
        print(f"load {args.load}, {done} requests in ~{args.seconds} s; stacks in {raw}")
        summarize(raw, args.top)
    return 0


def summarize_pstats(path: Path, requests: int, top: int) -> None:
    """Own and cumulative time per request (µs) of the busiest functions."""
    import pstats

    stats = pstats.Stats(str(path))
    rows = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{name} ({Path(file).name}:{line})" if file != "~" else name
        rows.append((where, calls, tottime, cumtime, file))
    total = sum(r[2] for r in rows)
    print(f"\nevent-loop thread busy {total:.2f} s = {1e6 * total / max(1, requests):.0f} µs per request "
          "(cProfile inflates this: read the shares)")
    print("\nOwn time (µs per request, calls per request):")
    for where, calls, tottime, _cum, _f in sorted(rows, key=lambda r: -r[2])[:top]:
        print(f"  {1e6 * tottime / requests:8.1f} µs  {calls / requests:6.1f}x  {where}")
    print("\nCumulative, the sidecar's own functions (µs per request):")
    own = [r for r in rows if "/sidecar/" in r[4]]
    for where, calls, _tot, cumtime, _f in sorted(own, key=lambda r: -r[3])[:top]:
        print(f"  {1e6 * cumtime / requests:8.1f} µs  {calls / requests:6.1f}x  {where}")


def summarize(raw: Path, top: int) -> None:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        threads[frames[0]] += n
        frames = [f for f in frames[1:] if "<frozen" not in f or "_path_stat" in f] or frames
        own[frames[-1]] += n
        for frame in set(frames):
            if "sidecar/" in frame:
                total[_fn(frame)] += n
    if not samples:
        print("no samples")
        return
    print(f"\n{samples} samples. Threads:")
    for name, n in threads.most_common():
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print("\nSelf (the frame on top of the stack):")
    for name, n in own.most_common(top):
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print("\nTotal, the sidecar's own functions:")
    for name, n in total.most_common(top):
        print(f"  {100 * n / samples:5.1f}%  {name}")
    print(json.dumps({"samples": samples}))


def _fn(frame: str) -> str:
    """``func (file.py:123)`` → ``func (file.py)``: one entry per function, not per line."""
    head, _, rest = frame.partition(" (")
    return f"{head} ({rest.rsplit(':', 1)[0]})" if rest else frame


if __name__ == "__main__":
    raise SystemExit(main())
