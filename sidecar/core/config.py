"""The config manager: ``config.json`` in the data dir, environment keys, merge patches.

Three layers make the effective :class:`ModelConfig`: built-in defaults, the stored file
(only what the host set), and the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
``OLLAMA_HOST``), which a stored value overrides. ``model:set-config`` applies a JSON merge
patch (RFC 7386) to the stored layer, validates the result whole, and only then writes it
atomically (temp file, fsync, rename, mode 0600): a bad patch changes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pydantic
import structlog

from sidecar.errors import InvalidParams
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import is_loopback_url
from sidecar.secrets import Redactor, is_preview, is_sensitive_header, preview
from sidecar.transport.dispatcher import validation_errors
from sidecar.wire.config import BUILTIN_PROVIDERS, ModelConfig

__all__ = ["CONFIG_FILE", "ConfigManager", "config_from_doc", "merge_patch", "normalize_ollama_host"]

log = structlog.get_logger("sidecar.config")

CONFIG_FILE = "config.json"
_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
#: Test hook, read once at start: ``config-write-pause`` makes the config writer stop the
#: process (SIGSTOP) with half of the new content written, so a test can SIGKILL it there.
_FAULT = os.environ.get("MODEL_SIDECAR_FAULT", "")


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; ``null`` deletes, objects merge, rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def normalize_ollama_host(value: str) -> str:
    """``OLLAMA_HOST`` as Ollama reads it (``host``, ``host:port``, URL) → a base URL.

    As in Ollama's ``envconfig``: quotes and spaces are trimmed, a bare host gets port
    11434, an explicit ``http://``/``https://`` without a port gets 80/443, and a
    bind-all address (``0.0.0.0``, ``::``) is reached on loopback.
    """
    value = value.strip().strip("\"'").strip().rstrip("/")
    scheme, default_port = "http", 11434
    if "://" in value:
        scheme, value = value.split("://", 1)
        default_port = {"http": 80, "https": 443}.get(scheme, 11434)
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"  # a bare IPv6 address
    try:
        parts = urlsplit(f"{scheme}://{value}")
        host, port = parts.hostname or "", parts.port or default_port
    except ValueError:
        host, port = value, default_port
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _defaults_doc() -> dict[str, Any]:
    return ModelConfig().model_dump(mode="json", by_alias=True, exclude_none=True)


def config_from_doc(stored: dict[str, Any]) -> ModelConfig:
    """The effective config of a stored document: defaults with ``stored`` merged over them.

    Raises:
        pydantic.ValidationError: the merged document is not a valid ``ModelConfig``.
    """
    return ModelConfig.model_validate(merge_patch(_defaults_doc(), stored))


class ConfigManager:
    """Owns the stored config, the effective config and its redacted preview."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], redactor: Redactor) -> None:
        self.data_dir = data_dir
        self.path = data_dir / CONFIG_FILE
        self._env = dict(env)
        self._redactor = redactor
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[ModelConfig], None]] = []
        self.stored: dict[str, Any] = {}
        self.load_error: str | None = None
        self.config = ModelConfig()
        redactor.add(*(env.get(var) for var in _KEY_ENV.values()))

    def load(self) -> None:
        """Read ``config.json``; a missing file means defaults, a broken one is reported."""
        for leftover in self.data_dir.glob(CONFIG_FILE + ".tmp-*"):
            leftover.unlink(missing_ok=True)  # a write interrupted by a crash
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            self.load_error = f"cannot read {self.path}: {exc.strerror}"
            raw = None
        stored: dict[str, Any] = {}
        if raw is not None:
            try:
                parsed = orjson.loads(raw)
                if not isinstance(parsed, dict):
                    raise ValueError("top level is not an object")
                stored = parsed
                self._validate(stored)
            except (ValueError, InvalidParams) as exc:
                self.load_error = f"{self.path} is invalid and was ignored: {exc}"
                stored = {}
        if self.load_error:
            log.error("config_invalid", error=self.load_error)
        self.stored = stored
        self.config = self._validate(stored)
        self._register_secrets()

    def on_change(self, listener: Callable[[ModelConfig], None]) -> None:
        self._listeners.append(listener)

    def _validate(self, stored: dict[str, Any]) -> ModelConfig:
        try:
            return config_from_doc(stored)
        except pydantic.ValidationError as exc:
            errors = [
                {"path": "/config" + e["path"], "message": e["message"]} for e in validation_errors(exc)
            ]
            raise InvalidParams("invalid config", errors=errors) from exc

    async def patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a merge patch to the stored config; returns the new redacted preview.

        Once validation passed, the write and the switch to the new config complete even
        if the request is cancelled meanwhile (the host then still gets the result), so
        the file and the config in use never disagree.
        """
        async with self._lock:
            new_stored = merge_patch(self.stored, _drop_previews(patch))
            config = self._validate(new_stored)
            commit = asyncio.ensure_future(self._commit(new_stored, config))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                await commit  # finish what was started; the cancel is answered by the result
        return self.preview()

    async def _commit(self, stored: dict[str, Any], config: ModelConfig) -> None:
        await asyncio.to_thread(self._write_atomic, stored)
        self.stored, self.config = stored, config
        self.load_error = None
        self._register_secrets()
        for listener in self._listeners:
            listener(config)

    def _write_atomic(self, doc: dict[str, Any]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        # mkstemp: a unique name created 0600 with O_EXCL, so two writers never share it.
        fd, tmp = tempfile.mkstemp(prefix=CONFIG_FILE + ".tmp-", dir=self.data_dir)
        try:
            view = memoryview(data)
            if _FAULT == "config-write-pause":
                view = view[os.write(fd, view[: len(view) // 2]):]
                signal.raise_signal(signal.SIGSTOP)  # this thread stops at once, the rest with it
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            dir_fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _register_secrets(self) -> None:
        for item in self._entries():
            settings = self._resolve(*item)
            self._redactor.add(settings.api_key)
            self._redactor.add(*(v for k, v in settings.headers.items() if is_sensitive_header(k)))

    def _stored_entry(self, name: str) -> dict[str, Any]:
        providers = self.stored.get("providers", {})
        if name in BUILTIN_PROVIDERS:
            entry = providers.get(name, {})
        else:
            entry = providers.get("custom", {}).get(name, {})
        return entry if isinstance(entry, dict) else {}

    def _entries(self) -> list[tuple[str, str, Any]]:
        cfg = self.config.providers
        return [
            ("openai", "openai", cfg.openai),
            ("anthropic", "anthropic", cfg.anthropic),
            ("ollama", "ollama", cfg.ollama),
            *[(name, "custom", entry) for name, entry in cfg.custom.items()],
        ]

    def _resolve(self, name: str, kind: str, entry: Any) -> ProviderSettings:
        base_url = entry.base_url
        api_key = entry.api_key
        if kind in _KEY_ENV and not api_key:
            api_key = self._env.get(_KEY_ENV[kind]) or None
        if kind == "ollama" and "baseURL" not in self._stored_entry(name) and self._env.get("OLLAMA_HOST"):
            base_url = normalize_ollama_host(self._env["OLLAMA_HOST"])
        return ProviderSettings(
            name=name,
            kind=kind,
            base_url=base_url,
            default_model=entry.default_model,
            api_key=api_key,
            headers=dict(entry.headers or {}),
            timeout_ms=entry.timeout_ms,
            # Loopback hosts are always local; a custom entry may declare itself local.
            local=is_loopback_url(base_url) or bool(getattr(entry, "local", False)),
            models=tuple(entry.models or ()),
        )

    def provider_settings(self) -> list[ProviderSettings]:
        """Every enabled provider, resolved: key from config or env, local flag set."""
        return [self._resolve(*item) for item in self._entries() if item[2].enabled]

    def preview(self) -> dict[str, Any]:
        """The effective config as hosts see it: keys as ``sk-…abcd`` previews."""
        doc = self.config.model_dump(mode="json", by_alias=True, exclude_none=True)
        resolved = {name: self._resolve(name, kind, entry) for name, kind, entry in self._entries()}
        providers = doc["providers"]
        for name in BUILTIN_PROVIDERS:
            _preview_entry(providers[name], resolved.get(name))
        for name, entry in providers.get("custom", {}).items():
            _preview_entry(entry, resolved.get(name))
        return doc


def _preview_entry(entry: dict[str, Any], settings: ProviderSettings | None) -> None:
    key = settings.api_key if settings else entry.get("apiKey")
    if key:
        entry["apiKey"] = preview(key)
    else:
        entry.pop("apiKey", None)
    if settings is not None:
        entry["baseURL"] = settings.base_url
    if entry.get("headers"):
        entry["headers"] = {k: preview(v) if is_sensitive_header(k) else v for k, v in entry["headers"].items()}


def _drop_previews(patch: dict[str, Any]) -> dict[str, Any]:
    """Remove ``apiKey`` values that are previews: sending one back keeps the stored key."""
    patch = copy.deepcopy(patch)
    providers = patch.get("providers")
    if not isinstance(providers, dict):
        return patch
    entries = [providers.get(name) for name in BUILTIN_PROVIDERS]
    custom = providers.get("custom")
    if isinstance(custom, dict):
        entries.extend(custom.values())
    for entry in entries:
        if isinstance(entry, dict):
            key = entry.get("apiKey")
            if isinstance(key, str) and is_preview(key):
                del entry["apiKey"]
            headers = entry.get("headers")
            if isinstance(headers, dict):
                for name in [n for n, v in headers.items() if isinstance(v, str) and is_preview(v)]:
                    del headers[name]
    return patch
