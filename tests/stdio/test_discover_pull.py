"""``model:discover``, ``model:pull`` and the parent watch, through stdio against loopback fakes.

Discovery probes only the ports named by ``MODEL_SIDECAR_DISCOVER_PORTS`` (the fakes'),
so nothing running on this machine's usual ports changes the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.local.discovery import PORTS_ENV, PortSpec, discover
from sidecar.local.ollama_pull import MAX_TAGS_BYTES
from tests.fakes import FakeServer, refusing_port
from tests.fakes.local_servers import LocalServerFake, OllamaPullFake, PullScript, SilentPort
from tests.stdio.conftest import Spawn
from tests.stdio.harness import REPO, clean_env, sidecar_command
from tests.stdio.schemas import assert_wire_valid

#: The contract: discovery answers within ~1.5 s even when ports hang.
DISCOVER_LIMIT_S = 1.5


@pytest.fixture
def servers() -> Iterator[dict[str, Any]]:
    started: dict[str, Any] = {
        "ollama": FakeServer("ollama").start(),
        "llamacpp": FakeServer("llamacpp").start(),
        "lmstudio": LocalServerFake("lmstudio").start(),
        "lmstudio-v1": LocalServerFake("lmstudio-v1").start(),
        "vllm": LocalServerFake("vllm").start(),
        "jan": LocalServerFake("jan").start(),
        "jan-keyed": LocalServerFake("jan", api_key="jan-local-key").start(),
        "localai": LocalServerFake("localai").start(),
        "web": LocalServerFake("http").start(),
    }
    yield started
    for server in started.values():
        server.stop()


def _warm(sidecar: Any) -> None:
    """One answered request: the imports after sidecar:ready are done before timing."""
    assert "result" in sidecar.call("model:get-config", {})


def _timed_discover(sidecar: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = sidecar.call("model:discover", {})
    elapsed = time.monotonic() - started
    assert_wire_valid(response, "model:discover")
    assert "result" in response, response
    return response["result"], elapsed


def test_discover_tells_each_server_kind_from_its_answers(spawn: Spawn, servers: dict[str, Any]) -> None:
    config = {"providers": {
        "ollama": {"baseURL": servers["ollama"].base_url},
        "custom": {"vl": {"baseURL": f"http://localhost:{servers['vllm'].port}/v1", "defaultModel": "m"}},
    }}
    order = ["ollama", "llamacpp", "lmstudio", "lmstudio-v1", "vllm", "localai", "jan-keyed", "jan", "web"]
    with SilentPort() as silent, refusing_port() as refused:
        ports = [str(servers[name].port) + ("=jan" if name.startswith("jan") else "") for name in order]
        sidecar = spawn(config=config, env={PORTS_ENV: ",".join([*ports, str(silent.port), str(refused)])})
        _warm(sidecar)
        stored = (sidecar.data_dir / "config.json").read_bytes()
        before = sidecar.result("model:get-config", {})
        result, elapsed = _timed_discover(sidecar)

    def origin(name: str) -> str:
        return f"http://127.0.0.1:{servers[name].port}"

    assert result["servers"] == [
        {"kind": "ollama", "baseURL": origin("ollama"), "models": ["llama3.2:latest", "qwen2.5-coder:7b"],
         "configured": True, "provider": "ollama"},
        {"kind": "llamacpp", "baseURL": origin("llamacpp") + "/v1", "models": ["SmolLM2-135M-Instruct.Q4_1.gguf"],
         "configured": False},
        # LM Studio's own listing, without its embedding model.
        {"kind": "lmstudio", "baseURL": origin("lmstudio") + "/v1",
         "models": ["qwen2.5-7b-instruct", "meta-llama-3.1-8b-instruct"], "configured": False},
        # LM Studio 0.4's REST API v1 (the rest of its paths answer 200 "Unexpected endpoint").
        {"kind": "lmstudio", "baseURL": origin("lmstudio-v1") + "/v1", "models": ["qwen/qwen3-4b-2507"],
         "configured": False},
        # A custom entry written with localhost points at the same server.
        {"kind": "vllm", "baseURL": origin("vllm") + "/v1", "models": ["Qwen/Qwen2.5-1.5B-Instruct"],
         "configured": True, "provider": "vl"},
        {"kind": "localai", "baseURL": origin("localai") + "/v1", "models": ["phi-2", "gpt-4"], "configured": False},
        # Jan asks for a key: found, its models unknown without one.
        {"kind": "jan", "baseURL": origin("jan-keyed") + "/v1", "models": [], "configured": False},
        {"kind": "jan", "baseURL": origin("jan") + "/v1", "models": ["jan-v1-4b", "llama3.2-3b-instruct"],
         "configured": False},
    ]
    assert elapsed < DISCOVER_LIMIT_S, f"discover took {elapsed:.2f} s with a port that never answers"
    # Nothing was added to the config, on disk or in memory.
    assert (sidecar.data_dir / "config.json").read_bytes() == stored
    assert sidecar.result("model:get-config", {}) == before
    # Probes are GETs without credentials (the start-up model refresh of the configured
    # Ollama entry asks /api/show with a POST).
    for server in servers.values():
        seen = server.all_requests if isinstance(server, FakeServer) else server.requests
        seen = [r for r in seen if r.path != "/api/show"]
        assert seen and {r.method for r in seen} == {"GET"}
        assert all("authorization" not in r.headers for r in seen)


def test_discover_answers_in_time_when_every_port_hangs(spawn: Spawn) -> None:
    with SilentPort() as a, SilentPort() as b, SilentPort() as c, SilentPort() as d, SilentPort() as e:
        ports = f"{a.port},{b.port},{c.port}=jan,{d.port},{e.port}=ollama"
        sidecar = spawn(env={PORTS_ENV: ports})
        _warm(sidecar)
        result, elapsed = _timed_discover(sidecar)
        assert result == {"servers": []}
        assert elapsed < DISCOVER_LIMIT_S, f"discover took {elapsed:.2f} s"
        assert a.accepted, "the silent port was never even connected to"
        # Still serving.
        assert "result" in sidecar.call("model:get-config", {})


# -- model:pull ------------------------------------------------------------------------------


@pytest.fixture
def ollama() -> Iterator[OllamaPullFake]:
    server = OllamaPullFake()
    server.start()
    yield server
    server.stop()


def _pull_config(ollama: OllamaPullFake, **entry: Any) -> dict[str, Any]:
    return {"providers": {"ollama": {"baseURL": ollama.base_url, **entry}}}


def _statuses(progress: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for note in progress:
        if not out or out[-1] != note["status"]:
            out.append(note["status"])
    return out


def test_pull_reports_progress_and_the_model_is_listed_after(spawn: Spawn, ollama: OllamaPullFake) -> None:
    sidecar = spawn(config=_pull_config(ollama))
    listed = sidecar.result("model:list-models", {"provider": "ollama"})
    assert "qwen3:0.6b" not in [m["id"] for m in listed["models"]]  # cached from here on
    script = PullScript(steps=40, delay_s=0.005)
    ollama.enqueue(script)
    request_id = sidecar.start("model:pull", {"provider": "ollama", "model": "qwen3:0.6b"})
    response = sidecar.response(request_id, timeout=30)
    assert_wire_valid(response, "model:pull")
    digest = hashlib.sha256(b"qwen3:0.6b").hexdigest()  # what the fake's /api/tags lists
    assert response["result"] == {"provider": "ollama", "model": "qwen3:0.6b", "digest": digest,
                                  "sizeBytes": 2019393189}
    assert ollama.pulls[0].json == {"model": "qwen3:0.6b", "stream": True}
    pull = ollama.pulls[0]
    duration = time.monotonic() - pull.received_at

    progress = [n["params"] for n in sidecar.notifications("model:pull-progress", request_id)]
    lines = script.lines()
    # Every status, in Ollama's order; fewer notifications than lines (throttled).
    assert _statuses(progress) == _statuses(lines)
    assert len(progress) < len(lines) / 2
    assert len(progress) <= 2 * len(_statuses(lines)) + 10 * duration + 1
    for digest_, total in script.layers:
        layer = [p for p in progress if p.get("digest") == digest_]
        assert layer and all(p["totalBytes"] == total for p in layer)
        done = [p.get("completedBytes", 0) for p in layer]
        assert done == sorted(done) and done[-1] == total
        assert layer[0]["status"] == f"pulling {digest_[7:19]}"
    assert progress[-1] == {"requestId": request_id, "status": "success"}

    # The list-models cache learned the new model without being asked to refresh.
    listed = sidecar.result("model:list-models", {"provider": "ollama"})
    assert "qwen3:0.6b" in [m["id"] for m in listed["models"]]


def test_a_tags_listing_past_its_bound_is_not_read_and_the_pull_still_succeeds(spawn: Spawn) -> None:
    # Each entry repeats its 3000-character name twice: over 4 MiB in all.
    padding = [f"{'padding-model-' * 214}{i:05d}:latest" for i in range(MAX_TAGS_BYTES // 5000)]
    ollama = OllamaPullFake(models=padding)
    ollama.start()
    try:
        sidecar = spawn(config=_pull_config(ollama))
        script = PullScript(steps=4, delay_s=0.0)
        ollama.enqueue(script)
        response = sidecar.call("model:pull", {"provider": "ollama", "model": "qwen3:0.6b"}, timeout=60)
    finally:
        ollama.stop()
    assert_wire_valid(response, "model:pull")
    # No digest (the listing was too long to read); the size is the layers' totals.
    assert response["result"] == {"provider": "ollama", "model": "qwen3:0.6b",
                                  "sizeBytes": sum(total for _digest, total in script.layers)}
    deadline = time.monotonic() + 5  # stderr is collected by a thread: it may lag the response
    while b'"event":"ollama_tags_unread"' not in sidecar.stderr:
        assert time.monotonic() < deadline, "no ollama_tags_unread log line"
        time.sleep(0.02)


@pytest.mark.parametrize(("params", "fragment"), [
    ({"provider": "openai", "model": "llama3.2"}, "not an Ollama entry"),
    ({"provider": "local-llm", "model": "llama3.2"}, "not an Ollama entry"),
    ({"provider": "nope", "model": "llama3.2"}, "unknown provider"),
    ({"provider": "ollama", "model": "bad name\n"}, ""),
    ({"provider": "ollama", "model": ""}, ""),
    ({"provider": "ollama"}, ""),
    ({"provider": "ollama", "model": "llama3.2", "stallTimeoutMs": 5}, ""),
])
def test_pull_refuses_what_it_cannot_pull(spawn: Spawn, ollama: OllamaPullFake, params: dict[str, Any],
                                          fragment: str) -> None:
    sidecar = spawn(config=_pull_config(ollama))
    response = sidecar.call("model:pull", params)
    assert response["error"]["code"] == -32602, response
    assert fragment in response["error"]["message"]
    assert not ollama.pulls
    assert "result" in sidecar.call("model:get-config", {})


def test_pull_refuses_a_disabled_ollama_entry(spawn: Spawn, ollama: OllamaPullFake) -> None:
    sidecar = spawn(config=_pull_config(ollama, enabled=False))
    response = sidecar.call("model:pull", {"provider": "ollama", "model": "llama3.2"})
    assert response["error"]["code"] == -32602 and "disabled" in response["error"]["message"]
    assert not ollama.pulls


def test_an_error_in_the_pull_stream_is_a_clear_model_error(spawn: Spawn, ollama: OllamaPullFake) -> None:
    ollama.enqueue(PullScript(error="pull model manifest: file does not exist"))
    sidecar = spawn(config=_pull_config(ollama))
    response = sidecar.call("model:pull", {"provider": "ollama", "model": "no-such-model"})
    error = response["error"]
    assert error["code"] == -32004 and error["data"]["type"] == "ModelError", response
    assert "pull model manifest: file does not exist" in error["message"]
    assert error["data"]["provider"] == "ollama" and error["data"]["modelId"] == "no-such-model"
    assert "no-such-model" not in ollama.models
    assert "result" in sidecar.call("model:get-config", {})


@pytest.mark.parametrize(("script", "code", "fragment"), [
    (PullScript(end_after=5), -32001, "ended before Ollama said success"),
    (PullScript(garbage=b"{" + b"x" * 100_000), -32004, "longer than"),
    (PullScript(garbage=b"{not json\n"), -32004, "malformed JSON"),
])
def test_a_broken_pull_stream_fails_clearly(spawn: Spawn, ollama: OllamaPullFake, script: PullScript,
                                            code: int, fragment: str) -> None:
    ollama.enqueue(script)
    sidecar = spawn(config=_pull_config(ollama))
    response = sidecar.call("model:pull", {"provider": "ollama", "model": "qwen3:0.6b"})
    assert response["error"]["code"] == code and fragment in response["error"]["message"], response
    assert "result" in sidecar.call("model:get-config", {})


def test_cancelling_a_pull_closes_the_upstream_request(spawn: Spawn, ollama: OllamaPullFake) -> None:
    ollama.enqueue(PullScript(stall_after=3))
    sidecar = spawn(config=_pull_config(ollama))
    request_id = sidecar.start("model:pull", {"provider": "ollama", "model": "qwen3:0.6b"})
    sidecar.wait_for(lambda m: m.get("method") == "model:pull-progress"
                     and m["params"]["requestId"] == request_id
                     and m["params"]["status"].startswith("pulling ")
                     and m["params"]["status"] != "pulling manifest", timeout=10)  # a layer is coming
    sidecar.cancel(request_id)
    response = sidecar.response(request_id, timeout=10)
    assert response["error"]["code"] == -32800, response
    assert response["error"]["message"] == "request cancelled by the host"  # while it ran
    assert ollama.pulls[0].disconnected.wait(5), "the upstream pull was not closed"
    assert "qwen3:0.6b" not in ollama.models


def test_a_stalled_pull_is_a_network_error(spawn: Spawn, ollama: OllamaPullFake) -> None:
    ollama.enqueue(PullScript(stall_after=2))
    sidecar = spawn(config=_pull_config(ollama))
    started = time.monotonic()
    response = sidecar.call("model:pull", {"provider": "ollama", "model": "qwen3:0.6b", "stallTimeoutMs": 1000},
                            timeout=15)
    elapsed = time.monotonic() - started
    error = response["error"]
    assert error["code"] == -32001 and error["data"]["type"] == "NetworkError", response
    assert "made no progress for 1 s" in error["message"]
    assert 0.9 <= elapsed < 6, elapsed
    assert ollama.pulls[0].disconnected.wait(5), "the stalled request was left open"


# -- the parent watch ------------------------------------------------------------------------

#: Runs the sidecar without os.pidfd_open, so the getppid() polling path is the one used.
_NO_PIDFD = ("import os, runpy\n"
             "if hasattr(os, 'pidfd_open'):\n"
             "    del os.pidfd_open\n"
             "runpy.run_module('sidecar', run_name='__main__', alter_sys=True)\n")


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the watch itself is POSIX-wide")
@pytest.mark.parametrize(("path", "when"), [("pidfd", "serving"), ("poll", "serving"), ("pidfd", "starting")])
def test_the_sidecar_exits_when_its_parent_dies_while_stdin_stays_open(tmp_path: Path, path: str,
                                                                       when: str) -> None:
    """``starting``: the parent dies right after sidecar:ready, while the imports still run."""
    if path == "poll" and os.environ.get("SIDECAR_CMD"):
        pytest.skip("the polling path is forced through the Python interpreter")
    command = sidecar_command() if path == "pidfd" else [sys.executable, "-c", _NO_PIDFD]
    command = [*command, "--data-dir", str(tmp_path / "data")]
    stdin_read, stdin_write = os.pipe()  # this test keeps the write end: no EOF ever comes
    stderr = (tmp_path / "stderr.log").open("wb")
    # The parent: a process that spawns the sidecar with its own stdin and stdout, then waits.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:], stdin=0, stdout=1).wait()",
         *command],
        stdin=stdin_read, stdout=subprocess.PIPE, stderr=stderr, env=clean_env(), cwd=REPO,
    )
    os.close(stdin_read)
    pid = None
    try:
        assert parent.stdout is not None
        ready = json.loads(parent.stdout.readline())
        pid = ready["params"]["pid"]
        assert ready["method"] == "sidecar:ready" and _alive(pid)
        if when == "serving":
            os.write(stdin_write, b'{"jsonrpc":"2.0","id":1,"method":"model:get-config","params":{}}\n')
            assert "result" in json.loads(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        killed = time.monotonic()
        # stdout reaches EOF once the sidecar, its last writer, has exited.
        readable, _, _ = select.select([parent.stdout], [], [], 5.0)
        assert readable and os.read(parent.stdout.fileno(), 65536) == b"", "the sidecar outlived its parent"
        deadline = killed + 5.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the sidecar outlived its parent"
        log = (tmp_path / "stderr.log").read_text()
        assert '"event":"parent_gone"' in log and '"event":"shutting_down"' in log, log[-2000:]
    finally:
        os.close(stdin_write)
        stderr.close()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# -- pure parts --------------------------------------------------------------------------------


def test_the_port_list_accepts_ports_and_kind_hints_and_names_a_bad_item() -> None:
    from sidecar.local.discovery import PortSpec, parse_ports

    assert parse_ports(" 11434, 1337=jan,,8080 ") == (PortSpec(11434), PortSpec(1337, "jan"), PortSpec(8080))
    assert parse_ports("") == ()
    assert parse_ports("8080=jan,8080") == (PortSpec(8080, "jan"),)
    assert len(parse_ports(",".join(str(p) for p in range(1000, 1064)))) == 64
    with pytest.raises(ValueError, match="more than 64"):
        parse_ports(",".join(str(p) for p in range(1000, 1065)))
    for bad in ("abc", "0", "70000", "1234=nope", "=jan", "12 34"):
        with pytest.raises(ValueError, match="MODEL_SIDECAR_DISCOVER_PORTS"):
            parse_ports(bad)


def test_a_bad_port_list_is_logged_and_the_usual_ports_are_used() -> None:
    from sidecar.channels.discover import ports_to_probe
    from sidecar.local.discovery import DEFAULT_PORTS

    assert ports_to_probe({PORTS_ENV: "1234=nope"}) == DEFAULT_PORTS
    assert ports_to_probe({}) == DEFAULT_PORTS
    assert ports_to_probe({PORTS_ENV: "9=jan"})[0].hint == "jan"


def test_the_progress_throttle_passes_new_statuses_and_one_completion_per_layer() -> None:
    from sidecar.local.ollama_pull import Progress, ProgressThrottle

    now = [0.0]
    throttle = ProgressThrottle(0.1, clock=lambda: now[0])
    layer = [Progress("pulling abc", completed=c, total=100, digest="sha256:abc") for c in (0, 10, 20, 100, 100, 100)]
    passed = [throttle.admit(p) for p in layer]
    # The first line of the status, the first line completing it; the repeats are dropped.
    assert passed == [True, False, False, True, False, False]
    now[0] = 0.25
    assert throttle.admit(layer[-1])  # the interval has passed
    assert not throttle.admit(layer[-1])
    assert throttle.admit(Progress("verifying sha256 digest"))  # a new status: at once


# -- bounds on what a loopback responder can make the sidecar hold -----------------------

#: 256 MiB of zeros, gzip-compressed to about 250 KiB: a "gzip bomb".
_BOMB_BYTES = 256 << 20


def _gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    block = bytes(1 << 20)
    return b"".join([*(compressor.compress(block) for _ in range(_BOMB_BYTES >> 20)), compressor.flush()])


class _BombServer:
    """Answers every request with a gzip bomb (whatever ``Accept-Encoding`` says); records the headers."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.accept_encodings: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("accept-encoding:"):
                self.accept_encodings.append(line.split(":", 1)[1].strip())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body))
        with contextlib.suppress(ConnectionError):
            writer.write(self.body)
            await writer.drain()
        writer.close()


async def test_discovery_probes_do_not_inflate_a_compressed_answer() -> None:
    bomb = _BombServer(_gzip_bomb())
    server = await asyncio.start_server(bomb.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tracemalloc.start()
    try:
        found = await discover((PortSpec(port),), probe_timeout_s=5.0, deadline_s=10.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.close()
    assert found == []
    assert bomb.accept_encodings and set(bomb.accept_encodings) == {"identity"}
    # Seven probes of at most 2 MiB each; an inflated chunk alone would be ~64 MiB.
    assert peak < 32 << 20, f"peak {peak >> 20} MiB while probing"
