"""Races and torn writes in the ledger and its owner journal: two sidecars starting at
once, a sweep between creating and locking an owner's lock file, a torn journal line, a
ledger file that goes bad while the sidecar runs."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.store import journal
from sidecar.store.journal import JOURNAL_DIR, Owner, forget, known_tokens, owner_alive, read_journal
from sidecar.store.ledger import DB_NAME, MIGRATIONS, Ledger, LedgerWriteError, UsageRecord

ROUNDS = 40


def record(cost: int = 100) -> UsageRecord:
    return UsageRecord(ts_ms=1_000, request_id="r", provider="openai", model="gpt-4o", prompt_tokens=10,
                       completion_tokens=5, cost_micros=cost)


def open_two_at_once(data_dir: Path) -> list[Ledger]:
    """Open two ledgers on ``data_dir`` from two threads released by one barrier."""
    barrier = threading.Barrier(2, timeout=30)
    opened: list[Ledger] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            opened.append(Ledger.open(data_dir))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(opened) == 2
    return opened


def write_v1(data_dir: Path) -> None:
    db = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.close()


@pytest.mark.parametrize("start", ["fresh", "v1"])
def test_two_ledgers_opened_at_once_are_both_persistent(tmp_path: Path, start: str) -> None:
    for round_ in range(ROUNDS):
        data_dir = tmp_path / str(round_)
        data_dir.mkdir()
        if start == "v1":
            write_v1(data_dir)
        ledgers = open_two_at_once(data_dir)
        try:
            assert [(lg.report.status, lg.report.problem) for lg in ledgers] == [("persistent", None)] * 2
        finally:
            for ledger in ledgers:
                ledger.close()


def sweep(directory: Path) -> None:
    """What another sidecar's sweep does with owners it finds dead."""
    for token in known_tokens(directory):
        if not owner_alive(directory, token):
            forget(directory, token)


def test_a_sweep_between_creating_and_locking_never_takes_a_live_owner_for_dead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_lock: Callable[[int], bool] = journal._lock
    swept: list[bool] = []

    def lock_after_a_sweep(fd: int) -> bool:
        if not swept:  # the acquire's own lock: another process sweeps just before it
            swept.append(True)
            sweep(tmp_path)
        return real_lock(fd)

    monkeypatch.setattr(journal, "_lock", lock_after_a_sweep)
    owner = Owner(tmp_path)
    owner.acquire()
    try:
        assert swept
        assert owner.lock_path.exists() and owner_alive(tmp_path, owner.token)
        assert not list(tmp_path.glob("*.tmp"))
    finally:
        owner.release(keep_journal=False)


def test_forget_leaves_the_lock_file_of_a_live_owner(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.acquire()
    try:
        forget(tmp_path, owner.token)
        assert owner.lock_path.exists() and owner_alive(tmp_path, owner.token)
    finally:
        owner.release(keep_journal=False)
    forget(tmp_path, owner.token)
    assert not owner.lock_path.exists()


async def test_a_release_undoes_an_abandoned_charge(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        reserved = await ledger.reserve(ts_ms=1_000, request_id="r", provider="openai", model="gpt-4o",
                                        amount_micros=800, caps=(), block=True)
        rid = reserved.reservation_id
        assert rid is not None
        # A sweep that took this process for dead charged the reservation at its amount.
        db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO usage (ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
                   " cost_micros, outcome, estimated, reservation_id) VALUES (1000, 'r', 'openai', 'gpt-4o',"
                   " 0, 0, 800, 'abandoned', 1, ?)", (rid,))
        db.execute("DELETE FROM reservations WHERE id = ?", (rid,))
        db.execute("COMMIT")
        db.close()
        assert await ledger.spend(0, 10_000) == 800
        assert await ledger.release(rid) is True
        assert await ledger.spend(0, 10_000) == 0
        assert await ledger.release(rid) is False
    finally:
        ledger.close()


async def test_paid_reservations_are_refused_without_the_owner_lock(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_DIR).write_bytes(b"")  # a file where the lock directory belongs
    ledger = Ledger.open(tmp_path)
    try:
        assert ledger.report.status == "persistent"
        problem = ledger.status().problem
        assert problem is not None and "cannot lock" in problem
        with pytest.raises(LedgerWriteError) as raised:
            await ledger.reserve(ts_ms=1_000, request_id="r", provider="openai", model="gpt-4o",
                                 amount_micros=800, caps=(), block=True)
        assert "cannot lock" in raised.value.reason
        assert (await ledger.reserved()) == (0, 0)
        free = await ledger.reserve(ts_ms=1_000, request_id="r", provider="ollama", model="llama3",
                                    amount_micros=0, caps=(), block=True)
        assert free.reservation_id is not None
    finally:
        ledger.close()


def test_a_torn_journal_line_loses_only_itself(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.acquire()
    try:
        owner.journal_path.write_bytes(b'{"key": "torn", "reser')
        owner.append([{"key": "a"}])
        owner.append([{"key": "b"}])
        assert read_journal(tmp_path, owner.token) == [{"key": "a"}, {"key": "b"}]
    finally:
        owner.release(keep_journal=False)


def test_a_failed_journal_write_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = Owner(tmp_path)
    owner.acquire()
    try:
        owner.append([{"key": "a"}])
        before = owner.journal_path.read_bytes()
        real_write_all = journal._write_all

        def half_then_full(fd: int, data: bytes) -> None:
            real_write_all(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(journal, "_write_all", half_then_full)
        with pytest.raises(OSError):
            owner.append([{"key": "lost", "padding": "x" * 100}])
        assert owner.journal_path.read_bytes() == before
        monkeypatch.setattr(journal, "_write_all", real_write_all)
        owner.append([{"key": "b"}])
        assert read_journal(tmp_path, owner.token) == [{"key": "a"}, {"key": "b"}]
    finally:
        owner.release(keep_journal=False)


async def test_a_ledger_that_goes_corrupt_while_running_defers_and_says_so(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        assert await ledger.settle(None, record(100)) is not None
        path = tmp_path / DB_NAME
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
        other.execute("INSERT INTO alerts (period_key, kind, sent_at_ms) VALUES ('p', 'limit', 1)")
        other.close()  # a commit by another connection: the ledger's page cache is dropped
        page = 4096
        size = path.stat().st_size
        with path.open("r+b") as raw:  # every page after the first: garbage
            raw.seek(page)
            raw.write(b"\xa5" * (size - page))
        result = await ledger.settle(None, record(250))
        status = ledger.status()
        assert result is None and status.pending == 1
        assert status.problem is not None and status.problem.startswith("io: ")
    finally:
        ledger.close()
