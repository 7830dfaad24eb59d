"""Find the local model servers running on this machine with short loopback probes.

Every port of the list is asked, all at once, a few documented read-only endpoints on
``127.0.0.1`` (never ``localhost``, whose lookup may go to ``::1`` or a hosts file):

* Ollama: ``GET /`` answers ``Ollama is running``; ``GET /api/tags`` lists the models
  (https://github.com/ollama/ollama/blob/main/docs/api.md#list-local-models).
* LM Studio: ``GET /api/v1/models`` (its REST API v1, LM Studio 0.4+: ``models`` with
  ``key`` and ``type``) or ``GET /api/v0/models`` (0.3.6+: entries with ``type``,
  ``state``, ``compatibility_type``); its ``/v1/models`` entries are ``owned_by:
  "organization_owner"``, and it answers a path it does not serve with a 200
  ``{"error": "Unexpected endpoint or method. (GET /)"}``.
* llama.cpp server: ``GET /props`` holds ``default_generation_settings``; its
  ``/v1/models`` entries are ``owned_by: "llamacpp"``.
* vLLM: ``/v1/models`` entries are ``owned_by: "vllm"``.
* LocalAI: ``GET /system`` lists ``backends`` and ``loaded_models``.
* Jan: an OpenAI-compatible ``/v1/models`` on its default port 1337 (it asks for a key,
  so a 401 there counts too).
* Anything else answering an OpenAI ``/v1/models`` list: ``openai-compatible``.

The kind comes from the answers; a port's hint (the kind whose default port it is)
only names a server whose answers are plain OpenAI-compatible ones. Each request has
:data:`PROBE_TIMEOUT_S` for connect and read together, so a port that accepts and never
answers costs that much and no more. Nothing is sent but ``GET`` without credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson

__all__ = [
    "DEFAULT_PORTS",
    "PORTS_ENV",
    "FoundServer",
    "PortSpec",
    "ServerKind",
    "discover",
    "identify",
    "parse_ports",
]

ServerKind = Literal["ollama", "lmstudio", "llamacpp", "vllm", "jan", "localai", "openai-compatible"]
_KINDS: tuple[ServerKind, ...] = ("ollama", "lmstudio", "llamacpp", "vllm", "jan", "localai", "openai-compatible")

#: Replaces :data:`DEFAULT_PORTS`: ``PORT`` or ``PORT=KIND`` items, comma-separated
#: (``11434,1234,8080,8000,1337=jan``). Tests point it at their fakes.
PORTS_ENV = "MODEL_SIDECAR_DISCOVER_PORTS"
#: Connect plus read of one probe request.
PROBE_TIMEOUT_S = 0.45
#: The whole discovery, whatever the ports do.
DEADLINE_S = 1.2
_MAX_MODELS = 500
_MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A loopback port to probe, and the kind whose default port it is (if one)."""

    port: int
    hint: ServerKind | None = None


#: Ollama 11434, LM Studio 1234, llama.cpp and LocalAI 8080 (told apart by their
#: answers), vLLM 8000, Jan 1337.
DEFAULT_PORTS: tuple[PortSpec, ...] = (
    PortSpec(11434, "ollama"),
    PortSpec(1234, "lmstudio"),
    PortSpec(8080),
    PortSpec(8000, "vllm"),
    PortSpec(1337, "jan"),
)


#: More ports than this in :data:`PORTS_ENV` is a mistake (each costs seven requests).
MAX_PORTS = 64


def parse_ports(value: str) -> tuple[PortSpec, ...]:
    """The port list of :data:`PORTS_ENV` (a port named twice counts once); raises
    ``ValueError`` naming the bad item."""
    specs: dict[int, PortSpec] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        port_text, _, hint = item.partition("=")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{PORTS_ENV}: {item[:40]!r} is not PORT or PORT=KIND")
        if hint and hint not in _KINDS:
            raise ValueError(f"{PORTS_ENV}: unknown kind {hint[:40]!r}")
        specs.setdefault(int(port_text), PortSpec(int(port_text), _kind(hint) if hint else None))
    if len(specs) > MAX_PORTS:
        raise ValueError(f"{PORTS_ENV}: more than {MAX_PORTS} ports")
    return tuple(specs.values())


def _kind(name: str) -> ServerKind:
    for kind in _KINDS:
        if kind == name:
            return kind
    raise ValueError(name)


@dataclass(frozen=True, slots=True)
class FoundServer:
    kind: ServerKind
    port: int
    models: tuple[str, ...]

    @property
    def base_url(self) -> str:
        """As a config entry writes it: Ollama's native root, ``/v1`` for the others."""
        origin = f"http://127.0.0.1:{self.port}"
        return origin if self.kind == "ollama" else origin + "/v1"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    #: False when the body was longer than the path's limit (only its start is kept).
    complete: bool

    def json(self) -> Any:
        if self.status != 200 or not self.complete:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


#: path → how many body bytes are read at most.
_PROBES: dict[str, int] = {
    "/": 256,
    "/api/tags": 2 << 20,
    "/v1/models": 2 << 20,
    "/api/v0/models": 2 << 20,
    "/api/v1/models": 2 << 20,
    "/props": 1 << 20,
    "/system": 1 << 20,
}
_Answers = Mapping[str, _Answer | None]
#: Probes take the body as sent; a server that compresses anyway is not identified.
_IDENTITY = {"Accept-Encoding": "identity"}


async def discover(ports: tuple[PortSpec, ...] = DEFAULT_PORTS, *, probe_timeout_s: float = PROBE_TIMEOUT_S,
                   deadline_s: float = DEADLINE_S) -> list[FoundServer]:
    """The servers found on ``ports``, in the order of ``ports``; never raises for a port."""
    async with httpx.AsyncClient(
        # Loopback only: no proxy from the environment, no redirect anywhere else.
        trust_env=False,
        # Every probe is plain http to 127.0.0.1; skipping the CA bundle saves ~50 ms a call.
        verify=False,
        follow_redirects=False,
        timeout=httpx.Timeout(probe_timeout_s),
        limits=httpx.Limits(max_connections=len(_PROBES) * max(1, len(ports)), max_keepalive_connections=0),
    ) as client:
        tasks = [asyncio.create_task(_probe_port(client, spec, probe_timeout_s)) for spec in ports]
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    found = [task.result() for task in tasks if task in done and not task.cancelled() and task.exception() is None]
    return [server for server in found if server is not None]


async def _probe_port(client: httpx.AsyncClient, spec: PortSpec, timeout_s: float) -> FoundServer | None:
    origin = f"http://127.0.0.1:{spec.port}"
    answers = await asyncio.gather(*(_get(client, origin + path, limit, timeout_s) for path, limit in _PROBES.items()))
    return identify(spec, dict(zip(_PROBES, answers, strict=True)))


async def _get(client: httpx.AsyncClient, url: str, limit: int, timeout_s: float) -> _Answer | None:
    """One bounded GET: None when nothing (or no HTTP) answered within ``timeout_s``.

    The bound is on the bytes received: the body is asked for and read uncompressed, so a
    compressed answer cannot inflate past ``limit`` (one gzip chunk can grow a thousandfold).
    """
    try:
        async with asyncio.timeout(timeout_s), client.stream("GET", url, headers=_IDENTITY) as response:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > limit:
                    return _Answer(response.status_code, bytes(body[:limit]), complete=False)
            return _Answer(response.status_code, bytes(body), complete=True)
    except (TimeoutError, httpx.HTTPError, UnicodeError):
        return None


def identify(spec: PortSpec, answers: _Answers) -> FoundServer | None:
    """Which server answered on ``spec.port``, from its answers; None when none we know."""
    for kind, rule in _RULES:
        models = rule(answers)
        if models is not None:
            return FoundServer(kind, spec.port, models)
    models = _ids(_json(answers, "/v1/models"))
    if models is not None:
        return FoundServer(spec.hint or "openai-compatible", spec.port, models)
    listing = answers.get("/v1/models")
    if spec.hint == "jan" and listing is not None and listing.status == 401:
        return FoundServer("jan", spec.port, ())  # Jan's server always asks for a key
    return None


def _json(answers: _Answers, path: str) -> Any:
    answer = answers.get(path)
    return None if answer is None else answer.json()


def _ids(listing: Any, keep: Callable[[dict[str, Any]], bool] = lambda _entry: True) -> tuple[str, ...] | None:
    """The ``id``s of an OpenAI ``{"data": [...]}`` model list; None if it is not one."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return None
    ids = (entry.get("id") for entry in listing["data"] if isinstance(entry, dict) and keep(entry))
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, str) and 0 < len(i) <= _MAX_ID_CHARS))[:_MAX_MODELS]


def _owned_by(answers: _Answers, owner: str) -> bool:
    listing = _json(answers, "/v1/models")
    entries = listing.get("data") if isinstance(listing, dict) else None
    return isinstance(entries, list) and any(isinstance(e, dict) and e.get("owned_by") == owner for e in entries)


def _ollama(answers: _Answers) -> tuple[str, ...] | None:
    root = answers.get("/")
    running = root is not None and root.status == 200 and root.body.startswith(b"Ollama is running")
    tags = _json(answers, "/api/tags")
    entries = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(entries, list):
        return () if running else None
    names = (e.get("model") or e.get("name") for e in entries if isinstance(e, dict))
    models = tuple(dict.fromkeys(n for n in names if isinstance(n, str) and 0 < len(n) <= _MAX_ID_CHARS))
    # /api/tags alone: its entries carry a digest, which no other server's listing has.
    if running or all(isinstance(e, dict) and "digest" in e for e in entries):
        return models[:_MAX_MODELS]
    return None


def _lmstudio(answers: _Answers) -> tuple[str, ...] | None:
    rest_v1 = _json(answers, "/api/v1/models")
    entries = rest_v1.get("models") if isinstance(rest_v1, dict) else None
    if isinstance(entries, list) and all(isinstance(e, dict) and "key" in e for e in entries):
        keys = (e["key"] for e in entries if e.get("type") != "embedding")
        return tuple(dict.fromkeys(k for k in keys if isinstance(k, str) and 0 < len(k) <= _MAX_ID_CHARS))[:_MAX_MODELS]
    native = _json(answers, "/api/v0/models")
    if isinstance(native, dict) and native.get("object") == "list":
        models = _ids(native, lambda entry: entry.get("type") != "embeddings")
        if models is not None:
            return models
    if _owned_by(answers, "organization_owner"):
        return _ids(_json(answers, "/v1/models"))
    root = answers.get("/")
    if root is not None and root.status == 200 and root.body.startswith(_LMSTUDIO_UNKNOWN_PATH):
        return _ids(_json(answers, "/v1/models")) or ()
    return None


#: The start of LM Studio's 200 answer to a path it does not serve.
_LMSTUDIO_UNKNOWN_PATH = b'{"error":"Unexpected endpoint or method.'


def _llamacpp(answers: _Answers) -> tuple[str, ...] | None:
    props = _json(answers, "/props")
    if (isinstance(props, dict) and "default_generation_settings" in props) or _owned_by(answers, "llamacpp"):
        return _ids(_json(answers, "/v1/models")) or ()
    return None


def _vllm(answers: _Answers) -> tuple[str, ...] | None:
    return _ids(_json(answers, "/v1/models")) if _owned_by(answers, "vllm") else None


def _localai(answers: _Answers) -> tuple[str, ...] | None:
    system = _json(answers, "/system")
    if isinstance(system, dict) and isinstance(system.get("backends"), list):
        return _ids(_json(answers, "/v1/models")) or ()
    return None


_RULES: tuple[tuple[ServerKind, Callable[[_Answers], tuple[str, ...] | None]], ...] = (
    ("ollama", _ollama),
    ("lmstudio", _lmstudio),
    ("llamacpp", _llamacpp),
    ("vllm", _vllm),
    ("localai", _localai),
)
