"""Drive the sidecar as a host does: spawn it, write JSON lines, read JSON lines.

``SIDECAR_CMD`` (a shell-style command line) replaces ``python -m sidecar``, so the same
tests run against the frozen binary.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.support.secret_guard import data_dir_blobs, watch

REPO = Path(__file__).resolve().parents[2]
_KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OLLAMA_HOST", "MODEL_SIDECAR_DATA_DIR",
             # Never the user's own credential store: a test that wants one passes a private
             # bus (tests/keys/secret_service.py) and MODEL_SIDECAR_KEY_STORAGE=auto.
             "DBUS_SESSION_BUS_ADDRESS", "MODEL_SIDECAR_KEY_STORAGE")


def sidecar_command() -> list[str]:
    custom = os.environ.get("SIDECAR_CMD")
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", "sidecar"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _KEY_VARS}
    # Every spawned sidecar refuses non-loopback connections: tests never leave the machine.
    env["MODEL_SIDECAR_DENY_REMOTE"] = "1"
    env["MODEL_SIDECAR_KEY_STORAGE"] = "file"
    env.update(extra or {})
    return env


class SidecarProcess:
    """One spawned sidecar with a line reader on its stdout and a collector on stderr."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        args: Iterable[str] = (),
        secrets: Iterable[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.secrets = [s for s in secrets if s]
        self.proc = subprocess.Popen(
            [*sidecar_command(), "--data-dir", str(data_dir), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(env),
            cwd=REPO,
        )
        self.raw_lines: list[bytes] = []
        self.unterminated = b""
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.backlog: list[dict[str, Any]] = []
        self.stderr = bytearray()
        # Every stream's seq must run 0, 1, 2, ... however long it is (checked as read).
        self.seq_errors: list[str] = []
        self._next_seq: dict[Any, int] = {}
        self._ids = itertools.count(1)
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()
        # The secret guard scans both streams and the data dir after every test phase,
        # whoever spawned us.
        watch(f"sidecar pid {self.proc.pid}", self._streams, self._finished)
        self.ready = self.next_message(timeout=30)

    def _streams(self) -> list[tuple[str, bytes]]:
        return [("stdout", b"\n".join(list(self.raw_lines)) + b"\n" + self.unterminated),
                ("stderr", bytes(self.stderr)),
                *data_dir_blobs(self.data_dir, keys_in_file=self.key_storage() != "keychain")]

    def key_storage(self) -> str | None:
        """Where this sidecar said at start that it keeps stored keys (its ``key_storage`` log line)."""
        for line in bytes(self.stderr).splitlines():
            if b'"key_storage"' in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == "key_storage":
                    return str(record.get("storage"))
        return None

    def _finished(self) -> bool:
        return self.proc.poll() is not None and not self._out.is_alive() and not self._err.is_alive()

    # -- reading ---------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        pieces: list[bytes] = []  # of a long line: joined once it ends (linear, not quadratic)
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            if b"\n" not in chunk:
                pieces.append(chunk)
                continue
            buffer = b"".join([*pieces, chunk])
            pieces.clear()
            *lines, buffer = buffer.split(b"\n")  # byte 0x0A only, as a host must
            pieces.append(buffer)
            for line in lines:
                self.raw_lines.append(line)
                message = json.loads(line)
                self._check_seq(message)
                self.messages.put(message)
        # An unterminated last line is a framing bug, unless the process was killed mid-write.
        self.unterminated = b"".join(pieces)
        self.messages.put(None)

    def _check_seq(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if message.get("method") == "model:stream-chunk":
            params = message.get("params") or {}
            request_id, seq = params.get("requestId"), params.get("seq")
            expected = self._next_seq.get(request_id, 0)
            if seq != expected:
                self.seq_errors.append(f"request {request_id!r}: seq {seq!r} where {expected} was due")
            self._next_seq[request_id] = (seq if isinstance(seq, int) else expected) + 1  # report a gap once
        elif "method" not in message:
            self._next_seq.pop(message.get("id"), None)  # answered: the id may be used again

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            chunk = self.proc.stderr.read1(65536)
            if not chunk:
                break
            self.stderr += chunk

    def next_message(self, timeout: float = 10) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        item = self.messages.get(timeout=timeout)
        if item is None:
            raise EOFError(f"sidecar stdout closed; stderr tail: {self.stderr[-2000:].decode(errors='replace')}")
        return item

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """The first message matching ``predicate``; others are kept for later reads."""
        skipped: list[dict[str, Any]] = []
        for i, message in enumerate(self.backlog):
            if predicate(message):
                del self.backlog[i]
                return message
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no matching message")
                item = self.messages.get(timeout=remaining)
                if item is None:
                    raise EOFError(f"stdout closed; stderr: {self.stderr[-2000:].decode(errors='replace')}")
                if predicate(item):
                    return item
                skipped.append(item)
        finally:
            self.backlog.extend(skipped)

    def response(self, request_id: Any, timeout: float = 20) -> dict[str, Any]:
        return self.wait_for(lambda m: "method" not in m and m.get("id") == request_id, timeout)

    def notifications(self, method: str, request_id: Any) -> list[dict[str, Any]]:
        """Stream chunks etc. already received for ``request_id`` (in arrival order)."""
        assert not self.seq_errors, self.seq_errors[:5]
        found = [m for m in self.backlog if m.get("method") == method
                 and m.get("params", {}).get("requestId") == request_id]
        for message in found:
            self.backlog.remove(message)
        return found

    # -- writing ---------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def start(self, method: str, params: dict[str, Any] | None = None, request_id: Any = None) -> Any:
        request_id = next(self._ids) if request_id is None else request_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return request_id

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 20) -> dict[str, Any]:
        return self.response(self.start(method, params), timeout)

    def result(self, method: str, params: dict[str, Any] | None = None, timeout: float = 20) -> Any:
        response = self.call(method, params, timeout)
        assert "result" in response, response
        return response["result"]

    def cancel(self, request_id: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": request_id}})

    # -- ending ----------------------------------------------------------------------

    def close(self, timeout: float = 5) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._out.join(5)
        self._err.join(5)
        return code

    def assert_clean(self) -> None:
        """Every stdout line was JSON ending in \\n, and no secret reached stdout/stderr."""
        out = b"\n".join(self.raw_lines)
        for secret in self.secrets:
            assert secret.encode() not in out, "an API key reached stdout"
            assert secret.encode() not in bytes(self.stderr), "an API key reached stderr"
        if self.proc.returncode == 0:
            assert self.unterminated == b"", "the last stdout line has no newline"
        assert not self.seq_errors, self.seq_errors[:5]
        for line in self.raw_lines:
            json.loads(line)
            assert b"\r" not in line
            assert b"\xe2\x80\xa8" not in line and b"\xe2\x80\xa9" not in line
