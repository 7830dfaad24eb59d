"""The config manager: ``config.json`` in the data dir, environment keys, merge patches.

Three layers make the effective :class:`ModelConfig`: built-in defaults, the stored file
(only what the host set), and the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
``OLLAMA_HOST``), which a stored value overrides.

``model:set-config`` applies a JSON merge patch (RFC 7386) to the document *on disk*,
under an inter-process lock (``config.lock``), so two sidecars sharing a data dir never
drop each other's changes; the result is validated whole, and only then written
atomically (temp file, fsync, rename, mode 0600): a bad patch changes nothing.

Whatever the file holds, the sidecar starts: a part that does not validate (an entry,
a field) is ignored and reported (``model:health``'s ``config``), the rest loads; a file
that cannot be used at all (not JSON, a directory, a FIFO) gives the defaults. Before a
file that did not load is replaced, it is copied to ``config.json.bad-<UTC time>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pydantic
import structlog

from sidecar.errors import InvalidParams, StorageError
from sidecar.providers.base import ProviderSettings
from sidecar.providers.network import choose_proxy, is_loopback_url
from sidecar.secrets import Redactor, is_preview, is_sensitive_header, preview
from sidecar.store.keys import KeychainError, KeyStore, key_refs, stored_entries
from sidecar.wire.config import (
    CROSS_FIELD_ERRORS,
    ConfigIgnored,
    ConfigStatus,
    ModelConfig,
    check_api_key,
    check_base_url,
)
from sidecar.wire.errors import validation_errors
from sidecar.wire.kinds import BUILTIN_PROVIDERS, KINDS, kind_of

__all__ = [
    "CONFIG_FILE",
    "LOCK_FILE",
    "LOCK_TIMEOUT_S",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "ConfigManager",
    "config_from_doc",
    "merge_patch",
    "normalize_ollama_host",
    "redact_url",
]

log = structlog.get_logger("sidecar.config")

CONFIG_FILE = "config.json"
#: Held (``flock``/``msvcrt.locking``) while a process reads, merges and writes the file.
LOCK_FILE = "config.lock"
#: How long ``model:set-config`` waits for another process's write before a StorageError.
LOCK_TIMEOUT_S = 3.0
#: A larger file is not read, and set-config refuses to write one.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Arrays and objects nested in the file; deeper documents are not loaded (copies and
#: merges recurse, and Python's recursion limit is 1000), nor written by set-config.
#: A patch arrives inside a request, which the protocol caps at 128 levels itself.
MAX_CONFIG_DEPTH = 128
#: provider kind → the environment variable its key may come from.
_KEY_ENV = {name: kind.key_env for name, kind in KINDS.items() if kind.key_env}
#: Test hook, read once at start: ``config-write-pause`` makes the config writer stop the
#: process (SIGSTOP) with half of the new content written, so a test can SIGKILL it there.
_FAULT = os.environ.get("MODEL_SIDECAR_FAULT", "")
#: Rounds of dropping invalid parts before the whole file is given up (each round drops
#: at least one part; a file with more broken parts than this is not worth saving).
_MAX_PRUNE_ROUNDS = 50
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: Ignored parts listed in model:health and the log (the count of the rest is given).
_MAX_REPORTED = 50


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


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """``url`` with the password of its user info shown as a preview, like a key."""
    password = _url_password(url) if "@" in url else None
    if not password:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{preview(password)}@{hostpart}"


def _defaults_doc() -> dict[str, Any]:
    return ModelConfig().model_dump(mode="json", by_alias=True, exclude_none=True)


def config_from_doc(stored: dict[str, Any]) -> ModelConfig:
    """The effective config of a stored document: defaults with ``stored`` merged over them.

    Raises:
        pydantic.ValidationError: the merged document is not a valid ``ModelConfig``.
    """
    return ModelConfig.model_validate(merge_patch(_defaults_doc(), stored))


def _pointer(loc: tuple[Any, ...] | list[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def _error_entries(exc: pydantic.ValidationError) -> list[dict[str, str]]:
    """``{path, message}`` under ``/config``; a cross-field error names its field."""
    out = []
    for raw, item in zip(exc.errors(include_url=False, include_input=False), validation_errors(exc), strict=True):
        path = item["path"] or "/" + CROSS_FIELD_ERRORS.get(raw["type"], "").strip("/")
        out.append({"path": "/config" + path.rstrip("/"), "message": item["message"]})
    return out


def _deeper_than(root: Any, limit: int) -> bool:
    """Whether ``root`` nests arrays and objects more than ``limit`` levels (level by level)."""
    level, depth = [root], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for value in level:
            if isinstance(value, dict):
                below.extend(v for v in value.values() if isinstance(v, dict | list))
            elif isinstance(value, list):
                below.extend(v for v in value if isinstance(v, dict | list))
        level = below
    return False


class _Unusable(Exception):
    """``config.json`` exists but cannot be read as a file (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _read_regular(path: Path) -> bytes | None:
    """The bytes of ``path``, ``None`` if it does not exist.

    Opened non-blocking and checked with ``fstat`` before reading, so a FIFO or a device
    planted there is refused instead of blocking the process.

    Raises:
        _Unusable: not a regular file, unreadable, or over :data:`MAX_CONFIG_BYTES`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if path.is_dir():
            raise _Unusable("is a directory, not a file") from None
        raise _Unusable(f"cannot be opened ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise _Unusable(f"is {kind}, not a file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise _Unusable(f"is larger than {MAX_CONFIG_BYTES} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise _Unusable(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)


def _drop(doc: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str, ...] | None:
    """Delete the deepest object member of ``doc`` on the path ``loc``; its path, or None."""
    node: Any = doc
    found: tuple[dict[str, Any], str, tuple[str, ...]] | None = None
    path: tuple[str, ...] = ()
    for segment in loc:
        if not (isinstance(node, dict) and isinstance(segment, str) and segment in node):
            break
        path += (segment,)
        found = (node, segment, path)
        node = node[segment]
    if found is None:
        return None
    del found[0][found[1]]
    return found[2]


def _loadable(doc: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any], list[ConfigIgnored]]:
    """The valid part of a stored document: each part that fails validation is dropped.

    Returns the config, the document that produced it, and what was dropped and why. When
    nothing more can be dropped the whole document is given up (defaults).
    """
    doc = copy.deepcopy(doc)
    ignored: list[ConfigIgnored] = []
    for _ in range(_MAX_PRUNE_ROUNDS):
        try:
            return config_from_doc(doc), doc, ignored
        except pydantic.ValidationError as exc:
            progress = False
            for error in exc.errors(include_url=False, include_input=False):
                loc = tuple(error["loc"]) or (CROSS_FIELD_ERRORS.get(error["type"], ""),)
                dropped = _drop(doc, loc)
                if dropped is not None:
                    progress = True
                    message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
                    ignored.append(ConfigIgnored(path=_pointer(dropped), message=message))
        if not progress:
            break
    ignored.append(ConfigIgnored(path="", message="the rest of the file did not validate either"))
    return ModelConfig(), {}, ignored


@dataclass
class _Disk:
    """What ``config.json`` held when it was last read."""

    raw: bytes | None = None
    #: The parsed JSON object (None: no file, or not a JSON object).
    doc: dict[str, Any] | None = None
    #: The part of ``doc`` that loaded; the config in use was made from it.
    stored: dict[str, Any] = field(default_factory=dict)
    config: ModelConfig = field(default_factory=ModelConfig)
    ignored: list[ConfigIgnored] = field(default_factory=list)
    #: Why the file could not be used at all.
    problem: str | None = None
    #: The file's identity when it was read (inode, size, mtime), to notice a new one.
    stamp: tuple[int, int, int] | None = None
    #: The keys its entries keep in the credential store (``apiKeyRef`` → key).
    keys: dict[str, str] = field(default_factory=dict)
    #: Which stored keys cannot be read, or stayed in the file, and why.
    key_problem: str | None = None

    @property
    def broken(self) -> bool:
        return self.problem is not None or bool(self.ignored)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read_disk(path: Path) -> _Disk:
    """What ``path`` holds now; a file that cannot be used at all gives the defaults."""
    stamp = _stamp(path)  # before reading: a file replaced meanwhile is read again later
    try:
        disk = _parse(path, _read_regular(path))
    except _Unusable as exc:
        disk = _Disk(problem=f"{path} {exc.reason}; defaults are used")
    disk.stamp = stamp
    return disk


def _parse(path: Path, raw: bytes | None) -> _Disk:
    if raw is None:
        return _Disk()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _Disk(raw=raw, problem=f"{path} is not valid JSON ({exc}); defaults are used")
    if not isinstance(parsed, dict):
        return _Disk(raw=raw, problem=f"{path} does not hold a JSON object; defaults are used")
    if _deeper_than(parsed, MAX_CONFIG_DEPTH):
        return _Disk(raw=raw, problem=f"{path} is nested deeper than {MAX_CONFIG_DEPTH} levels; defaults are used")
    config, stored, ignored = _loadable(parsed)
    return _Disk(raw=raw, doc=parsed, stored=stored, config=config, ignored=ignored)


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: the file system cannot lock."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:  # EACCES/EDEADLOCK: held elsewhere
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EINVAL...: some network file systems have no locks
        return None
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _exclusive(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold the inter-process lock on ``path``; StorageError past ``timeout_s``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NONBLOCK, 0o600)
    except OSError as exc:
        reason = f"cannot open the lock file ({exc.strerror})"
        raise StorageError(f"config: {reason}", path=str(path), reason=reason) from None
    try:
        deadline = time.monotonic() + timeout_s
        pause = 0.002
        while not (locked := _try_lock(fd)):
            if locked is None:
                log.warning("config_lock_unsupported", path=str(path))  # write unlocked, as before
                break
            if time.monotonic() >= deadline:
                reason = f"another process held the config lock for over {timeout_s:g} s"
                raise StorageError(f"config: {reason}", path=str(path), reason=reason)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            if locked:
                _unlock(fd)
    finally:
        os.close(fd)


def _clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with its API keys trimmed; a key that could not be sent in a header is left out."""
    out = dict(env)
    for var in _KEY_ENV.values():
        if var in out:
            try:
                out[var] = check_api_key(out[var]) or ""
            except ValueError as exc:
                log.warning("environment_key_ignored", variable=var, reason=str(exc))
                del out[var]
    return out


class ConfigManager:
    """Owns the stored config, the effective config and its redacted preview."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], redactor: Redactor,
                 keys: KeyStore | None = None) -> None:
        self.data_dir = data_dir
        #: Where stored keys live; without one, in config.json.
        self.keys = keys or KeyStore()
        #: Keys set with ``sessionApiKey``: this process only, never written anywhere.
        self._session: dict[str, str] = {}
        self.path = data_dir / CONFIG_FILE
        self.lock_path = data_dir / LOCK_FILE
        self._redactor = redactor
        redactor.add(*(env.get(var) for var in _KEY_ENV.values()))
        self._env = _clean_env(env)
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[ModelConfig], None]] = []
        self.stored: dict[str, Any] = {}
        self.config = ModelConfig()
        self._disk = _Disk()
        self._backup: Path | None = None
        redactor.add(*(self._env.get(var) for var in _KEY_ENV.values()))
        self._ollama_env = self._ollama_from_env()

    def _ollama_from_env(self) -> str | None:
        raw = self._env.get("OLLAMA_HOST")
        if not raw:
            return None
        url = normalize_ollama_host(raw)
        try:
            return check_base_url(url)
        except ValueError as exc:
            log.warning("ollama_host_ignored", reason=str(exc))
            return None

    @property
    def load_error(self) -> str | None:
        """What made the last read of the file incomplete, in one sentence (None: nothing)."""
        disk = self._disk
        if disk.problem:
            return disk.problem
        if disk.ignored:
            parts = ", ".join(item.path or "(whole file)" for item in disk.ignored[:_MAX_REPORTED])
            more = f" and {len(disk.ignored) - _MAX_REPORTED} more" if len(disk.ignored) > _MAX_REPORTED else ""
            return f"{self.path}: ignored what did not validate: {parts}{more}"
        return None

    def load(self) -> None:
        """Read ``config.json``: what validates is used, the rest is ignored and reported."""
        self._remove_leftovers()
        disk = self._with_keys(_read_disk(self.path))
        if self.keys.storage == "keychain" and _plain_keys(disk.stored):
            disk = self._migrate(disk)
        self._disk = disk
        self._report()
        self.stored, self.config = disk.stored, disk.config
        self._register_secrets()
        self._warn_insecure()

    async def refresh(self) -> None:
        """Adopt ``config.json`` if another process (or a hand edit) replaced it since."""
        async with self._lock:
            if _stamp(self.path) == self._disk.stamp:
                return
            disk = await asyncio.to_thread(lambda: self._with_keys(_read_disk(self.path)))
            self._adopt(disk, None)
            self._report()

    def _report(self) -> None:
        if self._disk.key_problem:
            log.warning("stored_keys_unreadable", problem=self._disk.key_problem)
        if self._disk.broken:
            log.error("config_invalid", error=self.load_error,
                      ignored=[item.model_dump() for item in self._disk.ignored[:_MAX_REPORTED]] or None)

    def _remove_leftovers(self) -> None:
        """Delete temp files of writes interrupted by a crash (only while no one writes)."""
        if not any(self.data_dir.glob(CONFIG_FILE + ".tmp-*")):
            return
        try:
            with _exclusive(self.lock_path, 0.5):
                for leftover in self.data_dir.glob(CONFIG_FILE + ".tmp-*"):
                    leftover.unlink(missing_ok=True)
        except (StorageError, OSError) as exc:
            log.warning("config_leftovers_kept", reason=str(exc))

    def on_change(self, listener: Callable[[ModelConfig], None]) -> None:
        self._listeners.append(listener)

    def status(self) -> ConfigStatus:
        """How the file loaded, for ``model:health``."""
        disk = self._disk
        state = "defaults" if disk.problem else "partial" if disk.ignored else "loaded"
        key_problem = "; ".join(p for p in (self.keys.problem, disk.key_problem) if p) or None
        return ConfigStatus(status=state, path=str(self.path), problem=self.load_error,
                            ignored=disk.ignored[:_MAX_REPORTED] or None,
                            backup=str(self._backup) if self._backup else None,
                            key_storage=self.keys.storage, key_storage_problem=key_problem)

    def _validate(self, stored: dict[str, Any]) -> ModelConfig:
        try:
            return config_from_doc(stored)
        except pydantic.ValidationError as exc:
            raise InvalidParams("invalid config", errors=_error_entries(exc)) from exc

    async def patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a merge patch to the config on disk; returns the new redacted preview.

        The read, merge, validation and write run under the inter-process lock in a
        thread. Once started they complete, and the process switches to the result, even
        if the request is cancelled meanwhile (the host then still gets the result), so
        the file and the config in use never disagree.
        """
        patch, session = _take_session_keys(patch)
        self._redactor.add(*session.values())
        async with self._lock:
            work = asyncio.ensure_future(asyncio.to_thread(self._update, patch, session))
            while not work.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(work)
            disk, backup = work.result()
            for name, key in session.items():
                if key:
                    self._session[name] = key
                else:
                    self._session.pop(name, None)
            self._adopt(disk, backup)
        return self.preview()

    def _update(self, patch: dict[str, Any], session: Mapping[str, str | None]) -> tuple[_Disk, Path | None]:
        """Under the lock: read the file, merge ``patch`` into it, validate, write it."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._storage_error(exc) from None
        with _exclusive(self.lock_path, LOCK_TIMEOUT_S):
            try:
                disk = _parse(self.path, _read_regular(self.path))
            except _Unusable as exc:
                reason = f"{CONFIG_FILE} {exc.reason}"
                raise StorageError(f"cannot replace {self.path}: {reason}", path=str(self.path),
                                   reason=reason) from None
            prepared = _prepare_patch(patch, disk.config)
            stored, config = self._merge(disk, prepared)
            _check_session_names(session, config)
            _check_writable(stored)
            try:
                backup = self._write_backup(disk.raw) if disk.broken and disk.raw is not None else None
            except OSError as exc:
                reason = f"cannot keep a backup of the file that did not load ({exc.strerror})"
                raise StorageError(f"config: {reason}", path=str(self.path), reason=reason) from None
            written = self._write_sealed(stored, disk.stored)
        written.config = config
        return written, backup

    def _write_sealed(self, stored: dict[str, Any], before: dict[str, Any]) -> _Disk:
        """Write ``stored`` with its plain keys moved into the credential store (if one works).

        The new items are made first and deleted again if the file cannot be written; the
        items the file named ``before`` and no longer names are deleted once it is written.
        """
        try:
            sealed, made = self.keys.seal(stored)
        except KeychainError as exc:
            reason = f"the credential store did not take the key ({exc.reason}); nothing was changed"
            raise StorageError(f"config: {reason}", path=str(self.path), reason=reason) from None
        try:
            self._write_atomic(sealed)
        except BaseException:
            self.keys.forget(made)
            raise
        self.keys.forget(key_refs(before) - key_refs(sealed))
        keys, problem = self.keys.open(sealed, {**self._disk.keys, **made})
        return _Disk(doc=sealed, stored=sealed, keys=keys, key_problem=problem, stamp=_stamp(self.path))

    def _with_keys(self, disk: _Disk) -> _Disk:
        """``disk`` with the keys its entries keep in the credential store."""
        disk.keys, disk.key_problem = self.keys.open(disk.stored, self._disk.keys)
        self._redactor.add(*disk.keys.values())
        if disk.broken and self.keys.storage == "keychain" and _plain_keys(disk.doc or {}):
            disk.key_problem = "; ".join(filter(None, (disk.key_problem, (
                "config.json did not load fully: its keys stay in the file until set-config replaces it"))))
        return disk

    def _migrate(self, read: _Disk) -> _Disk:
        """Move the plain keys of config.json into the credential store; rewrite it without them.

        When that fails, ``read`` (the file as read) says in its ``key_problem`` why the keys
        are still in the file.
        """
        try:
            with _exclusive(self.lock_path, LOCK_TIMEOUT_S):
                disk = self._with_keys(_read_disk(self.path))
                if disk.broken or not _plain_keys(disk.stored):
                    return disk
                moved = self._write_sealed(disk.stored, disk.stored)
        except StorageError as exc:
            log.warning("keys_not_moved", reason=exc.reason)
            read.key_problem = "; ".join(filter(None, (read.key_problem, (
                f"the keys in config.json could not be moved to the credential store: {exc.reason}"))))
            return read
        moved.config = disk.config
        log.info("keys_moved", providers=[name for name, entry in stored_entries(disk.stored) if "apiKey" in entry])
        return moved

    def _merge(self, disk: _Disk, patch: dict[str, Any]) -> tuple[dict[str, Any], ModelConfig]:
        """The patched document and its config; a file's broken parts stay out unless fixed."""
        if disk.doc is not None and disk.ignored:
            candidate = merge_patch(disk.doc, patch)
            with contextlib.suppress(InvalidParams):
                return candidate, self._validate(candidate)  # the patch repaired the file
        candidate = merge_patch(disk.stored, patch)
        return candidate, self._validate(candidate)

    def _adopt(self, disk: _Disk, backup: Path | None) -> None:
        self._disk = disk
        self._session = {n: k for n, k in self._session.items() if disk.config.providers.entry(n) is not None}
        if backup is not None:
            self._backup = backup
            log.warning("config_backup", path=str(backup))
        self.stored, self.config = disk.stored, disk.config
        self._register_secrets()
        self._warn_insecure()
        for listener in self._listeners:
            listener(disk.config)

    def _write_backup(self, raw: bytes) -> Path:
        """Copy the bytes of a file that did not load to ``config.json.bad-<UTC time>``."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(100):
            path = self.data_dir / f"{CONFIG_FILE}.bad-{stamp}{f'-{attempt}' if attempt else ''}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
            except FileExistsError:
                continue
            try:
                _write_all(fd, memoryview(raw))
            finally:
                os.close(fd)
            return path
        raise FileExistsError(f"{CONFIG_FILE}.bad-{stamp}")

    def _write_atomic(self, doc: dict[str, Any]) -> None:
        """Temp file, fsync, rename over ``config.json``; StorageError when that fails."""
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # mkstemp: a unique name created 0600 with O_EXCL, so two writers never share it.
            fd, tmp = tempfile.mkstemp(prefix=CONFIG_FILE + ".tmp-", dir=self.data_dir)
        except OSError as exc:
            raise self._storage_error(exc) from None
        try:
            try:
                view = memoryview(data)
                if _FAULT == "config-write-pause":
                    view = view[os.write(fd, view[: len(view) // 2]):]
                    signal.raise_signal(signal.SIGSTOP)  # this thread stops at once, the rest with it
                _write_all(fd, view)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise self._storage_error(exc) from None
            raise
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def _storage_error(self, exc: OSError) -> StorageError:
        reason = exc.strerror or type(exc).__name__
        return StorageError(f"cannot write {self.path}: {reason}", path=str(self.path), reason=reason)

    def _register_secrets(self) -> None:
        for item in self._entries():
            settings = self._resolve(*item)
            self._redactor.add(settings.api_key)
            self._redactor.add(*(v for k, v in settings.headers.items() if is_sensitive_header(k)))
            for url in (settings.base_url, settings.proxy, getattr(item[2], "proxy", None), self.config.proxy):
                password = _url_password(url) if url else None
                if password:
                    # The whole URL too: a short password alone is below the scrubber's minimum.
                    self._redactor.add(password, url)

    def _warn_insecure(self) -> None:
        """Every enabled entry with ``insecureSkipVerify``, on every load: never silent."""
        for name, _kind, entry in self._entries():
            if entry.enabled and entry.insecure_skip_verify:
                log.warning("tls_verification_disabled", provider=name,
                            detail="insecureSkipVerify: this provider's TLS certificates are not checked")

    def _stored_entry(self, name: str) -> dict[str, Any]:
        """The stored object of one provider entry (``{}``: none; a ``null`` member is none too)."""
        node: Any = self.stored.get("providers")
        for key in (name,) if name in BUILTIN_PROVIDERS else ("custom", name):
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def _entries(self) -> list[tuple[str, str, Any]]:
        return _entries(self.config)

    def _resolve(self, name: str, kind: str, entry: Any) -> ProviderSettings:
        base_url = entry.base_url
        # A session key, then a stored one (in the file or the credential store), then the environment.
        api_key = self._session.get(name) or entry.api_key or self._disk.keys.get(entry.api_key_ref or "")
        if kind in _KEY_ENV and not api_key:
            api_key = self._env.get(_KEY_ENV[kind]) or None
        if kind == "ollama" and "baseURL" not in self._stored_entry(name) and self._ollama_env:
            base_url = self._ollama_env
        # Loopback hosts are always local; a custom entry may declare itself local.
        local = is_loopback_url(base_url) or bool(getattr(entry, "local", False))
        return ProviderSettings(
            name=name,
            kind=kind,
            base_url=base_url,
            default_model=entry.default_model,
            api_key=api_key,
            headers=dict(entry.headers or {}),
            timeout_ms=entry.timeout_ms,
            local=local,
            models=tuple(entry.models or ()),
            first_token_timeout_ms=entry.first_token_timeout_ms,
            preload=bool(entry.preload),
            keep_alive=entry.keep_alive,
            proxy=choose_proxy(base_url, entry=entry.proxy, top=self.config.proxy, env=self._env, local=local),
            ca_file=entry.ca_file,
            insecure_skip_verify=bool(entry.insecure_skip_verify),
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
        if doc.get("proxy"):
            doc["proxy"] = redact_url(doc["proxy"])
        doc["keyStorage"] = self.keys.storage
        return doc


def _check_writable(doc: dict[str, Any]) -> None:
    """Refuse a document the next start would not load (too large or too deep)."""
    if _deeper_than(doc, MAX_CONFIG_DEPTH):
        problem = f"the config would be nested deeper than {MAX_CONFIG_DEPTH} levels"
    elif len(orjson.dumps(doc, option=orjson.OPT_INDENT_2)) >= MAX_CONFIG_BYTES:
        problem = f"the stored config would be larger than {MAX_CONFIG_BYTES} bytes"
    else:
        return
    raise InvalidParams("invalid config", errors=[{"path": "/config", "message": problem}])


def _write_all(fd: int, view: memoryview) -> None:
    """Every byte of ``view`` to ``fd`` (``os.write`` may write less), then fsync."""
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _entries(config: ModelConfig) -> list[tuple[str, str, Any]]:
    """(name, kind, entry) of every provider entry, built-in ones first."""
    return [(name, kind_of(name).name, entry) for name, entry in config.providers.entries().items()]


def _preview_entry(entry: dict[str, Any], settings: ProviderSettings | None) -> None:
    key = settings.api_key if settings else entry.get("apiKey")
    if key:
        entry["apiKey"] = preview(key)
    else:
        entry.pop("apiKey", None)
    entry["baseURL"] = redact_url(settings.base_url if settings is not None else entry["baseURL"])
    if entry.get("headers"):
        entry["headers"] = {k: preview(v) if is_sensitive_header(k) else v for k, v in entry["headers"].items()}
    if entry.get("proxy"):
        entry["proxy"] = redact_url(entry["proxy"])


def _patch_entries(patch: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, entry)`` of every provider entry object in a patch (same shape as the file)."""
    return stored_entries(patch)


def _prepare_patch(patch: dict[str, Any], current: ModelConfig) -> dict[str, Any]:
    """The patch as it is applied: previews sent back dropped, keys and header values trimmed.

    An ``apiKey``, a sensitive header value or a ``baseURL`` equal to the preview of the
    current one keeps what is stored. A ``baseURL`` whose password is some other preview
    is refused: the real password is unknown.
    """
    patch = copy.deepcopy(patch)
    patch.pop("keyStorage", None)  # read-only: a get-config result sent back carries it
    current_urls = {name: entry.base_url for name, _kind, entry in _entries(current)}
    _keep_redacted(patch, "proxy", current.proxy, "/config/proxy")
    for name, entry in _patch_entries(patch):
        found = current.providers.entry(name)
        _keep_redacted(entry, "proxy", found.proxy if found else None, _entry_pointer(name, "proxy"))
        if "apiKeyRef" in entry:
            raise InvalidParams("invalid config", errors=[{"path": _entry_pointer(name, "apiKeyRef"), "message": (
                "apiKeyRef is written by the sidecar only; send apiKey")}])
        key = entry.get("apiKey")
        if key is None and "apiKey" in entry:
            entry["apiKeyRef"] = None  # removing the key removes its credential-store item too
        if isinstance(key, str):
            if is_preview(key):
                del entry["apiKey"]
            else:
                entry["apiKey"] = key.strip()
        headers = entry.get("headers")
        if isinstance(headers, dict):
            for header, value in list(headers.items()):
                if isinstance(value, str):
                    if is_preview(value):
                        del headers[header]
                    else:
                        headers[header] = value.strip()
        url = entry.get("baseURL")
        if isinstance(url, str) and is_preview(_url_password(url) or ""):
            if name in current_urls and url == redact_url(current_urls[name]):
                del entry["baseURL"]
            else:
                path = _entry_pointer(name, "baseURL")
                raise InvalidParams("invalid config", errors=[{"path": path, "message": (
                    "the password in baseURL is a redacted preview of another URL; send the whole URL")}])
    return patch


def _keep_redacted(node: dict[str, Any], field: str, current: str | None, pointer: str) -> None:
    """A URL sent back as get-config showed it (password previewed) keeps the stored one;
    the previewed password of another URL is refused (the real one is unknown)."""
    url = node.get(field)
    if not (isinstance(url, str) and is_preview(_url_password(url) or "")):
        return
    if current is not None and url == redact_url(current):
        del node[field]
        return
    raise InvalidParams("invalid config", errors=[{"path": pointer, "message": (
        f"the password in {field} is a redacted preview of another URL; send the whole URL")}])


def _entry_pointer(name: str, member: str) -> str:
    """``/config/providers/<name>/<member>`` (custom entries under ``custom``)."""
    where = ("providers", name) if name in BUILTIN_PROVIDERS else ("providers", "custom", name)
    return "/config" + _pointer((*where, member))


def _plain_keys(doc: dict[str, Any]) -> bool:
    """Whether an entry of a stored document holds its key in plain text."""
    return any(isinstance(entry.get("apiKey"), str) for _name, entry in stored_entries(doc))


def _take_session_keys(patch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The patch without its ``sessionApiKey`` members, and those keys by provider (None: clear).

    A session key is used by this process only and never written; a preview sent back
    keeps the one set.
    """
    patch = copy.deepcopy(patch)
    keys: dict[str, str | None] = {}
    for name, entry in _patch_entries(patch):
        if "sessionApiKey" not in entry:
            continue
        value = entry.pop("sessionApiKey")
        try:
            if value is not None and not isinstance(value, str):
                raise ValueError("sessionApiKey must be a string or null")
            if value is None or not is_preview(value):
                keys[name] = check_api_key(value, "sessionApiKey") or None
        except ValueError as exc:
            raise InvalidParams("invalid config", errors=[{"path": _entry_pointer(name, "sessionApiKey"),
                                                           "message": str(exc)}]) from None
    providers = patch.get("providers")
    for parent in (providers, providers.get("custom") if isinstance(providers, dict) else None):
        if isinstance(parent, dict):  # an entry that held only a session key merges as nothing
            for name in [n for n, e in parent.items() if e == {} and n in keys]:
                del parent[name]
    return patch, keys


def _check_session_names(session: Mapping[str, str | None], config: ModelConfig) -> None:
    unknown = [name for name, key in session.items() if key and config.providers.entry(name) is None]
    if unknown:
        raise InvalidParams("invalid config", errors=[{
            "path": _entry_pointer(name, "sessionApiKey"), "message": f"there is no provider entry {name!r}"}
            for name in unknown])
