"""API keys in the operating system's credential store, with ``config.json`` as fallback.

The store is the macOS Keychain, the Windows Credential Manager, or a Secret Service
(GNOME Keyring, KeePassXC, KWallet's Secret Service interface) on Linux and the BSDs,
reached through the ``keyring`` package. The backend is picked here by platform, not
through keyring's plugin discovery: that reads package metadata (entry points), which a
frozen binary does not carry, and a user's keyring config file could pick a backend that
only pretends to store (``keyring.backends.fail``/``null``).

Each key is one item: service ``model-sidecar``, account ``"<provider> <random id>"``.
``config.json`` keeps only that account name, as the entry's ``apiKeyRef``. A new key
is always a new item, written before the file that names it, and the item it replaces
is deleted only once the file is written: a write that fails at any step leaves the old
file and the old item as they were (at worst an item that nothing names).

Where no store works (a Linux machine without a Secret Service on its session bus, a
store that raises or does not answer), keys stay in ``config.json`` (mode 0600), and
:attr:`KeyStore.problem` says why.
"""

from __future__ import annotations

import copy
import functools
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import structlog

from sidecar.wire.kinds import BUILTIN_PROVIDERS

__all__ = [
    "PROBE_ACCOUNT",
    "SERVICE",
    "STORAGE_ENV",
    "TIMEOUT_S",
    "KeyStorage",
    "KeyStore",
    "KeychainError",
    "key_refs",
    "stored_entries",
]

log = structlog.get_logger("sidecar.keys")

SERVICE = "model-sidecar"
#: ``file``: never use the credential store (a portable install, a test run).
STORAGE_ENV = "MODEL_SIDECAR_KEY_STORAGE"
#: Read (never written) once at start: opens, and unlocks, the store's collection.
PROBE_ACCOUNT = "probe"
#: The longest wait for one operation of the store; a Secret Service whose collection is
#: locked may wait for a password prompt that no one answers.
TIMEOUT_S = 15.0
#: Where stored keys live (``model:get-config``'s ``keyStorage``).
KeyStorage = Literal["keychain", "file"]
#: The credential stores' own limits are far above this; a longer message is cut.
_MAX_REASON_CHARS = 300

T = TypeVar("T")


class KeychainError(Exception):
    """The credential store failed or did not answer; ``reason`` says how (never a key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason[:_MAX_REASON_CHARS]


def _bounded(call: Callable[[], T], timeout_s: float) -> T:
    """``call()`` in a daemon thread, given up after ``timeout_s`` (the thread may stay)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # every failure of a backend is a reason
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="keychain", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise KeychainError(f"the credential store did not answer within {timeout_s:g} s")
    ok, value = outcome[0]
    if not ok:
        raise KeychainError(_describe(value))
    result: T = value
    return result


def _needs_session_bus() -> bool:
    """Whether this platform's store is the Secret Service (Linux and the BSDs)."""
    return sys.platform not in ("darwin", "win32")


def _platform_backend() -> Any:
    """This platform's credential store, opened once; raises where it cannot work."""
    backend: Any
    if sys.platform == "darwin":  # pragma: no cover - macOS only
        from keyring.backends import macOS

        backend = macOS.Keyring
    elif sys.platform == "win32":  # pragma: no cover - Windows only
        from keyring.backends import Windows

        backend = Windows.WinVaultKeyring
    else:
        from keyring.backends import SecretService

        backend = SecretService.Keyring
    # keyring's priority check raises when the store is missing (no Secret Service on
    # the session bus, not macOS, no Credential Manager API).
    _ = backend.priority
    store = backend()
    store.get_password(SERVICE, PROBE_ACCOUNT)
    return store


def stored_entries(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(provider name, entry object)`` of every provider entry of a stored document."""
    providers = doc.get("providers")
    if not isinstance(providers, dict):
        return []
    found = [(name, providers.get(name)) for name in BUILTIN_PROVIDERS]
    custom = providers.get("custom")
    if isinstance(custom, dict):
        found.extend(custom.items())
    return [(name, entry) for name, entry in found if isinstance(entry, dict)]


def key_refs(doc: Mapping[str, Any]) -> set[str]:
    """The ``apiKeyRef`` of every entry of a stored document."""
    return {ref for _name, entry in stored_entries(doc) if isinstance(ref := entry.get("apiKeyRef"), str)}


class KeyStore:
    """Where stored keys live: the OS credential store, or (``backend`` None) config.json."""

    def __init__(self, backend: Any = None, problem: str | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self._backend = backend
        #: Why keys are kept in the file (None while the credential store is used).
        self.problem = problem
        self._timeout_s = timeout_s

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KeyStore:
        """The store the sidecar uses: ``MODEL_SIDECAR_KEY_STORAGE=file`` keeps keys in
        config.json; anything else (``auto``, unset) uses the credential store where one works."""
        if env.get(STORAGE_ENV, "").strip().lower() == "file":
            store = cls(None, f"{STORAGE_ENV}=file: keys are kept in config.json")
            log.info("key_storage", storage="file", problem=store.problem)
            return store
        return cls.detect(env=env)

    @classmethod
    def detect(cls, timeout_s: float = TIMEOUT_S, env: Mapping[str, str] | None = None) -> KeyStore:
        """The platform's credential store if it works here, else the file and why not."""
        try:
            if env is not None and _needs_session_bus() and not env.get("DBUS_SESSION_BUS_ADDRESS"):
                # The Secret Service is reached over the session bus only, which the
                # client finds through this variable: without it nothing can answer, and
                # importing keyring and its client (~13 MB, ~90 ms) would buy nothing.
                raise KeychainError("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset)")
            backend = _bounded(_platform_backend, timeout_s)
        except KeychainError as exc:
            store = cls(None, f"no usable credential store ({exc.reason}); keys are kept in config.json")
            log.warning("key_storage", storage="file", problem=store.problem)
            return store
        log.info("key_storage", storage="keychain", backend=type(backend).__module__)
        return cls(backend, timeout_s=timeout_s)

    @property
    def storage(self) -> KeyStorage:
        return "file" if self._backend is None else "keychain"

    def get(self, ref: str) -> str | None:
        """The key kept under ``ref``; None when there is no such item.

        Raises:
            KeychainError: no credential store here, or it failed.
        """
        backend = self._require()
        key: str | None = _bounded(lambda: backend.get_password(SERVICE, ref), self._timeout_s)
        return key

    def put(self, provider: str, key: str) -> str:
        """Keep ``key`` as a new item; its ``apiKeyRef``.

        Raises:
            KeychainError: no credential store here, or it failed.
        """
        backend = self._require()
        ref = f"{provider} {secrets.token_hex(8)}"
        _bounded(lambda: backend.set_password(SERVICE, ref, key), self._timeout_s)
        return ref

    def forget(self, refs: Iterable[str]) -> None:
        """Delete the items ``refs`` (best effort: a failure is logged, never raised)."""
        if self._backend is None:
            return
        backend = self._backend
        for ref in refs:
            try:
                if _bounded(functools.partial(backend.get_password, SERVICE, ref), self._timeout_s) is not None:
                    _bounded(functools.partial(backend.delete_password, SERVICE, ref), self._timeout_s)
            except KeychainError as exc:
                log.warning("keychain_item_kept", ref=ref, reason=exc.reason)

    def seal(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """``doc`` as it is written: each plain ``apiKey`` moved into the credential store.

        Returns the document to write and the new items (``apiKeyRef`` → key). Without a
        store the keys stay, and a ``apiKeyRef`` beside a plain key (one set while no
        store worked) is dropped: the plain key is the newer.

        Raises:
            KeychainError: the store failed; the items made so far are deleted again.
        """
        sealed = copy.deepcopy(doc)
        made: dict[str, str] = {}
        try:
            for name, entry in stored_entries(sealed):
                key = entry.get("apiKey")
                if not isinstance(key, str):
                    continue
                if self._backend is None:
                    entry.pop("apiKeyRef", None)
                    continue
                ref = self.put(name, key)
                made[ref] = key
                del entry["apiKey"]
                entry["apiKeyRef"] = ref
        except KeychainError:
            self.forget(made)
            raise
        return sealed, made

    def open(self, doc: Mapping[str, Any], known: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
        """The keys the entries of ``doc`` keep in the store (``apiKeyRef`` → key).

        ``known`` keys are not read again. Returns them and, when some could not be
        read, one sentence naming the providers and why.
        """
        keys: dict[str, str] = {}
        missing: list[str] = []
        reason = ""
        for name, entry in stored_entries(doc):
            ref = entry.get("apiKeyRef")
            if not isinstance(ref, str) or isinstance(entry.get("apiKey"), str):
                continue
            if ref in known:
                keys[ref] = known[ref]
                continue
            try:
                key = self.get(ref)
            except KeychainError as exc:
                key, reason = None, exc.reason
            if key is None:
                missing.append(name)
                reason = reason or "the item is no longer there"
            else:
                keys[ref] = key
        if not missing:
            return keys, None
        return keys, f"the stored key of {', '.join(missing)} cannot be read from the credential store ({reason})"

    def _require(self) -> Any:
        if self._backend is None:
            raise KeychainError(self.problem or "no credential store")
        return self._backend
