"""Download a model into Ollama: ``POST /api/pull`` and its NDJSON progress stream.

Ollama answers ``{"model": ..., "stream": true}`` with one JSON object per line
(https://github.com/ollama/ollama/blob/main/docs/api.md#pull-a-model): ``pulling
manifest``, then per layer ``pulling <digest prefix>`` with ``digest``, ``total`` and
``completed``, then ``verifying sha256 digest``, ``writing manifest`` and ``success``.
A failure is an ``{"error": "..."}`` line inside the 200 answer. Lines are split on the
byte ``\\n`` only and bounded in size; a stream that sends no byte for ``stall_s`` is
given up with a :class:`NetworkError`. Cancelling the caller leaves the ``async with``
of the request, which closes the upstream connection (Ollama then stops the download).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import orjson
import structlog

from sidecar.errors import ModelError, NetworkError, SidecarError
from sidecar.providers.base import Provider
from sidecar.providers.failures import map_http_errors, redact_errors
from sidecar.providers.framing import as_count, loads_body
from sidecar.providers.http import DEFAULT_CONNECT_TIMEOUT_S, raise_for_error

__all__ = ["MAX_PULL_LINE_BYTES", "MAX_TAGS_BYTES", "Progress", "ProgressThrottle", "PullOutcome", "pull_model"]

log = structlog.get_logger("sidecar.local")

_PULL_PATH = "/api/pull"
_TAGS_PATH = "/api/tags"
#: Progress lines are a few hundred bytes; anything longer is a broken stream.
MAX_PULL_LINE_BYTES = 64 * 1024
#: ``/api/tags`` after a pull, read for the model's digest and size: about 500 bytes a
#: model, so 4 MiB is thousands of models; a longer answer is not read further.
MAX_TAGS_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress line, as the host is told about it."""

    status: str
    completed: int | None = None
    total: int | None = None
    digest: str | None = None

    @property
    def layer_done(self) -> bool:
        return self.total is not None and self.completed == self.total


@dataclass(frozen=True, slots=True)
class PullOutcome:
    digest: str | None
    size_bytes: int | None


class ProgressThrottle:
    """Passes a new status at once, the same status at most every ``interval_s``, and
    the first line that completes a layer; the rest is dropped (the next one supersedes it)."""

    def __init__(self, interval_s: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._status: str | None = None
        self._sent_at = float("-inf")
        self._done_sent = False

    def admit(self, progress: Progress) -> bool:
        now = self._clock()
        new_status = progress.status != self._status
        completes = progress.layer_done and not (self._done_sent and not new_status)
        if new_status or completes or now - self._sent_at >= self.interval_s:
            self._status = progress.status
            self._sent_at = now
            self._done_sent = progress.layer_done
            return True
        return False


def _headers(provider: Provider) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if provider.settings.api_key:
        headers["authorization"] = f"Bearer {provider.settings.api_key}"
    headers.update(provider.settings.headers)
    return headers


async def _lines(response: httpx.Response, stall_s: float, name: str, model: str) -> AsyncIterator[bytes]:
    """The non-empty lines of the body; NetworkError when no byte comes for ``stall_s``."""
    chunks = response.aiter_bytes()
    buffer = b""
    while True:
        try:
            async with asyncio.timeout(stall_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise NetworkError(f"{name}: the pull of {model!r} made no progress for {stall_s:g} s",
                               provider=name, model_id=model) from None
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > MAX_PULL_LINE_BYTES:
            raise ModelError(f"{name}: a pull progress line is longer than {MAX_PULL_LINE_BYTES} bytes",
                             provider=name, model_id=model)
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _progress(data: object, name: str, model: str) -> Progress:
    """One parsed line; an ``error`` line or a line without ``status`` raises."""
    if isinstance(data, dict) and "error" in data:
        message = data["error"] if isinstance(data["error"], str) else "error in the pull stream"
        raise ModelError(f"{name}: pulling {model!r} failed: {message}", provider=name, model_id=model,
                         retryable=False)
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise ModelError(f"{name}: unexpected pull progress line", provider=name, model_id=model)
    digest = data.get("digest")
    return Progress(
        status=data["status"][:200],
        completed=as_count(data["completed"]) if "completed" in data else None,
        total=as_count(data["total"]) if "total" in data else None,
        digest=digest[:200] if isinstance(digest, str) and digest else None,
    )


async def pull_model(provider: Provider, model: str, *, on_progress: Callable[[Progress], Awaitable[None]],
                     stall_s: float) -> PullOutcome:
    """Pull ``model`` into the Ollama server of ``provider``; returns once it says success."""
    name = provider.name
    sizes: dict[str, int] = {}
    with redact_errors(provider.settings.api_key), map_http_errors(name, model):
        async with provider.client.stream(
            "POST", _PULL_PATH, content=orjson.dumps({"model": model, "stream": True}), headers=_headers(provider),
            # Reads are watched by the stall timer instead: a big layer takes hours.
            timeout=httpx.Timeout(None, connect=DEFAULT_CONNECT_TIMEOUT_S),
        ) as response:
            await raise_for_error(response, provider=name, model=model)
            success = False
            async for line in _lines(response, stall_s, name, model):
                progress = _progress(loads_body(line, provider=name, model=model), name, model)
                if progress.digest and progress.total is not None:
                    sizes[progress.digest] = progress.total
                await on_progress(progress)
                if progress.status == "success":
                    success = True
                    break
        if not success:
            raise NetworkError(f"{name}: the pull of {model!r} ended before Ollama said success",
                               provider=name, model_id=model)
    try:
        with map_http_errors(name, model):
            listed = await _listed(provider, model)
    except SidecarError:
        listed = None  # the model is there; only its listing failed
    return listed or PullOutcome(digest=None, size_bytes=sum(sizes.values()) or None)


def _same_model(a: str, b: str) -> bool:
    """Ollama adds ``:latest`` to a name without a tag."""
    return (a if ":" in a.rsplit("/", 1)[-1] else a + ":latest") == (b if ":" in b.rsplit("/", 1)[-1] else b + ":latest")


async def _tags_body(provider: Provider, model: str) -> bytes | None:
    """The body of ``/api/tags`` as sent, at most :data:`MAX_TAGS_BYTES`; None when longer or compressed."""
    headers = {**_headers(provider), "accept-encoding": "identity"}
    async with provider.client.stream("GET", _TAGS_PATH, headers=headers) as response:
        await raise_for_error(response, provider=provider.name, model=model)
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            return None  # asked for identity: never inflate an answer of unknown ratio
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_TAGS_BYTES:
                return None
        return bytes(body)


async def _listed(provider: Provider, model: str) -> PullOutcome | None:
    """The pulled model's digest and size from ``/api/tags``; None when it is not listed."""
    body = await _tags_body(provider, model)
    if body is None:
        log.warning("ollama_tags_unread", provider=provider.name, limit=MAX_TAGS_BYTES)
        return None
    data = loads_body(body, provider=provider.name, model=model)
    entries = data.get("models") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and any(isinstance(entry.get(k), str) and _same_model(entry[k], model)
                                           for k in ("model", "name")):
            digest, size = entry.get("digest"), entry.get("size")
            return PullOutcome(digest=digest if isinstance(digest, str) and digest else None,
                               size_bytes=as_count(size) if isinstance(size, int) else None)
    return None
