"""What a running local server really loaded: the context window it serves a model with,
and which models are being loaded right now.

A local server runs a model with a window fixed when it loaded it, often far below the
model's trained one (llama.cpp's ``-c``, LM Studio's load settings); a longer prompt is
cut or refused by the server after the request was sent. The windows are read from the
servers themselves:

* llama.cpp's server: ``GET /props``, ``default_generation_settings.n_ctx``, the window
  of one slot (https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md).
* LM Studio: ``GET /api/v0/models``, ``loaded_context_length`` of a model whose ``state``
  is ``loaded`` (https://lmstudio.ai/docs/developer/rest/endpoints).
* llama-cpp-python's server reports no window at all; for the embedded server the
  sidecar runs, it is the ``--n_ctx`` it was started with (the same holds for a managed
  ``command`` server started with ``--n_ctx``, ``-c`` or ``--ctx-size``).
* Ollama loads a model with the ``num_ctx`` of the request that loaded it, and loads it
  again when a request asks for another: the running window is ``context_length`` in
  ``GET /api/ps``, the most a request may ask for the trained ``<arch>.context_length``
  of ``POST /api/show`` (https://github.com/ollama/ollama/blob/main/docs/api.md).

``sidecar.core.local_fit`` applies this to each attempt before anything is sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sidecar.errors import SidecarError
from sidecar.local.managed import ManagedProvider
from sidecar.providers.base import Provider
from sidecar.providers.guard import DEFAULT_MAX_RESPONSE_BYTES
from sidecar.providers.ollama import OllamaProvider
from sidecar.providers.skeleton import HttpProvider

__all__ = ["ASK_TIMEOUT_S", "CACHE_TTL_S", "LoadedWindows", "Window", "argv_context", "ask", "loading", "pending",
           "windows"]

#: How long the answers of one server are reused (a server may be restarted with another window).
CACHE_TTL_S = 15.0
#: Bound on asking one server; no answer in time means no window is known.
ASK_TIMEOUT_S = 2.0
#: Command-line options that set the window: llama-cpp-python's server and llama.cpp's.
_CONTEXT_FLAGS = ("--n_ctx", "-c", "--ctx-size")


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """A model's window as its server says it serves it."""

    #: The window the model runs with now (None: not loaded, or the server does not say).
    loaded: int | None
    #: The most one request may use: the loaded window, or for Ollama the trained one.
    limit: int | None
    #: Whether a request sizes the window itself (Ollama's ``num_ctx``).
    adjustable: bool = False
    #: Where the numbers came from, for messages.
    source: str = ""


def argv_context(argv: Sequence[str]) -> int | None:
    """The window a server command line sets (``--n_ctx 8192``, ``-c 4096``, ``--ctx-size=2048``)."""
    for index, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name not in _CONTEXT_FLAGS:
            continue
        if not eq:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def _get(provider: HttpProvider[Any], url: str) -> object:
    return await provider.fetch("GET", url, None, DEFAULT_MAX_RESPONSE_BYTES)


async def _llamacpp_props(provider: HttpProvider[Any]) -> int | None:
    data = await _get(provider, _origin(provider.settings.base_url) + "/props")
    if not isinstance(data, dict):
        return None
    settings = data.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    return _positive(n_ctx) or _positive(data.get("n_ctx"))


async def _lmstudio(provider: HttpProvider[Any], model: str) -> Window | None:
    data = await _get(provider, _origin(provider.settings.base_url) + "/api/v0/models")
    entries = data.get("data") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and entry.get("id") == model:
            loaded = _positive(entry.get("loaded_context_length")) if entry.get("state") == "loaded" else None
            trained = _positive(entry.get("max_context_length"))
            # Not loaded: LM Studio loads it on demand with its own default window, unknown here.
            return Window(loaded, loaded, source="LM Studio /api/v0/models") if loaded else (
                Window(None, None, source="LM Studio /api/v0/models") if trained else None)
    return None


async def _custom(provider: Provider, model: str) -> Window | None:
    if isinstance(provider, ManagedProvider):
        server = provider.manager.server(provider.name)
        if server is not None:
            n_ctx = argv_context(server.spec.argv)
            if n_ctx is not None:
                return Window(n_ctx, n_ctx, source="the server's command line")
            if server.state != "ready":
                return None  # asking would fail: it runs only once a request starts it
    if not isinstance(provider, HttpProvider):
        return None
    with contextlib.suppress(SidecarError):
        n_ctx = await _llamacpp_props(provider)
        if n_ctx is not None:
            return Window(n_ctx, n_ctx, source="llama.cpp /props")
    with contextlib.suppress(SidecarError):
        return await _lmstudio(provider, model)
    return None


async def _ollama(provider: OllamaProvider, model: str) -> Window | None:
    running, shown = await asyncio.gather(provider.running_models(), provider.get_model_info(model),
                                          return_exceptions=True)
    loaded = None
    if isinstance(running, dict):
        loaded = running.get(model, running.get(model + ":latest") if ":" not in model else None)
    trained = shown.context_window if not isinstance(shown, BaseException) and shown is not None else None
    if loaded is None and trained is None:
        return None
    return Window(loaded, trained, adjustable=True, source="Ollama /api/ps and /api/show")


async def ask(provider: Provider, model: str) -> Window | None:
    """What ``provider``'s server says about ``model``'s window; None when it says nothing."""
    try:
        async with asyncio.timeout(ASK_TIMEOUT_S):
            if isinstance(provider, OllamaProvider):
                return await _ollama(provider, model)
            if provider.settings.kind == "custom":
                return await _custom(provider, model)
    except (SidecarError, TimeoutError):
        return None
    return None


class LoadedWindows:
    """:func:`ask`, remembered for :data:`CACHE_TTL_S` per provider object and model."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[Provider, dict[str, tuple[float, Window | None]]] = (
            weakref.WeakKeyDictionary())

    async def get(self, provider: Provider, model: str) -> Window | None:
        known = self._cache.get(provider, {}).get(model)
        if known is not None and time.monotonic() - known[0] < CACHE_TTL_S:
            return known[1]
        window = await ask(provider, model)
        self._cache.setdefault(provider, {})[model] = (time.monotonic(), window)
        return window

    def asked(self, provider: Provider, model: str, window: Window, size: int | None) -> None:
        """Ollama now runs ``model`` with ``size``, the ``num_ctx`` just sent (``None``: with
        its default, unknown here until ``/api/ps`` is asked again)."""
        known = self._cache.setdefault(provider, {})
        if size is None:
            known.pop(model, None)
        else:
            known[model] = (time.monotonic(), dataclasses.replace(window, loaded=size))

    def forget(self, provider: Provider) -> None:
        self._cache.pop(provider, None)


#: The windows of every provider of this process.
windows = LoadedWindows()


#: Requests and preloads in flight per (provider, model): a model asked for and not yet
#: running is loading.
pending: collections.Counter[tuple[str, str]] = collections.Counter()


class loading:
    """Count a call of ``model`` for the time it runs (see :data:`pending`). A class, not
    a generator: it runs around every attempt."""

    __slots__ = ("_key",)

    def __init__(self, provider: str, model: str) -> None:
        self._key = (provider, model)

    async def __aenter__(self) -> None:
        pending[self._key] += 1

    async def __aexit__(self, *_exc: object) -> None:
        key = self._key
        pending[key] -= 1
        if pending[key] <= 0:
            del pending[key]
