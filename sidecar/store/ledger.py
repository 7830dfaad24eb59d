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
* Money is stored as **integer micro-dollars** (``cost_micros``, 1 = 0.000001 USD), so
  sums are exact; times as **epoch milliseconds, UTC** (``ts_ms``). A record is billed at
  the time it is settled.
* Reserve is a compare-and-insert run in one transaction: the spend of each capped period,
  the open reservations and the new amount are checked and the reservation row inserted
  with nothing in between, not even another connection (the write lock is held).
* On open, reservations left by a previous process are deleted (those requests died with
  it; nothing was settled for them) and counted in :class:`OpenReport`. A file SQLite
  finds corrupt is moved aside (with its ``-wal``/``-shm``) as
  ``usage.sqlite3.corrupt-<ts>`` and a fresh ledger started; a file that cannot be opened
  at all (permissions, a newer schema) leaves the sidecar on an in-memory ledger. Neither
  raises: the report says what happened.

One process owns a data dir's ledger: opening it clears every reservation in it.
Per-period totals (per provider and model) are cached in the worker thread, kept exact
by every settle and dropped whenever another connection commits (``PRAGMA
data_version``): a check or a breakdown costs the same however long the month.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

__all__ = [
    "DB_NAME",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "Cap",
    "Ledger",
    "OpenReport",
    "ReserveResult",
    "SpendRow",
    "UsageRecord",
]

log = structlog.get_logger("sidecar.budget")

DB_NAME = "usage.sqlite3"
SCHEMA_VERSION = 1
OUTCOMES = ("ok", "cancelled", "failed", "partial")
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
_MAX_CACHED_RANGES = 16
T = TypeVar("T")
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
    """How opening went. ``persistent`` is False when running on an in-memory fallback."""

    path: Path
    persistent: bool
    stale_reservations: int = 0
    stale_reserved_micros: int = 0
    moved_aside: Path | None = None
    problem: str | None = None


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
        self.report = OpenReport(path=path, persistent=False)

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, *, name: str = DB_NAME) -> Ledger:
        """Open (or create) ``data_dir/name``. Blocks for the open itself; never raises
        for a bad file (see the module docstring); :attr:`report` says what happened."""
        ledger = cls(Path(data_dir) / name)
        ledger.report = ledger._executor.submit(ledger._open_in_thread).result()
        return ledger

    def close(self) -> None:
        """Finish queued work, close the connection and stop the worker thread."""
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

    async def reserve(self, *, ts_ms: int, request_id: str, provider: str, model: str,
                      amount_micros: int, caps: Sequence[Cap], block: bool) -> ReserveResult:
        """Insert a reservation unless ``block`` and spent + reserved + amount > a cap.

        A zero amount always fits (it cannot add to spending)."""
        if amount_micros < 0:
            raise ValueError("amount_micros must be >= 0")
        return await self._run(self._reserve, ts_ms, request_id, provider, model, amount_micros,
                               tuple(caps), block)

    async def settle(self, reservation_id: int | None, record: UsageRecord) -> int:
        """Delete the reservation and insert the usage row in one transaction; returns the
        row id. ``LookupError`` (and nothing written) when the reservation is not open."""
        if record.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        if min(record.cost_micros, record.prompt_tokens, record.completion_tokens) < 0:
            raise ValueError("cost and token counts must be >= 0")
        return await self._run(self._settle, reservation_id, record)

    async def release(self, reservation_id: int) -> bool:
        """Delete an open reservation; False when it was not open."""
        return await self._run(self._write, "DELETE FROM reservations WHERE id = ?", (reservation_id,)) == 1

    async def spend(self, start_ms: int, end_ms: int) -> int:
        """Micro-dollars settled in ``[start_ms, end_ms)``."""
        return await self._run(self._spend_now, start_ms, end_ms)

    async def breakdown(self, start_ms: int, end_ms: int) -> list[SpendRow]:
        """Spend, requests and tokens per (provider, model) in ``[start_ms, end_ms)``."""
        return await self._run(self._breakdown, start_ms, end_ms)

    async def reserved(self) -> tuple[int, int]:
        """(number, micro-dollars) of open reservations."""
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

    # -- worker thread -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the ledger is not open")
        return self._conn

    def _open_in_thread(self) -> OpenReport:
        moved: Path | None = None
        problem: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = self._connect(str(self.path))
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                problem = f"corrupt ledger: {exc}"
                moved = self._move_aside()
                log.error("ledger_corrupt_moved_aside", path=str(self.path), moved_to=str(moved), error=str(exc))
                self._conn = self._connect(str(self.path))
            persistent = True
        except (sqlite3.Error, OSError) as exc:
            problem = f"ledger unavailable, usage kept in memory only: {exc}"
            log.error("ledger_unavailable", path=str(self.path), error=str(exc))
            self._conn = self._connect(":memory:")
            persistent = False
        count, micros = self._reserved_now()
        if count:
            self._tx(lambda db: db.execute("DELETE FROM reservations"))
            log.warning("ledger_stale_reservations_cleared", count=count, amount_micros=micros)
        return OpenReport(path=self.path, persistent=persistent, stale_reservations=count,
                          stale_reserved_micros=micros, moved_aside=moved, problem=problem)

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, isolation_level=None, timeout=5.0)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
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
            for target in range(version + 1, SCHEMA_VERSION + 1):
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

    def _close_in_thread(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _tx(self, body: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        db = self._db()
        if durable != self._durable:  # takes effect at the next commit; not allowed inside one
            db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._durable = durable
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

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
                "SELECT provider, model, SUM(cost_micros), COUNT(*), SUM(prompt_tokens), SUM(completion_tokens)"
                " FROM usage WHERE ts_ms >= ? AND ts_ms < ? GROUP BY provider, model", key)
            cached = {(str(p), str(m)): [int(c), int(n), int(pt), int(ct)] for p, m, c, n, pt, ct in rows}
            if len(self._ranges) >= _MAX_CACHED_RANGES:
                self._ranges.clear()
            self._ranges[key] = cached
        return cached

    def _spend(self, db: sqlite3.Connection, start_ms: int, end_ms: int) -> int:
        return sum(row[0] for row in self._totals(db, start_ms, end_ms).values())

    def _spend_now(self, start_ms: int, end_ms: int) -> int:
        self._check_version(self._db())
        return self._spend(self._db(), start_ms, end_ms)

    def _reserved_now(self) -> tuple[int, int]:
        row = self._db().execute("SELECT COUNT(*), COALESCE(SUM(amount_micros), 0) FROM reservations").fetchone()
        return int(row[0]), int(row[1])

    def _reserve(self, ts_ms: int, request_id: str, provider: str, model: str, amount: int,
                 caps: tuple[Cap, ...], block: bool) -> ReserveResult:
        def body(db: sqlite3.Connection) -> ReserveResult:
            self._check_version(db)
            spent = tuple(self._spend(db, cap.start_ms, cap.end_ms) for cap in caps)
            reserved = self._reserved_now()[1]
            over = amount > 0 and any(s + reserved + amount > cap.limit_micros
                                      for s, cap in zip(spent, caps, strict=True))
            if over and block:
                return ReserveResult(None, spent, reserved, over)
            cursor = db.execute(
                "INSERT INTO reservations (ts_ms, request_id, provider, model, amount_micros, over)"
                " VALUES (?, ?, ?, ?, ?, ?)", (ts_ms, request_id, provider, model, amount, int(over)))
            return ReserveResult(cursor.lastrowid, spent, reserved, over)

        return self._tx(body)

    def _settle(self, reservation_id: int | None, rec: UsageRecord) -> int:
        def body(db: sqlite3.Connection) -> int:
            self._check_version(db)
            if reservation_id is not None:
                gone = db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)).rowcount
                if gone != 1:
                    raise LookupError(f"reservation {reservation_id} is not open")
            cursor = db.execute(
                "INSERT INTO usage (ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
                " cost_micros, outcome, estimated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.ts_ms, rec.request_id, rec.provider, rec.model, rec.prompt_tokens,
                 rec.completion_tokens, rec.cost_micros, rec.outcome, int(rec.estimated)))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        row_id = self._tx(body, durable=rec.cost_micros > 0 or reservation_id is not None)
        added = (rec.cost_micros, 1, rec.prompt_tokens, rec.completion_tokens)
        for (start, end), totals in self._ranges.items():  # committed: keep the cached totals exact
            if start <= rec.ts_ms < end:
                row = totals.setdefault((rec.provider, rec.model), [0, 0, 0, 0])
                row[:] = [a + b for a, b in zip(row, added, strict=True)]
        return row_id

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        return self._tx(lambda db: db.execute(sql, args).rowcount)

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, args).fetchall()

    def _breakdown(self, start_ms: int, end_ms: int) -> list[SpendRow]:
        self._check_version(self._db())
        totals = self._totals(self._db(), start_ms, end_ms)
        return [SpendRow(p, m, *totals[(p, m)]) for p, m in sorted(totals)]


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) in _CORRUPT_CODES
    # Raised by our own quick_check, or without an error code.
    return not isinstance(exc, sqlite3.OperationalError)
