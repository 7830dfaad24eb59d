"""Who owns a reservation, and the journal of usage the ledger could not take yet.

Both live in ``<data dir>/usage-journal/``, one pair of files per sidecar process, named
by the process's *token* (``<pid>-<random hex>``, new at every start):

* ``<token>.lock``: the process holds an exclusive OS lock on it for as long as it runs
  (``flock`` on POSIX, ``msvcrt.locking`` on Windows). The operating system drops the
  lock when the process ends, however it ends (``kill -9`` included), so "can another
  process take this lock?" answers "is the owner dead?" exactly: a reused pid has another
  token, and nothing depends on clocks or process tables.
* ``<token>.jsonl``: append-only JSON lines, one per usage record (or release) the ledger
  could not commit (locked past its wait, read-only, disk full). Every append is
  fsynced before the answer it belongs to is sent. Each line carries a unique ``key``,
  stored with the row it becomes, so replaying a journal twice adds nothing. A torn
  line (a crash or a failed write) is skipped: its answer was never sent. The next
  append starts on a new line, so it never glues onto a torn one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import orjson

__all__ = ["JOURNAL_DIR", "Owner", "forget", "known_tokens", "owner_alive", "read_journal"]

JOURNAL_DIR = "usage-journal"
_TOKEN = re.compile(r"^[0-9]+-[0-9a-f]{16}$")


def _lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False if another holds it."""
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class Owner:
    """This process's token, its lock and its journal."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self.token = f"{self.pid}-{secrets.token_hex(8)}"
        self._fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.token}.lock"

    @property
    def journal_path(self) -> Path:
        return self.directory / f"{self.token}.jsonl"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Create this process's lock file already locked (``OSError`` if the disk refuses).

        The file is made and locked under a temporary name, then renamed into place: a
        sweep in another process never sees the lock file unlocked, so it never takes
        this live process for dead."""
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = self.directory / f"{self.token}.lock.tmp"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0")  # msvcrt locks a byte range: give it one byte
            if not _lock(fd):
                raise OSError(f"lock {temp} is held by another process")
            os.replace(temp, self.lock_path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        self._fd = fd
        _fsync_dir(self.directory)

    def release(self, *, keep_journal: bool) -> None:
        """Drop the lock and remove the files (the journal only if ``keep_journal`` is off)."""
        if self._fd is None:
            return
        os.close(self._fd)  # the lock goes with the descriptor
        self._fd = None
        with contextlib.suppress(OSError):
            if not keep_journal:
                self.journal_path.unlink(missing_ok=True)
            self.lock_path.unlink(missing_ok=True)

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Append ``lines`` to the journal and fsync it; ``OSError`` when the disk refuses.

        A failed write is cut back to the size before it; a torn line left anyway (a
        crash, or a failed cut) is ended with a newline first, so the next line starts
        whole and only the torn one is skipped on replay."""
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        new = not self.journal_path.exists()
        fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and _byte_at(fd, size - 1) != b"\n":
                data = b"\n" + data
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.directory)

    def clear(self) -> None:
        """Empty the journal once everything in it is in the ledger (best effort: a replay
        of lines already applied adds nothing)."""
        with contextlib.suppress(OSError):
            self.journal_path.unlink(missing_ok=True)


def _byte_at(fd: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)  # O_APPEND writes go to the end all the same
    return os.read(fd, 1)


def _write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])


def _fsync_dir(directory: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def owner_alive(directory: Path, token: str | None) -> bool:
    """Whether the process that owns ``token`` still runs. No lock file: dead. A lock
    file that cannot be opened: alive (never charge a process that may be running)."""
    if token is None or not _TOKEN.match(token):
        return False  # written by a sidecar that recorded no owner, long gone
    try:
        fd = os.open(directory / f"{token}.lock", os.O_RDWR if sys.platform == "win32" else os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        return not _lock(fd)
    finally:
        os.close(fd)  # also drops the lock just taken


def known_tokens(directory: Path) -> set[str]:
    """Tokens that have a lock file or a journal in ``directory``."""
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    return {stem for name in names if _TOKEN.match(stem := name.rsplit(".", 1)[0])}


def read_journal(directory: Path, token: str) -> list[dict[str, Any]]:
    """The whole lines of ``token``'s journal (a torn or unreadable line is skipped)."""
    try:
        data = (directory / f"{token}.jsonl").read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
        with contextlib.suppress(orjson.JSONDecodeError):
            item = orjson.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


def forget(directory: Path, token: str) -> None:
    """Remove a dead owner's files once its journal and reservations are settled. The
    lock file is removed only while this process holds its lock: one whose owner took
    it again (or that cannot be locked) stays."""
    lock_path = directory / f"{token}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR if sys.platform == "win32" else os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    except OSError:
        return
    try:
        if fd is not None and not _lock(fd):
            return  # alive after all
        with contextlib.suppress(OSError):
            (directory / f"{token}.jsonl").unlink(missing_ok=True)
        if fd is not None:
            with contextlib.suppress(OSError):
                lock_path.unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)
