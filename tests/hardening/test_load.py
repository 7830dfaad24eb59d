"""Load through one stdio pipe: a thousand requests and two hundred streams at once, and a
host that stops reading stdout for a while.

What must hold: every id is answered exactly once; every stdout line is one whole JSON
message (the harness parses each line as it arrives, and the ``spawn`` fixture checks
every line against the published schemas at teardown); stream chunks arrive in order
without gaps; the sidecar's memory stays bounded, also while the host does not read;
nothing is left behind (tasks, reservations, upstream connections); and the ledger
counts exactly the calls the fake served.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from sidecar.providers.http import MAX_IDLE_CONNECTIONS
from tests.fakes import FakeServer, Reply
from tests.hardening.conftest import assert_no_leaks, build_config, entry, rss_mb
from tests.stdio.harness import REPO, SidecarProcess, clean_env, sidecar_command
from tests.support.secret_guard import watch

pytestmark = [pytest.mark.stdio, pytest.mark.hardening]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENERATES = 1000
STREAMS = 200
#: Generous: an idle sidecar is ~60 MiB; a thousand requests in flight add a few tens.
RSS_LIMIT_MB = 400


class RssSampler:
    """Samples a process's RSS every few milliseconds on a thread; ``peak`` is the max."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _collect(sidecar: SidecarProcess, ids: set[Any], timeout: float) -> tuple[dict[Any, list[dict[str, Any]]],
                                                                                   dict[Any, list[dict[str, Any]]]]:
    """Read until every id in ``ids`` has a response: (responses by id, chunks by request id)."""
    responses: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    chunks: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    deadline = time.monotonic() + timeout
    while not ids <= responses.keys():
        message = sidecar.next_message(timeout=max(0.1, deadline - time.monotonic()))
        if message.get("method") == "model:stream-chunk":
            params = message["params"]
            # A chunk after its request's response would be a framing/order bug.
            assert params["requestId"] not in responses, message
            chunks[params["requestId"]].append(params)
        elif "method" not in message:
            responses[message["id"]].append(message)
    return responses, chunks


def _flush(sidecar: SidecarProcess, responses: dict[Any, list[dict[str, Any]]]) -> None:
    """A last probe: anything still on its way (a second answer to some id) arrives first."""
    probe = sidecar.start("model:get-config", {}, request_id="flush-probe")
    while True:
        message = sidecar.next_message(timeout=20)
        if "method" in message:
            continue
        if message["id"] == probe:
            return
        responses[message["id"]].append(message)


@pytest.mark.slow
def test_a_thousand_requests_and_two_hundred_streams_through_one_pipe(hardening_spawn: Any) -> None:
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply("Hello from the fake, under load.", delay_s=0.05))
        config = build_config({"fake": entry(fake.base_url, model=MODEL)}, default="fake")
        sidecar, baseline = hardening_spawn(config)
        idle_rss = rss_mb(sidecar.proc.pid)
        gen_ids = [f"g{i}" for i in range(GENERATES)]
        stream_ids = [f"s{i}" for i in range(STREAMS)]
        lines = []
        for i in range(max(GENERATES, STREAMS)):  # interleaved, all written at once
            if i < GENERATES:
                lines.append({"jsonrpc": "2.0", "id": gen_ids[i], "method": "model:generate",
                              "params": {"request": {"prompt": f"load {i}", "maxTokens": 16}}})
            if i < STREAMS:
                lines.append({"jsonrpc": "2.0", "id": stream_ids[i], "method": "model:stream",
                              "params": {"request": {"prompt": f"stream {i}", "maxTokens": 16}}})
        payload = b"".join(json.dumps(m).encode() + b"\n" for m in lines)
        started = time.monotonic()
        with RssSampler(sidecar.proc.pid) as rss:
            sidecar.send_raw(payload)
            responses, chunks = _collect(sidecar, set(gen_ids) | set(stream_ids), timeout=100)
        elapsed = time.monotonic() - started
        _flush(sidecar, responses)

        # Exactly one answer per id, and only for ids we sent.
        counts = Counter({key: len(value) for key, value in responses.items()})
        assert set(counts) == set(gen_ids) | set(stream_ids)
        assert set(counts.values()) == {1}, [k for k, v in counts.items() if v != 1][:10]
        failures = [r[0] for r in responses.values() if "result" not in r[0]]
        assert not failures, failures[:3]
        for request_id in gen_ids:
            assert responses[request_id][0]["result"]["content"] == "Hello from the fake, under load."
        for request_id in stream_ids:
            got = chunks[request_id]
            assert [c["seq"] for c in got] == list(range(len(got)))
            assert got[-1]["chunk"]["done"] is True and not any(c["chunk"]["done"] for c in got[:-1])
            text = "".join(c["chunk"]["content"] for c in got)
            assert text == responses[request_id][0]["result"]["content"] == "Hello from the fake, under load."
        # Every line the reader saw was one whole JSON message (it parsed each one).
        assert len(sidecar.raw_lines) == sum(len(c) for c in chunks.values()) + sum(counts.values()) + 3
        assert rss.peak < RSS_LIMIT_MB, f"peak RSS {rss.peak:.0f} MiB (idle {idle_rss:.0f} MiB)"
        assert elapsed < 90

        # The ledger has exactly the calls the fake served, and nothing is left open.
        usage = sidecar.result("model:usage")
        assert usage["byProvider"]["fake"]["requests"] == len(fake.served) == GENERATES + STREAMS
        assert usage["daily"]["reservedUsd"] == 0
        # The pool keeps at most MAX_IDLE_CONNECTIONS idle connections per provider.
        state = assert_no_leaks(sidecar, baseline, [fake], keepalive=MAX_IDLE_CONNECTIONS)
        # What start-up made is frozen, and 1,200 requests ran few collections (Python's
        # default young threshold ran one every few requests, and full ones over it all).
        assert state["gc_frozen"] > 50_000, state
        assert state["gc_full_collections"] == baseline["gc_full_collections"], (state, baseline)
        assert state["gc_young_collections"] - baseline["gc_young_collections"] < 40, (state, baseline)


@pytest.mark.slow
def test_two_hundred_streams_cancelled_at_once_each_answer_once_with_what_was_sent(hardening_spawn: Any) -> None:
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply(chunks=[f" w{i}" for i in range(40)], chunk_delay_s=0.05))  # ~2 s each
        config = build_config({"fake": entry(fake.base_url, model=MODEL)}, default="fake")
        sidecar, baseline = hardening_spawn(config)
        ids = [f"c{i}" for i in range(STREAMS)]
        sidecar.send_raw(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "model:stream",
                                              "params": {"request": {"prompt": f"cancel {i}"}}}).encode() + b"\n"
                                  for i in ids))
        fake.wait_for_requests(STREAMS, timeout=20)
        time.sleep(0.5)
        sidecar.send_raw(b"".join(json.dumps({"jsonrpc": "2.0", "method": "$/cancelRequest",
                                              "params": {"id": i}}).encode() + b"\n" for i in ids))
        responses, chunks = _collect(sidecar, set(ids), timeout=30)
        _flush(sidecar, responses)
        assert {k: len(v) for k, v in responses.items()} == dict.fromkeys(ids, 1)
        cancelled = 0
        with_text = 0
        for request_id in ids:
            (answer,) = responses[request_id]
            sent = "".join(c["chunk"]["content"] for c in chunks[request_id])
            if "result" in answer:
                assert answer["result"]["content"] == sent
                continue
            data = answer["error"]["data"]
            assert data["type"] == "RequestCancelled", answer
            assert data["partialContent"] == sent  # exactly the text the host got
            cancelled += 1
            with_text += bool(sent)
        assert cancelled > STREAMS // 2
        usage = sidecar.result("model:usage")
        billed = usage["byProvider"]["fake"]["requests"]
        finished = STREAMS - cancelled
        # Cancelled streams are billed as partial calls once text arrived (the provider
        # may have produced a chunk the host did not get yet), else released.
        assert finished + with_text <= billed <= STREAMS
        assert usage["daily"]["reservedUsd"] == 0
        assert all(r.completed.is_set() or r.disconnected.wait(5) for r in fake.requests)
        assert_no_leaks(sidecar, baseline, [fake], keepalive=MAX_IDLE_CONNECTIONS)


class SlowHost:
    """A host with a tiny stdout pipe that can stop reading it (stderr is always drained)."""

    def __init__(self, data_dir: Path, pipe_bytes: int = 4096) -> None:
        self.proc = subprocess.Popen([*sidecar_command(), "--data-dir", str(data_dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), cwd=REPO)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        # The kernel rounds up to a page: 4 KiB instead of the default 64 KiB.
        fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, pipe_bytes)
        self.pipe_size = fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        self.reading = threading.Event()
        self.reading.set()
        self.lines: list[bytes] = []
        self.stderr = bytearray()
        self.bytes_read = 0
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()
        watch(f"slow host pid {self.proc.pid}", self._streams,
              lambda: self.proc.poll() is not None and not self._out.is_alive())

    def _streams(self) -> list[tuple[str, bytes]]:
        return [("stdout", b"\n".join(list(self.lines))), ("stderr", bytes(self.stderr))]

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        while True:
            self.reading.wait()
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self.bytes_read += len(chunk)
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            self.lines.extend(done)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(65536):
            self.stderr += chunk

    def send(self, messages: list[dict[str, Any]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        self.proc.stdin.flush()

    def wait_lines(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            assert time.monotonic() < deadline, f"{len(self.lines)} of {count} lines after {timeout} s"
            assert self.proc.poll() is None, "the sidecar died"
            time.sleep(0.02)

    def close(self) -> int:
        self.reading.set()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._out.join(5)
            self._err.join(5)


@pytest.mark.slow
def test_a_host_that_reads_slowly_makes_the_sidecar_wait_without_growing_or_dropping(tmp_path: Path) -> None:
    pieces = 300
    piece = "x" * 999 + " "
    count = 100  # 100 streams x 300 chunks of 1 KB: ~35 MB of protocol lines
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply(chunks=[piece] * pieces))
        config = build_config({"fake": entry(fake.base_url, model=MODEL)}, default="fake")
        (tmp_path / "config.json").write_text(json.dumps(config))
        host = SlowHost(tmp_path)
        try:
            assert host.pipe_size <= 8192
            host.wait_lines(1, 30)  # sidecar:ready
            host.send([{"jsonrpc": "2.0", "id": "warm", "method": "model:stream",
                        "params": {"request": {"prompt": "warm up"}}}])
            host.wait_lines(2 + pieces + 1, 30)
            idle = rss_mb(host.proc.pid)

            host.reading.clear()  # the host stops reading stdout
            host.send([{"jsonrpc": "2.0", "id": i, "method": "model:stream",
                        "params": {"request": {"prompt": f"slow {i}"}}} for i in range(count)])
            time.sleep(0.3)  # the read already waiting in os.read returns once; then none
            paused_at = host.bytes_read
            peak = idle
            for _ in range(40):  # 4 s without reading
                time.sleep(0.1)
                assert host.proc.poll() is None, "the sidecar died"
                peak = max(peak, rss_mb(host.proc.pid))
            assert host.bytes_read == paused_at
            # Everything buffered would be > 35 MB of encoded lines alone; the sidecar
            # instead holds its bounded queue and the upstream reads wait.
            assert peak - idle < 30, f"RSS grew from {idle:.0f} to {peak:.0f} MiB while the host did not read"

            host.reading.set()
            expected = 2 + pieces + 1 + count * (pieces + 2)
            host.wait_lines(expected, 90)
            assert rss_mb(host.proc.pid) < RSS_LIMIT_MB
            messages = [json.loads(line) for line in host.lines[2 + pieces + 1:]]
            chunks: dict[Any, list[int]] = defaultdict(list)
            answers: Counter[Any] = Counter()
            for message in messages:
                if message.get("method") == "model:stream-chunk":
                    chunks[message["params"]["requestId"]].append(message["params"]["seq"])
                else:
                    assert "result" in message, message
                    assert len(message["result"]["content"]) == pieces * len(piece)
                    answers[message["id"]] += 1
            assert answers == Counter(range(count))
            assert all(chunks[i] == list(range(pieces + 1)) for i in range(count))  # nothing dropped
            assert len(host.lines) == expected
        finally:
            code = host.close()
        assert code == 0
        assert fake.wait_for_connections(0, timeout=5)


def test_a_stream_cancelled_while_the_host_is_not_reading_reports_exactly_what_was_sent(tmp_path: Path) -> None:
    # Regression: the chunk a stream was blocked on (the output queue full) went into
    # partialContent although the cancel stopped it from ever being sent.
    pieces = 3000
    with FakeServer("llamacpp").start() as fake:
        fake.set_default(Reply(chunks=["word "] * pieces))
        config = build_config({"fake": entry(fake.base_url, model=MODEL)}, default="fake")
        (tmp_path / "config.json").write_text(json.dumps(config))
        host = SlowHost(tmp_path)
        try:
            host.wait_lines(1, 30)
            host.send([{"jsonrpc": "2.0", "id": "warm", "method": "model:get-config"}])
            host.wait_lines(2, 30)
            host.reading.clear()
            host.send([{"jsonrpc": "2.0", "id": "s", "method": "model:stream",
                        "params": {"request": {"prompt": "long"}}}])
            time.sleep(1.0)  # the queue fills; the stream now waits to queue its next chunk
            host.send([{"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "s"}}])
            time.sleep(0.3)
            host.reading.set()
            deadline = time.monotonic() + 30
            while not any(b'"id":"s"' in line for line in host.lines[2:]):
                assert time.monotonic() < deadline and host.proc.poll() is None
                time.sleep(0.02)
            messages = [json.loads(line) for line in host.lines[2:]]
            chunks = [m["params"]["chunk"]["content"] for m in messages if m.get("method") == "model:stream-chunk"]
            (answer,) = [m for m in messages if m.get("id") == "s"]
            assert answer["error"]["data"]["type"] == "RequestCancelled"
            assert 0 < len(chunks) < pieces
            assert answer["error"]["data"]["partialContent"] == "".join(chunks)
        finally:
            code = host.close()
        assert code == 0
