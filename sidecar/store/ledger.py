"""The usage ledger: settled calls, open reservations and sent alerts in ``usage.sqlite3``.

This is the only module that touches the database. Rules it keeps:

* One connection, owned by one dedicated worker thread (a single-worker
  ``ThreadPoolExecutor``, and ``check_same_thread`` makes any other use fail loudly).
  Async methods hand their work to it, so the event loop never waits on an fsync.
* ``journal_mode=WAL``: every write is its own ``BEGIN IMMEDIATE`` transaction, committed
  before the method returns. A ``kill -9`` at any moment therefore loses nothing that was
  reported as written (a WAL commit is in the OS's hands once written). Anything that
  moves money (a reservation, a settle with a cost or of a reservation, an alert) also
  commits with ``synchronous=FULL``: the WAL is fsynced, so it survives a power cut too.
  A settle of a free call (a local model: cost 0, nothing reserved) commits with
  ``synchronous=NORMAL``, without the fsync (0.2-4 ms on these disks, the largest part of
  a local call's overhead): a power cut may lose such a row, never a cent.
* **Group commit.** Reserves and settles that arrive while the worker thread is busy wait
  in a queue and are written together, in arrival order, in one transaction: one commit,
  one fsync for all of them. Each reservation is still checked against the caps with the
  ones before it counted; each caller is answered only after that commit returned, so the
  promises above hold for every one of them; under load the fsyncs per call fall instead
  of queueing up. A settle may ask for the spend of some periods (the budget's alert
  check): it is read after the commit on the same visit to the worker thread, once per
  batch, so the check costs no visit of its own.
* Money is stored as **integer micro-dollars** (``cost_micros``, 1 = 0.000001 USD), so
  sums are exact; times as **epoch milliseconds, UTC** (``ts_ms``). A record is billed at
  the time it is settled.
* Reserve is a compare-and-insert run in one transaction: the spend of each capped period,
  the open reservations and the new amount are checked and the reservation row inserted
  with nothing in between, not even another connection (the write lock is held).
* **Writes that cannot be made.** Another process may hold the write lock, the disk may be
  full or read-only. A reservation waits up to :data:`RESERVE_WAIT_S` for the lock, then
  fails with :class:`LedgerWriteError` (the call must not go upstream). A settle or a
  release comes after the call went upstream and must never be lost: it waits up to
  :data:`SETTLE_WAIT_S`, then is *deferred*: appended (fsynced) to this process's journal
  (:mod:`sidecar.store.journal`) and kept in memory, and written into the ledger by the
  next write that succeeds (:meth:`Ledger.flush` retries) or, if this process dies first,
  by the next sidecar that opens the ledger. Deferred records count in :meth:`spend`,
  :meth:`breakdown` and :meth:`reserved` at once. Should the journal fail too (a full
  disk), the record stays in memory, and its reservation in the ledger stands for it.
* **Reservations belong to their process** (``owner``: the token of
  :class:`~sidecar.store.journal.Owner`, whose lock file shows whether it still runs).
  Opening the ledger (and, at most every :data:`SWEEP_INTERVAL_S`, a reservation)
  touches only the reservations of owners that are gone: their
  journals are replayed first, then every reservation still open is *charged* at its
  reserved amount (a usage row with outcome ``abandoned``: the call may have been made
  and billed, nobody knows its real cost), counted in :class:`OpenReport`. A settle whose
  reservation was charged that way replaces the ``abandoned`` row; a settle whose
  reservation is gone for any other reason is written all the same (never an error).
* A file SQLite finds corrupt is moved aside (with its ``-wal``/``-shm``) as
  ``usage.sqlite3.corrupt-<ts>`` and a fresh ledger started (the day's spend starts from
  zero: :attr:`OpenReport.moved_aside` says so). A file that exists but cannot be written
  is opened read-only (status ``readonly``: spend is shown, reservations are refused); a
  location that cannot be opened at all leaves the sidecar on an in-memory ledger
  (status ``memory``: free calls only). Neither raises: the report says what happened.

Per-period totals (per provider and model) are cached in the worker thread, kept exact
by every settle and dropped whenever another connection commits (``PRAGMA
data_version``): a check or a breakdown costs the same however long the month.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import structlog

from sidecar.store.journal import JOURNAL_DIR, Owner, forget, known_tokens, owner_alive, read_journal

__all__ = [
    "ABANDONED",
    "DB_NAME",
    "OUTCOMES",
    "RESERVE_WAIT_S",
    "SCHEMA_VERSION",
    "SETTLE_WAIT_S",
    "Cap",
    "Ledger",
    "LedgerStatus",
    "LedgerWriteError",
    "OpenReport",
    "ReserveResult",
    "Settled",
    "SpendRow",
    "UsageRecord",
]

log = structlog.get_logger("sidecar.budget")

DB_NAME = "usage.sqlite3"
SCHEMA_VERSION = 2
OUTCOMES = ("ok", "cancelled", "failed", "partial")
#: The outcome of a reservation charged at its amount because its process died.
ABANDONED = "abandoned"
#: How long a reservation waits for another process's write lock before it is refused.
RESERVE_WAIT_S = 5.0
#: How long a settle waits for the lock before it goes to the journal instead.
SETTLE_WAIT_S = 2.0
#: The wait of a retry of deferred records (the caller retries again later).
RETRY_WAIT_S = 0.05
#: The wait of any write while the last one found the lock held past its bound.
LOCKED_WAIT_S = 0.5
#: How often a running sidecar looks for reservations of processes gone since it opened
#: (checked at a reservation; cheap: one query and a lock probe per other owner).
SWEEP_INTERVAL_S = 60.0
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
#: SQLite primary result codes of a write the storage refused, by kind.
_WRITE_FAILURES = {5: "locked", 6: "locked", 8: "readonly", 10: "io", 13: "full", 14: "io", 15: "locked"}
_OS_FAILURES = {errno.EROFS: "readonly", errno.EACCES: "readonly", errno.EPERM: "readonly",
                errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EFBIG: "full"}
#: Deferred free-call records kept in memory at most (paid ones are never dropped).
_MAX_DEFERRED_FREE = 10_000
_MAX_CACHED_RANGES = 16
T = TypeVar("T")
Status = Literal["persistent", "readonly", "memory"]
#: (provider, model) -> [cost_micros, requests, prompt_tokens, completion_tokens]
Totals = dict[tuple[str, str], list[int]]

#: Schema migrations: version -> statements taking the previous version to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE usage (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL,"
        " request_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,"
        " prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),"
        " completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),"
        " cost_micros INTEGER NOT NULL CHECK (cost_micros >= 0),"
        " outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'cancelled', 'failed', 'partial')),"
        " estimated INTEGER NOT NULL CHECK (estimated IN (0, 1)))",
        "CREATE INDEX usage_ts ON usage (ts_ms)",
        "CREATE TABLE reservations (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL,"
        " request_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,"
        " amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),"
        " over INTEGER NOT NULL CHECK (over IN (0, 1)))",
        "CREATE TABLE alerts (period_key TEXT NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('threshold', 'limit')), sent_at_ms INTEGER NOT NULL,"
        " PRIMARY KEY (period_key, kind))",
    ),
    # Reservations get their owner; usage rows the reservation they settle, the journal
    # key they came from, and the 'abandoned' outcome (a CHECK change: the table is rebuilt).
    2: (
        "ALTER TABLE reservations ADD COLUMN owner TEXT",
        "ALTER TABLE reservations ADD COLUMN owner_pid INTEGER",
        "CREATE TABLE usage_v2 (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL,"
        " request_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,"
        " prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),"
        " completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),"
        " cost_micros INTEGER NOT NULL CHECK (cost_micros >= 0),"
        " outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'cancelled', 'failed', 'partial', 'abandoned')),"
        " estimated INTEGER NOT NULL CHECK (estimated IN (0, 1)),"
        " reservation_id INTEGER, journal_id TEXT)",
        "INSERT INTO usage_v2 (id, ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
        " cost_micros, outcome, estimated) SELECT id, ts_ms, request_id, provider, model, prompt_tokens,"
        " completion_tokens, cost_micros, outcome, estimated FROM usage",
        "DROP TABLE usage",
        "ALTER TABLE usage_v2 RENAME TO usage",
        "CREATE INDEX usage_ts ON usage (ts_ms)",
        # Partial: a free call's row (neither) costs no index entry.
        "CREATE INDEX usage_reservation ON usage (reservation_id) WHERE reservation_id IS NOT NULL",
        "CREATE UNIQUE INDEX usage_journal ON usage (journal_id) WHERE journal_id IS NOT NULL",
    ),
}


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One settled call. ``cost_micros`` is integer micro-dollars."""

    ts_ms: int
    request_id: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    outcome: str = "ok"
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Cap:
    """A limit on the spend settled in ``[start_ms, end_ms)`` plus every open reservation."""

    start_ms: int
    end_ms: int
    limit_micros: int


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """What :meth:`Ledger.reserve` saw and did; ``spent_micros`` follows the caps' order."""

    reservation_id: int | None  # None: refused (blocking and over a cap)
    spent_micros: tuple[int, ...]
    reserved_micros: int  # open reservations before this one
    over: bool  # the amount does not fit under every cap


class Settled(NamedTuple):
    """What :meth:`Ledger.settle_soon` did: the usage row's id (None: deferred, or the
    reservation was settled already) and the spends it was asked to read (None when
    none were asked for, or reading them failed)."""

    row_id: int | None
    spends: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class SpendRow:
    provider: str
    model: str
    cost_micros: int
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class OpenReport:
    """How opening went. ``status``: ``persistent`` (the file, writable), ``readonly`` (the
    file, read only) or ``memory`` (an in-memory fallback). ``stale_*``: reservations of
    dead processes charged at their amount; ``replayed``: journal records settled."""

    path: Path
    persistent: bool
    stale_reservations: int = 0
    stale_reserved_micros: int = 0
    moved_aside: Path | None = None
    problem: str | None = None
    status: Status = "memory"
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """The ledger as ``model:health`` shows it."""

    status: Status
    path: Path
    problem: str | None
    moved_aside: Path | None
    pending: int  # usage records not in the ledger yet (journalled or in memory)


class LedgerWriteError(Exception):
    """A write the storage refused: ``kind`` is locked | readonly | full | io | unavailable."""

    def __init__(self, path: Path, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.path = path
        self.kind = kind
        self.reason = f"{kind}: {detail}"


@dataclass(frozen=True, slots=True)
class _Deferred:
    """A settle (``record``) or a release (``record`` None) the ledger could not take yet."""

    key: str
    reservation_id: int | None
    record: UsageRecord | None

    def line(self) -> dict[str, Any]:
        return {"key": self.key, "reservation": self.reservation_id,
                "record": None if self.record is None else asdict(self.record)}

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> _Deferred | None:
        try:
            raw = line["record"]
            record = None if raw is None else UsageRecord(**raw)
            reservation = line["reservation"]
            return cls(str(line["key"]), None if reservation is None else int(reservation), record)
        except (KeyError, TypeError, ValueError):
            return None


def _failure_kind(exc: BaseException) -> str | None:
    """The kind of a storage refusal, or None for anything else (a bug)."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return _WRITE_FAILURES.get(int(code) & 0xFF, "io") if code is not None else "io"
    if isinstance(exc, OSError):
        return _OS_FAILURES.get(exc.errno or 0, "io")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, _SQLITE_BUGS):
        return "io"  # the file went bad while running ("database disk image is malformed")
    return None


#: Errors in how the ledger uses SQLite (a broken constraint, a misused API): bugs.
_SQLITE_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError,
                sqlite3.NotSupportedError)


class Ledger:
    """SQLite usage ledger driven from asyncio through one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-ledger")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._ranges: dict[tuple[int, int], Totals] = {}
        self._data_version = -1
        self._durable = True  # the connection's synchronous mode: FULL (True) or NORMAL
        self._wait_ms = -1  # the connection's busy_timeout
        self._owner = Owner(path.parent / JOURNAL_DIR)
        #: Settles and releases not in the ledger yet, oldest first (worker thread only).
        self._deferred: list[_Deferred] = []
        self._journalled = 0  # how many of them (from the front) are in the journal
        self._failure: str | None = None  # the last write refused, until one succeeds
        self._failure_kind: str | None = None
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S  # the open sweeps first
        self.report = OpenReport(path=path, persistent=False)
        #: Reserves and settles waiting for the worker thread, in arrival order: written
        #: together, in one transaction with one commit (group commit).
        self._queued: list[_Queued] = []
        self._queued_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, *, name: str = DB_NAME) -> Ledger:
        """Open (or create) ``data_dir/name``. Blocks for the open itself; never raises
        for a bad file (see the module docstring); :attr:`report` says what happened."""
        ledger = cls(Path(data_dir) / name)
        ledger.report = ledger._executor.submit(ledger._open_in_thread).result()
        return ledger

    def close(self) -> None:
        """Finish queued work, try once more to write deferred records, close the
        connection and stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._executor.submit(self._close_in_thread).result()
        finally:
            self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- async API ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Usage records (and releases) not in the ledger yet."""
        return len(self._deferred)

    def status(self) -> LedgerStatus:
        """A snapshot for ``model:health`` (safe from any thread: plain attribute reads)."""
        return LedgerStatus(status=self.report.status, path=self.path,
                            problem=self._failure or self.report.problem,
                            moved_aside=self.report.moved_aside, pending=len(self._deferred))

    async def reserve(self, *, ts_ms: int, request_id: str, provider: str, model: str,
                      amount_micros: int, caps: Sequence[Cap], block: bool) -> ReserveResult:
        """Insert a reservation unless ``block`` and spent + reserved + amount > a cap.

        A zero amount always fits (it cannot add to spending). ``LedgerWriteError`` when
        the reservation cannot be written (then nothing may go upstream)."""
        return await self.reserve_soon(ts_ms=ts_ms, request_id=request_id, provider=provider, model=model,
                                       amount_micros=amount_micros, caps=caps, block=block)

    def reserve_soon(self, *, ts_ms: int, request_id: str, provider: str, model: str,
                     amount_micros: int, caps: Sequence[Cap], block: bool) -> asyncio.Future[ReserveResult]:
        """:meth:`reserve` as a future, queued at once: it completes whether or not it is
        awaited (no task of its own)."""
        if amount_micros < 0:
            raise ValueError("amount_micros must be >= 0")
        return self._enqueue(_Queued(_Reserve(ts_ms, request_id, provider, model, amount_micros, tuple(caps), block)))

    async def settle(self, reservation_id: int | None, record: UsageRecord) -> int | None:
        """Delete the reservation and insert the usage row in one transaction; returns the
        row id, or None when the record was deferred (journalled, written later) or the
        reservation was already settled. Never fails because of the storage."""
        return (await self.settle_soon(reservation_id, record)).row_id

    def settle_soon(self, reservation_id: int | None, record: UsageRecord, *,
                    read_spends: Sequence[tuple[int, int]] = ()) -> asyncio.Future[Settled]:
        """:meth:`settle` as a future, queued at once (it completes whether or not it is
        awaited). ``read_spends``: periods ``(start_ms, end_ms)`` whose :meth:`spend` is
        read right after the commit, on the same visit to the worker thread (the budget's
        alert check), in :attr:`Settled.spends`."""
        if record.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        if min(record.cost_micros, record.prompt_tokens, record.completion_tokens) < 0:
            raise ValueError("cost and token counts must be >= 0")
        # Its key is drawn only if it has to be deferred (a direct write stores none).
        return self._enqueue(_Queued(_Deferred("", reservation_id, record), tuple(read_spends)))

    def _enqueue(self, item: _Queued) -> asyncio.Future[Any]:
        """Queue a reserve or a settle; the worker thread writes every queued one together."""
        if self._closed:
            raise RuntimeError("the ledger is closed")
        loop = asyncio.get_running_loop()
        item.done = loop.create_future()
        with self._queued_lock:
            self._queued.append(item)
            first = len(self._queued) == 1
        if first:  # the job takes everything queued by the time the worker thread runs it
            # submit, not run_in_executor: the callers hear from _resolve; an asyncio future
            # for the job would cost a second wake-up of the loop per job.
            self._executor.submit(self._write_queued, loop)
        return item.done

    async def release(self, reservation_id: int) -> bool:
        """Delete an open reservation; False when it was not open. Deferred like a settle
        when the storage refuses (True then)."""
        return await self._run(self._release, reservation_id)

    async def flush(self) -> int:
        """Try to write the deferred records now (a short wait); returns how many remain."""
        return await self._run(self._flush)

    async def spend(self, start_ms: int, end_ms: int) -> int:
        """Micro-dollars settled in ``[start_ms, end_ms)``, deferred records included."""
        return await self._run(self._spend_now, start_ms, end_ms)

    async def spends(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """:meth:`spend` of each ``(start_ms, end_ms)``, read together (one hop to the
        ledger's thread for all of them)."""
        return await self._run(self._spends_now, tuple(ranges))

    async def breakdown(self, start_ms: int, end_ms: int) -> list[SpendRow]:
        """Spend, requests and tokens per (provider, model) in ``[start_ms, end_ms)``.
        ``requests`` leaves out ``abandoned`` charges (calls whose fate is unknown)."""
        return await self._run(self._breakdown, start_ms, end_ms)

    async def reserved(self) -> tuple[int, int]:
        """(number, micro-dollars) of open reservations (deferred settles excluded)."""
        return await self._run(self._reserved_now)

    async def record_count(self) -> int:
        return int((await self._run(self._query, "SELECT COUNT(*) FROM usage", ()))[0][0])

    async def record_ids(self) -> set[int]:
        return {int(row[0]) for row in await self._run(self._query, "SELECT id FROM usage", ())}

    async def mark_alert(self, period_key: str, kind: str, ts_ms: int) -> bool:
        """Record an alert; True only the first time for this (period_key, kind)."""
        return await self._run(self._write, "INSERT OR IGNORE INTO alerts (period_key, kind, sent_at_ms)"
                               " VALUES (?, ?, ?)", (period_key, kind, ts_ms)) == 1

    async def alerts(self, period_keys: Iterable[str]) -> set[tuple[str, str]]:
        """The (period_key, kind) pairs already recorded among ``period_keys``."""
        keys = tuple(period_keys)
        sql = f"SELECT period_key, kind FROM alerts WHERE period_key IN ({','.join('?' * len(keys))})"
        return {(str(k), str(kind)) for k, kind in await self._run(self._query, sql, keys)} if keys else set()

    async def integrity_check(self) -> str:
        return "; ".join(str(row[0]) for row in await self._run(self._query, "PRAGMA integrity_check", ()))

    # -- opening (worker thread) -------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the ledger is not open")
        return self._conn

    def _open_in_thread(self) -> OpenReport:
        moved: Path | None = None
        problem: str | None = None
        status: Status = "persistent"
        try:
            moved = self._open_file()
            if moved is not None:
                problem = f"corrupt ledger moved aside to {moved}: spending starts again from zero"
        except (sqlite3.Error, OSError) as exc:
            kind = _failure_kind(exc) or "unusable"
            if kind == "io" and self.path.parent.is_dir() and not os.access(self.path.parent, os.W_OK):
                kind = "readonly"  # SQLite says only "unable to open database file"
            problem = f"{kind}: {exc}"
            status = "readonly" if self._open_read_only() else "memory"
            if status == "memory":
                self._conn = self._connect(":memory:")
            log.error("ledger_unavailable", path=str(self.path), status=status, error=str(exc))
        charged = (0, 0, 0)
        if status == "persistent":
            try:
                self._owner.acquire()
            except OSError as exc:
                problem = f"{_failure_kind(exc)}: cannot lock {self._owner.lock_path}: {exc}"
                log.error("ledger_owner_lock_failed", error=str(exc))
            charged = self._settle_dead_owners()
        return OpenReport(path=self.path, persistent=status == "persistent", stale_reservations=charged[0],
                          stale_reserved_micros=charged[1], moved_aside=moved, problem=problem,
                          status=status, replayed=charged[2])

    def _open_file(self) -> Path | None:
        """Open the file read-write; a corrupt one is moved aside first (returned)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._connect(str(self.path))
            return None
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            moved = self._move_aside()
            log.error("ledger_corrupt_moved_aside", path=str(self.path), moved_to=str(moved), error=str(exc))
            self._conn = self._connect(str(self.path))
            return moved

    def _open_read_only(self) -> bool:
        """Open an existing file that cannot be written, to show its spend."""
        if not self.path.is_file():
            return False
        for query in ("mode=ro", "immutable=1"):  # immutable: no -shm can be made beside it
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(f"{self.path.as_uri()}?{query}", uri=True, isolation_level=None,
                                       timeout=RESERVE_WAIT_S)
                conn.execute("SELECT COUNT(*) FROM usage").fetchone()
                conn.execute("SELECT COUNT(*) FROM reservations").fetchone()
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                continue
            self._conn = conn
            return True
        return False

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, isolation_level=None, timeout=RESERVE_WAIT_S)
        try:
            mode = _wal(conn)
            if target != ":memory:" and str(mode).lower() != "wal":
                log.warning("ledger_no_wal", journal_mode=mode)
            conn.execute("PRAGMA synchronous=FULL")
            self._durable = True
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            self._conn = conn
            self._migrate(conn)
        except BaseException:
            conn.close()
            self._conn = None
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise sqlite3.OperationalError(f"ledger schema {version} is newer than this sidecar's {SCHEMA_VERSION}")

        def apply(db: sqlite3.Connection) -> None:
            # Read again inside the transaction: a second sidecar starting at the same
            # moment may have migrated the file since the read above.
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            for target in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))

        if version < SCHEMA_VERSION:
            self._tx(apply)

    def _move_aside(self) -> Path:
        target = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        for suffix in ("-wal", "-shm", ""):  # the WAL of a corrupt file must not meet the new one
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{target}{suffix}"))
        return target

    def _settle_dead_owners(self) -> tuple[int, int, int]:
        """Replay the journals of processes that are gone, then charge their reservations
        still open at the reserved amount. Returns (charged, micro-dollars, replayed)."""
        directory = self._owner.directory
        owners = {row[0] for row in self._db().execute("SELECT DISTINCT owner FROM reservations")}
        dead = {t for t in owners | known_tokens(directory)
                if t != self._owner.token and not owner_alive(directory, t)}
        if not dead:
            return 0, 0, 0

        def body(db: sqlite3.Connection) -> tuple[int, int, int]:
            replayed = 0
            for token in (t for t in dead if t is not None):
                for entry in filter(None, map(_Deferred.from_line, read_journal(directory, token))):
                    self._apply(db, entry)
                    replayed += 1
            named = [t for t in dead if t is not None]
            rows = db.execute(
                "SELECT id, ts_ms, request_id, provider, model, amount_micros FROM reservations WHERE owner IS NULL"
                f" OR owner IN ({','.join('?' * len(named))})", named).fetchall()
            for rid, ts_ms, request_id, provider, model, amount in rows:
                db.execute("INSERT INTO usage (ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
                           " cost_micros, outcome, estimated, reservation_id) VALUES (?, ?, ?, ?, 0, 0, ?, ?, 1, ?)",
                           (ts_ms, request_id, provider, model, amount, ABANDONED, rid))
                db.execute("DELETE FROM reservations WHERE id = ?", (rid,))
            return len(rows), sum(int(r[5]) for r in rows), replayed

        try:
            result = self._tx(body)
        except (sqlite3.Error, OSError) as exc:
            self._note_failure(exc)
            log.error("ledger_dead_owners_not_settled", error=str(exc))
            return 0, 0, 0
        self._ranges.clear()
        for token in dead:
            if token is not None:
                forget(directory, token)
        if result[0] or result[2]:
            log.warning("ledger_dead_owners_settled", owners=len(dead), charged=result[0],
                        charged_micros=result[1], replayed=result[2])
        return result

    def _close_in_thread(self) -> None:
        if self._conn is None:
            return
        if self._deferred:
            self._flush()
            self._journal()
        if self._deferred:
            log.error("ledger_closed_with_deferred_records", count=len(self._deferred),
                      journalled=self._journalled)
        self._owner.release(keep_journal=bool(self._deferred))
        self._conn.close()
        self._conn = None

    # -- writes (worker thread) --------------------------------------------------------

    def _tx(self, body: Callable[[sqlite3.Connection], T], *, durable: bool = True,
            wait_s: float = RESERVE_WAIT_S) -> T:
        db = self._db()
        if durable != self._durable:  # takes effect at the next commit; not allowed inside one
            db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._durable = durable
        wait_ms = round(wait_s * 1000)
        if wait_ms != self._wait_ms:
            db.execute(f"PRAGMA busy_timeout = {wait_ms}")
            self._wait_ms = wait_ms
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db)
            db.execute("COMMIT")
        except BaseException:
            self._ranges.clear()  # the cache may hold what was rolled back
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _write_tx(self, body: Callable[[sqlite3.Connection], T], *, durable: bool, wait_s: float) -> T:
        """A write transaction that first writes every deferred record (oldest first), so
        the ledger takes them at the first write that succeeds. A storage refusal is
        raised as :class:`LedgerWriteError`; the deferred records stay deferred."""
        held, journalled = self._deferred, self._journalled
        taken = False

        def run(db: sqlite3.Connection) -> T:
            nonlocal taken
            if held:
                self._deferred, self._journalled, taken = [], 0, True
                self._ranges.clear()
                for entry in held:
                    self._apply(db, entry)
            return body(db)

        try:
            result = self._tx(run, durable=durable or bool(held), wait_s=wait_s)
        except BaseException as exc:
            if taken:  # rolled back: they are deferred still, ahead of anything newer
                self._deferred, self._journalled = held + self._deferred, journalled
            kind = _failure_kind(exc)
            if kind is None:
                raise
            self._note_failure(exc)
            raise LedgerWriteError(self.path, kind, str(exc)) from exc
        self._failure = self._failure_kind = None
        if held:
            self._owner.clear()
            log.info("ledger_deferred_written", count=len(held))
        return result

    def _note_failure(self, exc: BaseException) -> None:
        self._failure_kind = _failure_kind(exc) or "error"
        self._failure = f"{self._failure_kind}: {exc}"

    def _writable(self) -> None:
        if self.report.status != "persistent":
            raise LedgerWriteError(self.path, "unavailable" if self.report.status == "memory" else "readonly",
                                   self.report.problem or "the ledger cannot be written")

    def _apply(self, db: sqlite3.Connection, entry: _Deferred, *, keyed: bool = True) -> int | None:
        """Write one settle or release; the row id, or None when nothing was inserted.
        ``keyed``: store the entry's key (a deferred record: a replay must add nothing);
        a direct write has none (if its transaction fails, nothing of it was committed)."""
        rid = entry.reservation_id
        if rid is not None and db.execute("DELETE FROM reservations WHERE id = ?", (rid,)).rowcount != 1:
            # Not open any more. Charged at its amount by a process that took ours for dead:
            # the real record replaces that charge. Already settled (a replayed journal
            # line): nothing to add. Gone otherwise: the record is written all the same.
            self._ranges.clear()
            replaced = db.execute("DELETE FROM usage WHERE reservation_id = ? AND outcome = ?",
                                  (rid, ABANDONED)).rowcount
            if not replaced and db.execute("SELECT 1 FROM usage WHERE reservation_id = ?", (rid,)).fetchone():
                return None
            log.warning("ledger_reservation_not_open", reservation_id=rid, replaced_abandoned=bool(replaced))
        rec = entry.record
        if rec is None:
            return None
        cursor = db.execute(
            "INSERT INTO usage (ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
            " cost_micros, outcome, estimated, reservation_id, journal_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (journal_id) WHERE journal_id IS NOT NULL DO NOTHING",
            (rec.ts_ms, rec.request_id, rec.provider, rec.model, rec.prompt_tokens, rec.completion_tokens,
             rec.cost_micros, rec.outcome, int(rec.estimated), rid, entry.key if keyed else None))
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def _defer(self, entry: _Deferred) -> None:
        """Keep ``entry`` for later: journalled (fsynced) if the disk lets us, in memory always."""
        self._deferred.append(entry)
        self._journal()
        free = [e for e in self._deferred if e.record is not None and e.record.cost_micros == 0
                and e.reservation_id is None]
        if len(free) > _MAX_DEFERRED_FREE:  # a long outage: drop the oldest free rows, never money
            drop = free[0]
            position = self._deferred.index(drop)
            del self._deferred[position]
            self._journalled -= position < self._journalled
            log.warning("ledger_deferred_free_row_dropped", request_id=drop.record and drop.record.request_id)
        log.warning("ledger_write_deferred", reservation_id=entry.reservation_id, pending=len(self._deferred),
                    journalled=self._journalled, problem=self._failure)

    def _journal(self) -> None:
        todo = self._deferred[self._journalled:]
        if not todo or not self._owner.held:
            return
        try:
            self._owner.append([entry.line() for entry in todo])
        except OSError as exc:
            log.error("ledger_journal_failed", path=str(self._owner.journal_path), error=str(exc))
            return
        self._journalled = len(self._deferred)

    @property
    def _can_write(self) -> bool:
        """Persistent, or the in-memory fallback (it takes rows, not reservations)."""
        return self.report.status != "readonly"

    def _flush(self) -> int:
        """Try the deferred records briefly; how many are left to retry (0 for a ledger that
        cannot be written at all: they stay counted in memory)."""
        if not self._can_write:
            return 0
        if self._deferred:
            try:
                self._write_tx(lambda _db: None, durable=True, wait_s=RETRY_WAIT_S)
            except LedgerWriteError:
                self._journal()  # the disk may take the journal again before the ledger
        return len(self._deferred)

    def _wait_s(self, full: float) -> float:
        """``full``, or a short wait while another process is known to hold the lock: one
        request waits the whole bound, the ones queued behind it are not made to wait it
        again each (the worker thread runs one write at a time)."""
        return min(full, LOCKED_WAIT_S) if self._failure_kind == "locked" else full

    def _deferred_write(self, reservation_id: int | None, record: UsageRecord | None,
                        durable: bool) -> int | None:
        entry = _Deferred(uuid.uuid4().hex, reservation_id, record)
        if self._deferred:  # earlier records wait: queue behind them, then try them all briefly
            self._defer(entry)
            self._flush()
            return None
        if self._can_write:
            try:
                return self._write_tx(lambda db: self._apply(db, entry, keyed=False), durable=durable,
                                      wait_s=self._wait_s(SETTLE_WAIT_S))
            except LedgerWriteError:
                pass
        self._defer(entry)
        return None

    def _settle(self, reservation_id: int | None, rec: UsageRecord) -> int | None:
        row_id = self._deferred_write(reservation_id, rec, rec.cost_micros > 0 or reservation_id is not None)
        if row_id is not None:
            self._count(rec)
        return row_id

    def _count(self, rec: UsageRecord) -> None:
        """Add a committed row to the cached totals (they stay exact)."""
        added = (rec.cost_micros, 1, rec.prompt_tokens, rec.completion_tokens)
        for (start, end), totals in self._ranges.items():
            if start <= rec.ts_ms < end:
                row = totals.setdefault((rec.provider, rec.model), [0, 0, 0, 0])
                row[:] = [a + b for a, b in zip(row, added, strict=True)]

    def _write_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write every queued reserve and settle in one transaction: one commit, one fsync
        for all of them. Each caller is answered only after that commit (or, for a settle
        the storage refused, its deferral) returned."""
        with self._queued_lock:
            batch, self._queued = self._queued, []
        if not batch:
            return
        try:
            if len(batch) == 1 or self._deferred or self.report.status != "persistent":
                for item in batch:
                    self._write_one(item)
            else:
                self._write_group(batch)
            self._read_spends(batch)
        except BaseException as exc:  # a bug: every caller hears of it rather than waiting forever
            for item in batch:
                if item.error is None and item.result is None:
                    item.error = exc
            raise
        finally:
            try:
                loop.call_soon_threadsafe(_resolve, batch)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _read_spends(self, batch: list[_Queued]) -> None:
        """Each settle's result as :class:`Settled`, with the spends it asked for, read
        once per distinct set of periods after everything in the batch was written."""
        read: dict[tuple[tuple[int, int], ...], tuple[int, ...] | None] = {}
        for item in batch:
            if not isinstance(item.op, _Deferred) or item.error is not None:
                continue
            spends = None
            if item.ranges:
                if item.ranges not in read:
                    try:
                        read[item.ranges] = tuple(self._spends_now(item.ranges))
                    except Exception as exc:  # the settle itself is done: only the reading failed
                        log.warning("ledger_spend_read_failed", error=repr(exc))
                        read[item.ranges] = None
                spends = read[item.ranges]
            assert not isinstance(item.result, ReserveResult | Settled)
            item.result = Settled(item.result, spends)

    def _write_one(self, item: _Queued) -> None:
        op = item.op
        try:
            if isinstance(op, _Reserve):
                item.result = self._reserve(*op)
            else:
                assert op.record is not None
                item.result = self._settle(op.reservation_id, op.record)  # (draws its own key)
        except Exception as exc:  # the caller gets it, as from a direct call
            item.error = exc

    def _write_group(self, batch: list[_Queued]) -> None:
        ready: list[_Queued] = []
        for item in batch:
            if isinstance(item.op, _Reserve):
                try:
                    self._reserve_checks(item.op.amount)
                except Exception as exc:
                    item.error = exc
                    continue
            ready.append(item)
        if not ready:
            return
        reserving = any(isinstance(item.op, _Reserve) for item in ready)
        durable = reserving or any(_costs(item.op) for item in ready)
        wait_s = self._wait_s(RESERVE_WAIT_S if reserving else SETTLE_WAIT_S)
        try:
            results = self._write_tx(lambda db: [self._write_in(db, item.op) for item in ready],
                                     durable=durable, wait_s=wait_s)
        except LedgerWriteError as exc:
            for item in ready:  # nothing of the group was committed
                if isinstance(item.op, _Reserve):
                    item.error = exc
                else:  # kept: journalled under a key of its own, written later
                    self._defer(_Deferred(uuid.uuid4().hex, item.op.reservation_id, item.op.record))
            return
        except Exception:  # a bug in one of them: each on its own, so only that one fails
            for item in ready:
                self._write_one(item)
            return
        for item, result in zip(ready, results, strict=True):
            item.result = result

    def _write_in(self, db: sqlite3.Connection, op: _Deferred | _Reserve) -> int | ReserveResult | None:
        """One reserve or settle inside the group's transaction (the cached totals follow
        each settle at once, so a reserve after it in the same transaction sees it; a
        rollback drops the cache)."""
        if isinstance(op, _Reserve):
            return self._reserve_body(db, op)
        row_id = self._apply(db, op, keyed=False)
        if row_id is not None and op.record is not None:
            self._count(op.record)
        return row_id

    def _release(self, reservation_id: int) -> bool:
        if self._deferred or not self._can_write:
            self._deferred_write(reservation_id, None, True)
            return True
        try:
            # Through the settle path: a reservation a sweep took for a dead process's
            # was charged as abandoned; giving it back must undo that charge too.
            return self._write_tx(lambda db: self._release_open(db, reservation_id),
                                  durable=True, wait_s=self._wait_s(SETTLE_WAIT_S))
        except LedgerWriteError:
            self._defer(_Deferred(uuid.uuid4().hex, reservation_id, None))
            return True

    def _release_open(self, db: sqlite3.Connection, reservation_id: int) -> bool:
        """Release one reservation through :meth:`_apply`; whether it was still ours (open,
        or charged as abandoned by a sweep)."""
        held = db.execute("SELECT 1 FROM reservations WHERE id = ? UNION ALL SELECT 1 FROM usage"
                          " WHERE reservation_id = ? AND outcome = ?",
                          (reservation_id, reservation_id, ABANDONED)).fetchone() is not None
        self._apply(db, _Deferred(uuid.uuid4().hex, reservation_id, None), keyed=False)
        return held

    def _reserve(self, ts_ms: int, request_id: str, provider: str, model: str, amount: int,
                 caps: tuple[Cap, ...], block: bool) -> ReserveResult:
        self._reserve_checks(amount)
        op = _Reserve(ts_ms, request_id, provider, model, amount, caps, block)
        return self._write_tx(lambda db: self._reserve_body(db, op), durable=True,
                              wait_s=self._wait_s(RESERVE_WAIT_S))

    def _reserve_checks(self, amount: int) -> None:
        self._writable()
        if amount > 0 and not self._owner.held:
            # Without the owner lock another sidecar's sweep would take this process for
            # dead and charge its open reservations as abandoned.
            raise LedgerWriteError(self.path, "unavailable", self.report.problem
                                   or f"this process does not hold {self._owner.lock_path}")
        if time.monotonic() >= self._next_sweep:  # another sidecar may have died meanwhile
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            self._settle_dead_owners()

    def _reserve_body(self, db: sqlite3.Connection, op: _Reserve) -> ReserveResult:
        """The compare-and-insert, inside a write transaction."""
        self._check_version(db)
        amount, caps = op.amount, op.caps
        spent = tuple(self._spend(db, cap.start_ms, cap.end_ms) for cap in caps)
        reserved = self._reserved_now()[1]
        over = amount > 0 and any(s + reserved + amount > cap.limit_micros
                                  for s, cap in zip(spent, caps, strict=True))
        if over and op.block:
            return ReserveResult(None, spent, reserved, over)
        cursor = db.execute(
            "INSERT INTO reservations (ts_ms, request_id, provider, model, amount_micros, over, owner, owner_pid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (op.ts_ms, op.request_id, op.provider, op.model, amount, int(over), self._owner.token, self._owner.pid))
        return ReserveResult(cursor.lastrowid, spent, reserved, over)

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        if not self._can_write:
            raise LedgerWriteError(self.path, "readonly", self.report.problem or "the ledger is read-only")
        return self._write_tx(lambda db: db.execute(sql, args).rowcount, durable=True,
                              wait_s=self._wait_s(SETTLE_WAIT_S))

    # -- reads (worker thread) ---------------------------------------------------------

    def _check_version(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            self._ranges.clear()  # another connection committed: cached totals may be stale
            self._data_version = version

    def _totals(self, db: sqlite3.Connection, start_ms: int, end_ms: int) -> Totals:
        key = (start_ms, end_ms)
        cached = self._ranges.get(key)
        if cached is None:
            rows = db.execute(
                "SELECT provider, model, SUM(cost_micros), SUM(outcome != ?), SUM(prompt_tokens),"
                " SUM(completion_tokens) FROM usage WHERE ts_ms >= ? AND ts_ms < ? GROUP BY provider, model",
                (ABANDONED, *key))
            cached = {(str(p), str(m)): [int(c), int(n), int(pt), int(ct)] for p, m, c, n, pt, ct in rows}
            if len(self._ranges) >= _MAX_CACHED_RANGES:
                self._ranges.clear()
            self._ranges[key] = cached
        return cached

    def _with_deferred(self, totals: Totals, start_ms: int, end_ms: int) -> Totals:
        """``totals`` plus the deferred records settled in ``[start_ms, end_ms)``."""
        records = [e.record for e in self._deferred if e.record is not None and start_ms <= e.record.ts_ms < end_ms]
        if not records:
            return totals
        merged = {key: list(row) for key, row in totals.items()}
        for rec in records:
            row = merged.setdefault((rec.provider, rec.model), [0, 0, 0, 0])
            row[:] = [a + b for a, b in zip(row, (rec.cost_micros, 1, rec.prompt_tokens, rec.completion_tokens),
                                             strict=True)]
        return merged

    def _spend(self, db: sqlite3.Connection, start_ms: int, end_ms: int) -> int:
        return sum(row[0] for row in self._with_deferred(self._totals(db, start_ms, end_ms), start_ms,
                                                         end_ms).values())

    def _spend_now(self, start_ms: int, end_ms: int) -> int:
        return self._spends_now(((start_ms, end_ms),))[0]

    def _spends_now(self, ranges: tuple[tuple[int, int], ...]) -> list[int]:
        self._check_version(self._db())
        return [self._spend(self._db(), start_ms, end_ms) for start_ms, end_ms in ranges]

    def _reserved_now(self) -> tuple[int, int]:
        db = self._db()
        count, micros = db.execute("SELECT COUNT(*), COALESCE(SUM(amount_micros), 0) FROM reservations").fetchone()
        ids = [e.reservation_id for e in self._deferred if e.reservation_id is not None]
        if ids:  # settled or released already, only not written yet
            done = db.execute(f"SELECT COUNT(*), COALESCE(SUM(amount_micros), 0) FROM reservations"
                              f" WHERE id IN ({','.join('?' * len(ids))})", ids).fetchone()
            count, micros = count - done[0], micros - done[1]
        return int(count), int(micros)

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, args).fetchall()

    def _breakdown(self, start_ms: int, end_ms: int) -> list[SpendRow]:
        self._check_version(self._db())
        totals = self._with_deferred(self._totals(self._db(), start_ms, end_ms), start_ms, end_ms)
        return [SpendRow(p, m, *totals[(p, m)]) for p, m in sorted(totals)]


class _Reserve(NamedTuple):
    """A queued reservation: the arguments of :meth:`Ledger.reserve`."""

    ts_ms: int
    request_id: str
    provider: str
    model: str
    amount: int
    caps: tuple[Cap, ...]
    block: bool


class _Queued:
    """A reserve or a settle waiting for the worker thread, and then its outcome."""

    __slots__ = ("done", "error", "op", "ranges", "result")

    def __init__(self, op: _Deferred | _Reserve, ranges: tuple[tuple[int, int], ...] = ()) -> None:
        self.op = op
        self.ranges = ranges  # a settle's periods whose spend is read after the commit
        self.done: asyncio.Future[Any] | None = None
        self.result: int | ReserveResult | Settled | None = None
        self.error: BaseException | None = None


def _costs(op: _Deferred | _Reserve) -> bool:
    """Whether a settle moves money (its commit is fsynced); a free one's is not."""
    return isinstance(op, _Deferred) and (op.reservation_id is not None
                                          or (op.record is not None and op.record.cost_micros > 0))


def _resolve(batch: list[_Queued]) -> None:
    """Hand each caller its outcome (on the event loop; a caller cancelled meanwhile is skipped)."""
    for item in batch:
        done = item.done
        if done is None or done.done():
            continue
        if item.error is not None:
            done.set_exception(item.error)
        else:
            done.set_result(item.result)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) in _CORRUPT_CODES
    # Raised by our own quick_check, or without an error code.
    return not isinstance(exc, sqlite3.OperationalError)


#: How long opening waits for another process that holds the file while it switches it
#: to WAL (two sidecars starting at once).
_WAL_WAIT_S = 5.0


def _wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL, waiting out another process's brief hold on the file."""
    deadline = time.monotonic() + _WAL_WAIT_S
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
