"""A small host: spawn the sidecar, check the handshake, stream one answer.

This is what an Electron or Tauri main process does, in Python for brevity: write JSON
lines to the sidecar's stdin, split its stdout on the byte 0x0A, match responses to ids.

The sidecar runs the embedded local model itself (SmolLM2-135M served by
llama-cpp-python, started on the first request that needs it, stopped with the
sidecar), so the session streams a real answer with no API key and no Ollama; with
keys set, the sidecar may pick a cloud model instead, and says why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_VERSION = 1
PROMPT = "Write a Python function that checks whether a string is a palindrome, ignoring case."


class Sidecar:
    def __init__(self, command: list[str], data_dir: Path | None, verbose: bool) -> None:
        args = [*command] + (["--data-dir", str(data_dir)] if data_dir else [])
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.DEVNULL, cwd=REPO,
        )
        self._buffer = b""
        self._next_id = 0
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                raise SystemExit("the sidecar exited unexpectedly (run with --verbose to see its log)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def send(self, method: str, params: dict[str, Any]) -> int:
        assert self.proc.stdin is not None
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()
        return self._next_id

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = self.send(method, params)
        while True:
            message = self.read()
            if message.get("id") == request_id:
                return message

    def close(self) -> None:
        self.call("sidecar:shutdown", {})
        self.proc.wait(5)


def start(command: list[str], data_dir: Path | None, verbose: bool) -> Sidecar:
    sidecar = Sidecar(command, data_dir, verbose)
    ready = sidecar.read()
    if ready.get("method") != "sidecar:ready":
        raise SystemExit(f"expected sidecar:ready first, got {ready}")
    version = ready["params"]["protocolVersion"]
    if version != PROTOCOL_VERSION:
        raise SystemExit(f"protocol mismatch: this host speaks {PROTOCOL_VERSION}, the sidecar {version}")
    print(f"sidecar {ready['params']['version']} ready (pid {ready['params']['pid']}), "
          f"channels: {', '.join(ready['params']['channels'])}")
    return sidecar


def stream_answer(sidecar: Sidecar, prompt: str, spawned: float) -> None:
    print(f"\n> {prompt}\n")
    request_id = sidecar.send("model:stream", {"request": {"prompt": prompt, "maxTokens": 400}})
    first_chunk_at: float | None = None
    while True:
        message = sidecar.read()
        if message.get("method") == "model:stream-chunk" and message["params"]["requestId"] == request_id:
            first_chunk_at = first_chunk_at or time.monotonic()
            chunk = message["params"]["chunk"]
            if chunk.get("restart"):
                print("\n[provider switched, restarting]\n")
            sys.stdout.write(chunk["content"])
            sys.stdout.flush()
        elif message.get("id") == request_id:
            break
    print()
    if "error" in message:
        error = message["error"]
        print(f"\nerror {error['code']} {error['data']['type']}: {error['message']}")
        return
    result = message["result"]
    meta = result["metadata"]
    print(f"\nprovider: {meta['provider']}   model: {result['model']}   task type: {meta['taskType']}")
    print(f"cost: ${meta['costUsd']:.6f}   latency: {meta['latencyMs']:.0f} ms   "
          f"first token: {meta.get('timeToFirstTokenMs') or 0:.0f} ms   usage: {usage_text(result.get('usage'))}")
    print("why: " + "; ".join(meta["selectionReasons"]))
    if first_chunk_at is not None:
        print(f"spawn to first chunk: {(first_chunk_at - spawned) * 1000:.0f} ms "
              "(a local server started on first use included)")


def usage_text(usage: dict[str, Any] | None) -> str:
    if not usage:  # llama-cpp-python's server sends none in streams
        return "not reported by the server (the usage ledger holds an estimate)"
    return f"{usage['promptTokens']} prompt + {usage['completionTokens']} completion tokens"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--data-dir", type=Path, help="sidecar data dir (default: the platform's)")
    parser.add_argument("--cmd", default=f"{sys.executable} -m sidecar", help="how to start the sidecar")
    parser.add_argument("--verbose", action="store_true", help="show the sidecar's stderr log")
    args = parser.parse_args()
    command = args.cmd.split()

    spawned = time.monotonic()
    sidecar = start(command, args.data_dir, args.verbose)
    health = sidecar.call("model:health", {})["result"]["providers"]
    for name, state in health.items():
        server = state.get("server")
        print(f"  {name:<12} {'available' if state['available'] else 'unavailable'}"
              f"{'' if state['available'] else ' (' + str(state.get('lastError')) + ')'}"
              f"{'' if server is None else ' (local server ' + server['state'] + ', started on first use)'}")
    if not any(state["available"] for state in health.values()):
        sidecar.close()
        print("\nno provider is reachable: set OPENAI_API_KEY or ANTHROPIC_API_KEY, start Ollama,"
              "\nor install the embedded local model (scripts/setup.sh does)")
        return 1
    stream_answer(sidecar, args.prompt, spawned)
    sidecar.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUTF8", "1")
    raise SystemExit(main())
