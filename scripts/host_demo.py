"""A small host: spawn the sidecar, check the handshake, stream one answer.

This is what an Electron or Tauri main process does, in Python for brevity: write JSON
lines to the sidecar's stdin, split its stdout on the byte 0x0A, match responses to ids.

The sidecar runs the embedded local model itself (SmolLM2-135M served by
llama-cpp-python, started on the first request that needs it, stopped with the
sidecar), so the session streams a real answer with no API key and no Ollama; with
keys set, the sidecar may pick a cloud model instead, and says why.

With ``--tools`` it runs a whole agent turn instead: the request offers a tool the host
implements (``read_file``, a file of this repository), the model calls it, the host
runs it and sends the result back as a tool turn, and the model answers from it. The
first round requires a call (a 135M model would rarely choose one on its own; the
sidecar forces it with a grammar on the embedded model); later rounds leave the model
free, and the last one asks for text.
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
TOOLS_PROMPT = "What is this project? Read its README.md and tell me in two sentences."
#: Files the read_file tool serves: a closed list (an enum in its schema), so a call can
#: only name a file that exists, and nothing outside the repository is ever read.
READABLE = ("README.md", "ARCHITECTURE.md", "docs/protocol.md", "pyproject.toml", "bench/README.md")
MAX_TOOL_RESULT_CHARS = 1500  # what the tool returns of a file (the embedded model has an 8K context)
MAX_ROUNDS = 4
READ_FILE_TOOL = {
    "name": "read_file",
    "description": "Read a text file of this project's repository; returns its beginning.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["path"],
                   "properties": {"path": {"enum": list(READABLE), "description": "the file's path in the repository"}}},
}


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


def read_file(arguments: dict[str, Any]) -> tuple[str, bool]:
    """The host's tool: ``(result text, is_error)``. The sidecar validated the arguments."""
    path = arguments.get("path")
    if path not in READABLE:
        return f"cannot read {path!r}: readable files are {', '.join(READABLE)}", True
    try:
        text = (REPO / path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}", True
    return text[:MAX_TOOL_RESULT_CHARS], False


def tool_round(sidecar: Sidecar, messages: list[dict[str, Any]], choice: Any) -> dict[str, Any] | None:
    """One model call of the agent turn; None after printing its error."""
    response = sidecar.call("model:generate", {"request": {
        "prompt": "", "messages": messages, "tools": [READ_FILE_TOOL], "toolChoice": choice, "maxTokens": 200,
        "temperature": 0}})
    if "error" in response:
        error = response["error"]
        print(f"error {error['code']} {error['data']['type']}: {error['message']}")
        return None
    result: dict[str, Any] = response["result"]
    attempts = len(result["metadata"]["attempts"])
    print(f"[{result['metadata']['provider']}/{result['model']}, finish: {result['finishReason']}"
          f"{f', {attempts} attempts' if attempts > 1 else ''}]")
    return result


def agent_turn(sidecar: Sidecar, prompt: str) -> bool:
    """The tool loop: call the model; run the tools it calls; send the results back; until it answers."""
    print(f"\n> {prompt}\n")
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    for round_no in range(MAX_ROUNDS):
        choice = "required" if round_no == 0 else "none" if round_no == MAX_ROUNDS - 1 else "auto"
        result = tool_round(sidecar, messages, choice)
        if result is None:
            return False
        calls = result.get("toolCalls") or []
        if not calls:
            print(f"\n{result['content'].strip()}\n")
            return True
        messages.append({"role": "assistant", "content": result["content"], "toolCalls": calls})
        for call in calls:
            text, failed = read_file(call["arguments"])
            print(f"  model called {call['name']}({json.dumps(call['arguments'])}) -> "
                  f"{'error: ' + text if failed else f'{len(text)} characters'}")
            messages.append({"role": "tool", "toolCallId": call["id"], "content": text, "isError": failed})
    print("the model kept calling tools; giving up")
    return False


def usage_text(usage: dict[str, Any] | None) -> str:
    if not usage:  # llama-cpp-python's server sends none in streams
        return "not reported by the server (the usage ledger holds an estimate)"
    return f"{usage['promptTokens']} prompt + {usage['completionTokens']} completion tokens"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=None, help="default: a coding question, or with --tools a question about this repo")
    parser.add_argument("--tools", action="store_true", help="run an agent turn: the model calls a tool this host runs")
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
    if args.tools:
        ok = agent_turn(sidecar, args.prompt or TOOLS_PROMPT)
        sidecar.close()
        return 0 if ok else 1
    stream_answer(sidecar, args.prompt or PROMPT, spawned)
    sidecar.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUTF8", "1")
    raise SystemExit(main())
