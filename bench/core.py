"""Core figures of the sidecar: cold start, idle memory, and per-request overhead.

Everything runs against one fake OpenAI-compatible server in its own process on
127.0.0.1. Direct httpx calls and calls through the sidecar (stdio, as a host drives it)
are interleaved round by round, and medians are reported, because these 2-core machines
are noisy: quote the ratios, not the absolute times.

    .venv/bin/python bench/core.py [--rounds 5] [--requests 200]

Writes ``bench/results-core.json``. The full suite against LiteLLM comes with the
benchmark issue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results-core.json"


def start_fake() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes", "--kind", "llamacpp", "--no-stdin"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


class Sidecar:
    def __init__(self, base_url: str) -> None:
        self.dir = tempfile.mkdtemp()
        config = {"providers": {"custom": {"fake": {"baseURL": base_url, "defaultModel": "m",
                                                     "rateLimit": {"maxRetries": 0}}}},
                  "defaultProvider": "fake", "fallbackChain": []}
        Path(self.dir, "config.json").write_text(json.dumps(config))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "sidecar", "--data-dir", self.dir,
                                      "--log-level", "warning"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=REPO)
        self.buffer = b""
        self.ready_ms = self._timed_read()
        self.next_id = 0

    def _timed_read(self) -> float:
        self.read()
        return (time.perf_counter() - self.started) * 1000

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            self.buffer += self.proc.stdout.read1(1 << 16)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def call(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        """The response, and the time to the first stream chunk (ms) if any."""
        assert self.proc.stdin is not None
        self.next_id += 1
        started = time.perf_counter()
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                          "params": params}).encode() + b"\n")
        self.proc.stdin.flush()
        first = None
        while True:
            message = self.read()
            if message.get("method") == "model:stream-chunk" and first is None:
                first = (time.perf_counter() - started) * 1000
            if message.get("id") == self.next_id:
                return message, first

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(5)


async def direct_calls(base_url: str, n: int, stream: bool) -> tuple[list[float], list[float]]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    totals, firsts = [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            if stream:
                async with client.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
                    first = None
                    async for _chunk in r.aiter_bytes():
                        if first is None:
                            first = (time.perf_counter() - started) * 1000
                    firsts.append(first or 0.0)
            else:
                (await client.post("/chat/completions", json=body)).raise_for_status()
            totals.append((time.perf_counter() - started) * 1000)
    return totals, firsts


def sidecar_calls(sidecar: Sidecar, n: int, stream: bool) -> tuple[list[float], list[float]]:
    params = {"request": {"prompt": "hi", "maxTokens": 16}}
    totals, firsts = [], []
    for _ in range(n):
        started = time.perf_counter()
        response, first = sidecar.call("model:stream" if stream else "model:generate", params)
        assert "result" in response, response
        totals.append((time.perf_counter() - started) * 1000)
        if first is not None:
            firsts.append(first)
    return totals, firsts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    fake, base_url = start_fake()
    try:
        ready, first_answer, rss_idle, rss_after = [], [], [], []
        added: dict[str, list[float]] = {"generate_p50": [], "generate_p95": [], "stream_total_p50": [],
                                         "stream_first_chunk_p50": []}
        direct: dict[str, list[float]] = {"generate_p50": [], "stream_first_chunk_p50": []}
        for _ in range(args.rounds):
            sidecar = Sidecar(base_url)
            ready.append(sidecar.ready_ms)
            sidecar.call("model:get-config", {})
            first_answer.append((time.perf_counter() - sidecar.started) * 1000)
            time.sleep(0.3)
            rss_idle.append(sidecar.rss_mb())
            for stream in (False, True):
                d_total, d_first = asyncio.run(direct_calls(base_url, args.requests, stream))
                s_total, s_first = sidecar_calls(sidecar, args.requests, stream)
                if stream:
                    added["stream_total_p50"].append(pct(s_total, 0.5) - pct(d_total, 0.5))
                    added["stream_first_chunk_p50"].append(pct(s_first, 0.5) - pct(d_first, 0.5))
                    direct["stream_first_chunk_p50"].append(pct(d_first, 0.5))
                else:
                    added["generate_p50"].append(pct(s_total, 0.5) - pct(d_total, 0.5))
                    added["generate_p95"].append(pct(s_total, 0.95) - pct(d_total, 0.95))
                    direct["generate_p50"].append(pct(d_total, 0.5))
            rss_after.append(sidecar.rss_mb())
            sidecar.close()
        med = statistics.median
        results = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "rounds": args.rounds,
            "requests_per_round": args.requests,
            "cold_start_ms": {"spawn_to_ready": round(med(ready), 1),
                              "spawn_to_first_answer": round(med(first_answer), 1)},
            "rss_mb": {"idle_after_first_answer": round(med(rss_idle), 1),
                       "after_requests": round(med(rss_after), 1)},
            "direct_httpx_ms": {k: round(med(v), 3) for k, v in direct.items()},
            "added_by_sidecar_ms": {k: round(med(v), 3) for k, v in added.items()},
        }
    finally:
        fake.terminate()
        fake.wait(5)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
