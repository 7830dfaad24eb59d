"""Smoke test of a built binary: ``python packaging/smoke.py PATH``.

Spawns it as a host would, with no provider reachable, and checks what needs no
provider: ``sidecar:ready`` first with our protocol version, a parse error answered,
a real method answered, lines ending in ``\\n`` only, shutdown with exit code 0, and
the version stamp. The full replay suite and the Node host tests run on it afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sidecar


def main(binary: str) -> int:
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "MODEL_SIDECAR_DENY_REMOTE": "1"}
        env.pop("OPENAI_API_KEY", None)
        env.pop("ANTHROPIC_API_KEY", None)
        started = time.perf_counter()
        proc = subprocess.Popen([binary, "--data-dir", data_dir], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdin and proc.stdout
        ready_line = proc.stdout.readline()
        ready_ms = (time.perf_counter() - started) * 1000
        ready = json.loads(ready_line)
        assert ready["method"] == "sidecar:ready", ready
        assert ready["params"]["protocolVersion"] == sidecar.PROTOCOL_VERSION, ready
        assert ready["params"]["version"] == sidecar.__version__, ready
        assert set(ready["params"]["channels"]) == set(sidecar.CHANNEL_NAMES), ready
        proc.stdin.write(b"{not json\n")
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"model:get-config","params":{}}\n')
        proc.stdin.write(b'{"jsonrpc":"2.0","id":2,"method":"sidecar:shutdown","params":{}}\n')
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        lines = out.split(b"\n")
        assert lines[-1] == b"" and all(b"\r" not in line for line in lines), out[:300]
        answers = [json.loads(line) for line in lines[:-1]]
        assert answers[0]["id"] is None and answers[0]["error"]["data"]["type"] == "ParseError", answers
        config = next(a for a in answers if a.get("id") == 1)["result"]
        assert "local-llm" in config["providers"]["custom"], config
        assert proc.returncode == 0, (proc.returncode, err.decode(errors="replace")[-2000:])
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
        assert sidecar.__version__ in version and "build" in version, version
    print(f"smoke ok: {binary} ready in {ready_ms:.0f} ms, {version.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
