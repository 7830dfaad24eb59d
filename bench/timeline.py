"""Where one sequential request spends its time inside the sidecar, step by step.

    .venv/bin/python bench/timeline.py [--load generate|stream] [-n 400] [--tmpfs] [--json FILE]
    .venv/bin/python bench/timeline.py --all     # each of the four 3 times, into bench/results-timeline.json

Starts ``bench/fakeserver.py`` and a host (``bench/worker.py sidecar``) that drives the
source sidecar over stdio with everything on (the config of ``bench/compare.py``: the
classifier and selector, rate limits, priced models and budgets, so every call reserves
and settles in the usage ledger). The sidecar runs through this same file
(``--as-sidecar``), which wraps a few of its functions to note the time
(``time.perf_counter``, one clock for both threads) at which each step of a request
starts and ends, measured from the moment its line was taken off stdin. The requests go
one at a time, so each one's steps are its own. It prints the median of each step over
the requests (after a warm-up), the host's own times, and those of a direct httpx
client against the same fake (the "baseline" of ``bench/compare.py``).

``--tmpfs`` puts the data dir, so the usage ledger, on ``/dev/shm``: the same steps
without the fsyncs. Benchmark only: the wrapped names are the sidecar's internals, and
the wrapper refuses to start when one of them is gone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

_RESET = signal.SIGRTMIN + 3  # the sidecar uses SIGUSR1 itself
_DUMP = signal.SIGRTMIN + 4

#: (label, from mark, to mark, load): a step of both loads or of one. For a stream the first write
#: is the first chunk and the settle comes after the last one.
STEPS: list[tuple[str, str, str, str]] = [
    ("stdin line -> planner", "line", "planner.start", "both"),
    ("planner (classifier, selector, limiter)", "planner.start", "planner.end", "both"),
    ("planner -> reservation", "planner.end", "reserve.start", "both"),
    ("reservation, all of it", "reserve.start", "reserve.end", "both"),
    ("  reservation: budget, before the ledger", "reserve.start", "reserve.enqueued", "both"),
    ("  reservation: hand-off to the ledger's thread", "reserve.enqueued", "reserve.thread", "both"),
    ("  reservation: its transaction (with the commit)", "reserve.tx", "reserve.tx.end", "both"),
    ("  reservation: on the ledger's thread, all of it", "reserve.thread", "reserve.thread.end", "both"),
    ("  reservation: wake of the event loop", "reserve.thread.end", "reserve.resolved", "both"),
    ("  reservation: back in the request's task", "reserve.resolved", "reserve.end", "both"),
    ("reservation -> request sent", "reserve.end", "http.send", "both"),
    ("request sent -> answer headers", "http.send", "http.headers", "both"),
    ("answer headers -> first chunk queued", "http.headers", "chunk.first", "stream"),
    ("first chunk queued -> written", "chunk.first", "write.first", "stream"),
    ("answer headers -> settle", "http.headers", "settle.start", "generate"),
    ("settle, all of it", "settle.start", "settle.end", "both"),
    ("  settle: hand-off to the ledger's thread", "settle.enqueued", "settle.thread", "both"),
    ("  settle: its transaction (with the commit)", "settle.tx", "settle.tx.end", "both"),
    ("  settle: on the ledger's thread, all of it", "settle.thread", "settle.thread.end", "both"),
    ("  settle: wake of the event loop", "settle.thread.end", "settle.resolved", "both"),
    ("settle -> answer written", "settle.end", "write.first", "generate"),
    ("stdin line -> first write to stdout", "line", "write.first", "both"),
]


# -- inside the sidecar --------------------------------------------------------------------


def _as_sidecar(argv: list[str]) -> None:
    """Run the sidecar with the step marks installed."""
    from sidecar import cli
    from sidecar.core.budget import BudgetManager
    from sidecar.core.planner import Planner
    from sidecar.providers.aio_transport import AiohttpTransport
    from sidecar.store import ledger
    from sidecar.transport import stdio
    from sidecar.transport.dispatcher import Dispatcher, RequestContext

    clock = time.perf_counter
    done: list[dict[str, float]] = []  # per request: mark -> seconds after its line
    current: dict[str, float] = {}
    phase = ["reserve"]  # which ledger job the ledger's marks belong to

    def mark(name: str) -> None:
        if "line" in current and name not in current:
            current[name] = clock() - current["line"]

    def wrap(owner: Any, attr: str, before: Callable[[], None] | None = None,
             after: Callable[[], None] | None = None, *, is_async: bool = False) -> None:
        inner = getattr(owner, attr)  # AttributeError: the sidecar changed, say so at once
        if is_async:
            @functools.wraps(inner)
            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                if before:
                    before()
                result = await inner(*args, **kwargs)
                if after:
                    after()
                return result
            setattr(owner, attr, wrapped_async)
        else:
            @functools.wraps(inner)
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                if before:
                    before()
                result = inner(*args, **kwargs)
                if after:
                    after()
                return result
            setattr(owner, attr, wrapped)

    def new_line() -> None:
        if current:
            done.append({name: at for name, at in current.items() if name != "line"})
        current.clear()
        current["line"] = clock()

    def ledger_mark(suffix: str) -> Callable[[], None]:
        return lambda: mark(f"{phase[0]}.{suffix}")

    def enter(name: str) -> Callable[[], None]:
        def set_phase() -> None:
            phase[0] = name
            mark(f"{name}.start")
        return set_phase

    wrap(Dispatcher, "handle_line", new_line)
    wrap(Planner, "decide", lambda: mark("planner.start"), lambda: mark("planner.end"))
    wrap(BudgetManager, "reserve", enter("reserve"), lambda: mark("reserve.end"), is_async=True)
    wrap(BudgetManager, "settle", enter("settle"), lambda: mark("settle.end"), is_async=True)
    wrap(ledger.Ledger, "_enqueue", ledger_mark("enqueued"))
    wrap(ledger.Ledger, "_write_queued", ledger_mark("thread"), ledger_mark("thread.end"))
    wrap(ledger.Ledger, "_tx", ledger_mark("tx"), ledger_mark("tx.end"))
    wrap(ledger, "_resolve", ledger_mark("resolved"))
    wrap(AiohttpTransport, "_send", lambda: mark("http.send"), lambda: mark("http.headers"), is_async=True)
    wrap(RequestContext, "notify", lambda: mark("chunk.first"), is_async=True)
    wrap(stdio.LineWriter, "_flush_batch", lambda: mark("write.first"), is_async=True)

    out = Path(os.environ["BENCH_TIMELINE_OUT"])

    def reset(_signum: int, _frame: object) -> None:
        done.clear()
        current.clear()

    def dump(_signum: int, _frame: object) -> None:
        new_line()  # the last request's marks
        current.clear()
        out.write_text(json.dumps(done))

    signal.signal(_RESET, reset)
    signal.signal(_DUMP, dump)
    cli.main(argv)


# -- the harness ----------------------------------------------------------------------------


def run(load: str, n: int, tmpfs: bool) -> dict[str, Any]:
    from bench.compare import FakeServer, Worker, write_config

    stream = load == "stream"
    logs = Path(tempfile.mkdtemp(prefix="bench-timeline-"))
    data_dir = Path(tempfile.mkdtemp(prefix="bench-timeline-", dir="/dev/shm" if tmpfs else None))
    out = logs / "steps.json"
    fake = FakeServer(logs)
    write_config(data_dir, fake.base_url)
    sidecar = Worker("sidecar", sys.executable, "sidecar", fake.base_url, logs,
                     sidecar_cmd=[sys.executable, str(Path(__file__).resolve()), "--as-sidecar"],
                     data_dir=data_dir, env={"BENCH_TIMELINE_OUT": str(out)})
    baseline = Worker("baseline", sys.executable, "httpx", fake.base_url, logs)
    try:
        sidecar.command(cmd="seq", n=max(50, n // 4), stream=stream)  # warm-up
        baseline.command(cmd="seq", n=max(50, n // 4), stream=stream)
        os.kill(sidecar.pids["server"], _RESET)
        host = sidecar.command(cmd="seq", n=n, stream=stream)
        os.kill(sidecar.pids["server"], _DUMP)
        for _ in range(100):
            if out.exists() and out.stat().st_size:
                break
            time.sleep(0.05)
        direct = baseline.command(cmd="seq", n=n, stream=stream)
        marks: list[dict[str, float]] = json.loads(out.read_text())
    finally:
        sidecar.close()
        baseline.close()
        fake.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    rows = []
    for label, a, b, only in STEPS:
        spans = [m[b] - (m[a] if a != "line" else 0.0) for m in marks if b in m and (a == "line" or a in m)]
        if only in ("both", load) and spans:
            rows.append((label, statistics.median(spans) * 1e6))
    key = "ttfc" if stream else "lat"
    return {"load": load, "requests": n, "ledger": "/dev/shm" if tmpfs else "disk",
            "host_p50_ms": statistics.median(host[key]), "direct_p50_ms": statistics.median(direct[key]),
            "steps_us": rows}


def main() -> int:
    if sys.argv[1:2] == ["--as-sidecar"]:
        _as_sidecar(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=["generate", "stream"], default="generate")
    parser.add_argument("-n", type=int, default=400, help="measured requests (after a quarter as many to warm up)")
    parser.add_argument("--tmpfs", action="store_true", help="data dir (usage ledger) on /dev/shm")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--all", action="store_true",
                        help="both loads, ledger on disk and on /dev/shm; written to bench/results-timeline.json")
    parser.add_argument("--rounds", type=int, default=3, help="with --all: runs of each, medians over them")
    args = parser.parse_args()
    if args.all:
        results = []
        for load in ("generate", "stream"):
            for tmpfs in (False, True):
                rounds = [run(load, args.n, tmpfs) for _ in range(args.rounds)]
                results.append(combine(rounds))
                show(results[-1])
        hop = empty_hop_us()
        print(f"\nan empty job to a thread and back: {hop:.0f} µs (median)")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (args.json or BENCH / "results-timeline.json").write_text(
            json.dumps({"when": when, "empty_hop_us": hop, "runs": results}, indent=1))
        return 0
    result = run(args.load, args.n, args.tmpfs)
    show(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def empty_hop_us(n: int = 3000) -> float:
    """Median µs of an empty job sent to a one-thread executor and answered with
    ``call_soon_threadsafe``: the ledger's hand-off and wake-up with nothing to do."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    async def measure() -> float:
        loop = asyncio.get_running_loop()
        spans = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for _ in range(n):
                done: asyncio.Future[None] = loop.create_future()
                started = time.perf_counter()
                pool.submit(loop.call_soon_threadsafe, done.set_result, None)
                await done
                spans.append(time.perf_counter() - started)
        return statistics.median(spans) * 1e6

    return asyncio.run(measure())


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs of the same load: the median over the runs of each figure."""
    first = rounds[0]
    labels = [label for label, _us in first["steps_us"]]
    steps = [(label, statistics.median(dict(r["steps_us"])[label] for r in rounds)) for label in labels]
    return {**first, "rounds": len(rounds),
            "host_p50_ms": statistics.median(r["host_p50_ms"] for r in rounds),
            "direct_p50_ms": statistics.median(r["direct_p50_ms"] for r in rounds),
            "steps_us": steps, "each_round": rounds}


def show(result: dict[str, Any]) -> None:
    what = "first chunk" if result["load"] == "stream" else "answer"
    rounds = f", median of {result['rounds']} runs" if result.get("rounds", 1) > 1 else ""
    print(f"\n{result['load']}, {result['requests']} requests one at a time, ledger on {result['ledger']}{rounds}")
    print(f"host sees the {what} after {result['host_p50_ms']:.3f} ms (p50); a direct httpx client after "
          f"{result['direct_p50_ms']:.3f} ms: added {result['host_p50_ms'] - result['direct_p50_ms']:.3f} ms")
    print("\nmedian µs per step, from the moment the line was taken off stdin:")
    for label, us in result["steps_us"]:
        print(f"  {us:7.0f}  {label}")


if __name__ == "__main__":
    raise SystemExit(main())
