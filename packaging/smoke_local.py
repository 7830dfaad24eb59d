"""Smoke test of the bundle with the local model: ``python packaging/smoke_local.py PATH [--json OUT]``.

Runs the binary of ``packaging/build --with-local-model`` as a host would, with no
Python on ``PATH``, no ``PYTHON*`` variables, no API keys, remote hosts refused and,
where the machine allows it (``unshare -rn`` with ``ip``), in a network namespace of its
own with only loopback up: the bundle alone must stream an answer of the embedded
SmolLM2 model, run by the same executable (``--embedded-model-server``). Checks that the
answer came from ``local-llm``, that ``model:health`` shows the server ready, and that
the server process is gone after ``sidecar:shutdown``. Prints (and with ``--json``
writes) the time from spawn to ``sidecar:ready`` and to the first local token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Bound on the whole run: the model loads in a few seconds on 2 cores.
TIMEOUT_S = 180.0


def _isolated(binary: str) -> tuple[list[str], str]:
    """The command line, in a network namespace with only loopback when possible."""
    ip = shutil.which("ip")
    if shutil.which("unshare") and ip:
        probe = subprocess.run(["unshare", "-rn", ip, "link", "set", "lo", "up"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-rn", "sh", "-c", f'"{ip}" link set lo up && exec "$0" "$@"', binary], \
                "no network (own namespace, loopback only)"
    return [binary], "remote hosts refused (MODEL_SIDECAR_DENY_REMOTE)"


def _env(home: str) -> dict[str, str]:
    keep = {"LANG", "LC_ALL", "TZ"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    return {**env, "PATH": "/usr/bin:/bin", "HOME": home, "MODEL_SIDECAR_DENY_REMOTE": "1"}


class Host:
    """Writes JSON-RPC lines, reads them with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.deadline = time.monotonic() + TIMEOUT_S

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if time.monotonic() > self.deadline:
            raise TimeoutError("the local bundle did not answer in time")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sidecar exited ({self.proc.poll()})")
        message: dict[str, Any] = json.loads(line)
        return message


def _stream(host: Host, started: float) -> tuple[dict[str, Any], float]:
    """Stream one answer from local-llm; the response and spawn → first chunk in ms."""
    host.send({"id": 1, "method": "model:stream", "params": {
        "request": {"prompt": "Say hello in three words.", "maxTokens": 24},
        "selection": {"provider": "local-llm", "fallback": False}}})
    first_ms = None
    while True:
        message = host.read()
        if message.get("method") == "model:stream-chunk" and first_ms is None:
            if message["params"]["chunk"].get("content"):
                first_ms = (time.perf_counter() - started) * 1000
        elif message.get("id") == 1:
            assert "result" in message, message
            assert first_ms is not None, "no chunk before the answer"
            return message["result"], first_ms


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def main(binary: str, out: str | None = None) -> int:
    command, isolation = _isolated(str(Path(binary).resolve()))
    with tempfile.TemporaryDirectory() as home:
        data_dir = Path(home) / "data"
        data_dir.mkdir()
        started = time.perf_counter()
        proc = subprocess.Popen([*command, "--data-dir", str(data_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(home), cwd=home)
        host = Host(proc)
        try:
            ready = host.read()
            ready_ms = (time.perf_counter() - started) * 1000
            assert ready["method"] == "sidecar:ready", ready
            result, first_ms = _stream(host, started)
            assert result["metadata"]["provider"] == "local-llm", result["metadata"]
            assert result["content"].strip(), result
            host.send({"id": 2, "method": "model:health", "params": {}})
            server = host.read()["result"]["providers"]["local-llm"]["server"]
            assert server["state"] == "ready" and server["pid"], server
            host.send({"id": 3, "method": "sidecar:shutdown", "params": {}})
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (proc.returncode, err.decode(errors="replace")[-2000:])
        assert _gone(server["pid"], 5), f"the model server (pid {server['pid']}) outlived the sidecar"
    figures = {"isolation": isolation, "ready_ms": round(ready_ms, 1), "first_token_ms": round(first_ms, 1),
               "answer": result["content"][:200]}
    print(f"local smoke ok: {binary}: ready in {ready_ms:.0f} ms, first local token {first_ms:.0f} ms "
          f"after spawn ({isolation})")
    if out:
        Path(out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    output = args[args.index("--json") + 1] if "--json" in args else None
    raise SystemExit(main(args[0], output))
