"""One benchmark layer in its own process, driven by ``bench/compare.py`` over stdin/stdout.

    <python> bench/worker.py CLIENT BASE_URL [--sidecar-cmd JSON] [--data-dir DIR]

CLIENT is one of ``httpx`` (default ``httpx.AsyncClient``), ``httpx-tuned``,
``httpx-aiohttp`` (httpx with the ``httpx-aiohttp`` transport), ``aiohttp``,
``litellm`` (``litellm.acompletion``), ``litellm-router`` (``litellm.Router``, two
deployments and a fallback group) or ``sidecar`` (this process is the host: it spawns
``--sidecar-cmd`` and drives it over stdio, as a desktop app would).

Only the standard library is needed besides the client's own packages, so the same file
runs with the project venv's python and with each throwaway venv's. It prints one JSON
line ``{"ready": ..., "importMs": ..., "pids": {...}}``, then answers one JSON line per
command line:

- ``{"cmd": "seq", "n": N, "stream": bool}``: N requests one after another; latencies (ms),
  times to the first content chunk (ms) and the chunk count.
- ``{"cmd": "conc", "n": N, "inflight": K, "stream": bool, "model": M?}``: N requests, K in
  flight at once; wall time, errors, chunks.
- ``{"cmd": "quit"}``.

A request counts as done when the whole answer has been read (for a stream: every
content chunk and the end of the stream); "first chunk" is the first non-empty content.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads = orjson.loads
except ImportError:  # pragma: no cover - the LiteLLM venv may not have it
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    loads = json.loads

PROMPT = "Say hello to the benchmark."
MAX_TOKENS = 64
MESSAGES = [{"role": "user", "content": PROMPT}]


class Result:
    __slots__ = ("chunks", "first")

    def __init__(self) -> None:
        self.first: float | None = None  # perf_counter of the first content chunk
        self.chunks = 0


# --- raw HTTP clients ------------------------------------------------------------------

def _body(stream: bool, model: str) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def _sse_line(line: bytes | str, result: Result) -> None:
    if isinstance(line, str):
        line = line.encode()
    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
        return
    data = loads(line[6:])
    choices = data.get("choices")
    if choices:
        content = choices[0].get("delta", {}).get("content")
        if content:
            if result.first is None:
                result.first = time.perf_counter()
            result.chunks += 1


class HttpxClient:
    def __init__(self, base_url: str, variant: str) -> None:
        import httpx

        self.headers = {"content-type": "application/json", "authorization": "Bearer sk-fake"}
        if variant == "httpx":
            self.client = httpx.AsyncClient(base_url=base_url, timeout=60)
        elif variant == "httpx-tuned":
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=30)
            self.client = httpx.AsyncClient(
                base_url=base_url, timeout=60, limits=limits, http1=True, http2=False, trust_env=False,
                transport=httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False, retries=0,
                                                   trust_env=False))
        elif variant == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport

            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=30)
            self.client = httpx.AsyncClient(base_url=base_url, timeout=60, trust_env=False,
                                            transport=AiohttpTransport(limits=limits, trust_env=False))
        else:
            raise SystemExit(f"unknown httpx variant {variant}")

    async def one(self, stream: bool, model: str) -> Result:
        result = Result()
        body = _body(stream, model)
        if not stream:
            response = await self.client.post("/chat/completions", content=body, headers=self.headers)
            response.raise_for_status()
            loads(response.content)
            return result
        async with self.client.stream("POST", "/chat/completions", content=body, headers=self.headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                _sse_line(line, result)
        return result

    async def close(self) -> None:
        await self.client.aclose()


class AiohttpClient:
    def __init__(self, base_url: str) -> None:
        import aiohttp

        self.base = base_url.rstrip("/")
        self.headers = {"content-type": "application/json", "authorization": "Bearer sk-fake"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=60))

    async def one(self, stream: bool, model: str) -> Result:
        result = Result()
        async with self.session.post(self.base + "/chat/completions", data=_body(stream, model),
                                     headers=self.headers) as response:
            response.raise_for_status()
            if not stream:
                loads(await response.read())
                return result
            async for line in response.content:
                _sse_line(line.rstrip(b"\r\n"), result)
        return result

    async def close(self) -> None:
        await self.session.close()


# --- LiteLLM ---------------------------------------------------------------------------

class LiteLLMClient:
    def __init__(self, base_url: str, router: bool) -> None:
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        self.litellm = litellm
        self.base = base_url
        self.router = None
        if router:
            params = {"api_base": base_url, "api_key": "sk-fake"}
            self.router = litellm.Router(
                model_list=[
                    {"model_name": "fake", "litellm_params": {"model": "openai/fake-model", **params}},
                    {"model_name": "fake", "litellm_params": {"model": "openai/fake-model-b", **params}},
                    {"model_name": "fake-fallback", "litellm_params": {"model": "openai/fake-model", **params}},
                    # The slow streams of the memory test: the same shape, a slow model.
                    {"model_name": "fake-slow", "litellm_params": {"model": "openai/fake-slow", **params}},
                    {"model_name": "fake-slow", "litellm_params": {"model": "openai/fake-slow", **params}},
                ],
                fallbacks=[{"fake": ["fake-fallback"]}, {"fake-slow": ["fake-fallback"]}],
                num_retries=2,
            )

    async def one(self, stream: bool, model: str) -> Result:
        result = Result()
        kwargs: dict[str, Any] = {"messages": MESSAGES, "max_tokens": MAX_TOKENS}
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        if self.router is not None:
            response = await self.router.acompletion(model="fake" if model.startswith("fake-model") else model,
                                                     **kwargs)
        else:
            response = await self.litellm.acompletion(model="openai/" + model, api_base=self.base,
                                                       api_key="sk-fake", **kwargs)
        if stream:
            async for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    if result.first is None:
                        result.first = time.perf_counter()
                    result.chunks += 1
        return result

    async def close(self) -> None:
        pass


# --- the sidecar, driven over stdio as a host drives it -----------------------------------

class SidecarHost:
    def __init__(self, cmd: list[str], data_dir: str) -> None:
        self.cmd = [*cmd, "--data-dir", data_dir, "--log-level", "warning"]
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.streams: dict[int, Result] = {}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=1 << 24)
        assert self.proc.stdout is not None
        ready = loads(await self.proc.stdout.readline())
        assert ready.get("method") == "sidecar:ready", ready
        self.reader = asyncio.get_running_loop().create_task(self._read())
        await self.call("model:get-config", {})

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        readline = self.proc.stdout.readline
        while True:
            line = await readline()
            if not line:
                for future in self.waiting.values():
                    if not future.done():
                        future.set_exception(RuntimeError("sidecar exited"))
                return
            message = loads(line)
            rid = message.get("id")
            if rid is not None:
                future = self.waiting.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("method") == "model:stream-chunk":
                params = message["params"]
                result = self.streams.get(params["requestId"])
                if result is not None and params["chunk"].get("content"):
                    if result.first is None:
                        result.first = time.perf_counter()
                    result.chunks += 1

    async def call(self, method: str, params: dict[str, Any], result: Result | None = None) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.next_id += 1
        rid = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = future
        if result is not None:
            self.streams[rid] = result
        self.proc.stdin.write(dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}) + b"\n")
        await self.proc.stdin.drain()
        try:
            return await future
        finally:
            self.streams.pop(rid, None)

    async def one(self, stream: bool, model: str) -> Result:
        result = Result()
        request: dict[str, Any] = {"prompt": PROMPT, "maxTokens": MAX_TOKENS}
        if model != "fake-model":
            request["modelId"] = model
        response = await self.call("model:stream" if stream else "model:generate", {"request": request},
                                   result if stream else None)
        if "result" not in response:
            raise RuntimeError(f"sidecar error: {response.get('error')}")
        return result

    async def close(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()


# --- the command loop ------------------------------------------------------------------

class Tally:
    """Latencies, first-chunk times, chunks and errors of the requests one command runs."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.ttfc: list[float] = []
        self.chunks = self.errors = 0
        self.last_error = ""

    async def one(self, client: Any, stream: bool, model: str) -> None:
        started = time.perf_counter()
        try:
            result = await client.one(stream, model)
        except Exception as exc:
            self.errors += 1
            self.last_error = repr(exc)[:300]
            return
        self.lat.append((time.perf_counter() - started) * 1000)
        if result.first is not None:
            self.ttfc.append((result.first - started) * 1000)
        self.chunks += result.chunks

    def errors_out(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.errors:
            out["lastError"] = self.last_error
        return out


async def seq(client: Any, n: int, stream: bool, model: str) -> dict[str, Any]:
    tally = Tally()
    for _ in range(n):
        await tally.one(client, stream, model)
    return tally.errors_out({"lat": tally.lat, "ttfc": tally.ttfc, "chunks": tally.chunks,
                             "errors": tally.errors})


async def conc(client: Any, n: int, inflight: int, stream: bool, model: str) -> dict[str, Any]:
    remaining = n
    tally = Tally()

    async def runner() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await tally.one(client, stream, model)

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(min(inflight, n))))
    wall = time.perf_counter() - started
    return tally.errors_out({"wallS": wall, "done": n - tally.errors, "errors": tally.errors,
                             "chunks": tally.chunks, "latP50": _pct(tally.lat, 0.5),
                             "ttfcP50": _pct(tally.ttfc, 0.5)})


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def amain() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("client")
    parser.add_argument("base_url")
    parser.add_argument("--sidecar-cmd", help="JSON list: the sidecar command line")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    started = time.perf_counter()
    client: Any
    pids = {"client": os.getpid()}
    if args.client in ("litellm", "litellm-router"):
        client = LiteLLMClient(args.base_url, router=args.client == "litellm-router")
    elif args.client == "aiohttp":
        client = AiohttpClient(args.base_url)
    elif args.client.startswith("httpx"):
        client = HttpxClient(args.base_url, args.client)
    elif args.client == "sidecar":
        client = SidecarHost(json.loads(args.sidecar_cmd), args.data_dir)
        await client.start()
        assert client.proc is not None
        pids["server"] = client.proc.pid
    else:
        raise SystemExit(f"unknown client {args.client}")
    import_ms = (time.perf_counter() - started) * 1000
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    def send(value: dict[str, Any]) -> None:
        out.write(json.dumps(value).encode() + b"\n")
        out.flush()

    send({"ready": True, "importMs": import_ms, "pids": pids})
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        cmd = command["cmd"]
        model = command.get("model", "fake-model")
        if cmd == "seq":
            send(await seq(client, command["n"], command.get("stream", False), model))
        elif cmd == "conc":
            send(await conc(client, command["n"], command["inflight"], command.get("stream", False), model))
        elif cmd == "quit":
            break
        else:
            send({"error": f"unknown command {cmd}"})
    await client.close()
    send({"bye": True})


if __name__ == "__main__":
    asyncio.run(amain())
