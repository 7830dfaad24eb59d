"""The ledger on real SQLite files: pragmas, transactions, reopen, corrupt and unusable files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sidecar.store.ledger import DB_NAME, SCHEMA_VERSION, Cap, Ledger, LedgerWriteError, UsageRecord


def record(ts_ms: int = 1_000, cost: int = 100, provider: str = "openai", model: str = "gpt-4o") -> UsageRecord:
    return UsageRecord(ts_ms=ts_ms, request_id="r", provider=provider, model=model, prompt_tokens=10,
                       completion_tokens=5, cost_micros=cost)


async def test_file_pragmas_and_schema(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        assert ledger.report.persistent and ledger.report.problem is None
        assert (tmp_path / DB_NAME).exists()
        assert await ledger.integrity_check() == "ok"
    finally:
        ledger.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"usage", "reservations", "alerts", "meta"} <= tables
    db.close()


async def test_connection_lives_on_one_worker_thread(ledger: Ledger) -> None:
    assert ledger._conn is not None
    with pytest.raises(sqlite3.ProgrammingError):  # check_same_thread: only the worker may use it
        ledger._conn.execute("SELECT 1")


async def test_settle_deletes_reservation_and_inserts_usage_atomically(ledger: Ledger) -> None:
    result = await ledger.reserve(ts_ms=1, request_id="a", provider="p", model="m", amount_micros=500,
                                  caps=[], block=True)
    assert result.reservation_id is not None
    assert await ledger.reserved() == (1, 500)
    row = await ledger.settle(result.reservation_id, record(cost=300))
    assert await ledger.reserved() == (0, 0)
    assert await ledger.record_ids() == {row}
    # Settled twice (a journal replayed): no error, nothing written the second time.
    assert await ledger.settle(result.reservation_id, record(cost=300)) is None
    assert await ledger.record_count() == 1
    with pytest.raises(ValueError):
        await ledger.settle(None, UsageRecord(1, "r", "p", "m", 1, 1, 1, outcome="weird"))


async def test_compare_and_insert_respects_every_cap(ledger: Ledger) -> None:
    await ledger.settle(None, record(ts_ms=10, cost=600))
    day, month = Cap(0, 100, 1_000), Cap(0, 1_000, 5_000)
    fits = await ledger.reserve(ts_ms=20, request_id="a", provider="p", model="m", amount_micros=400,
                                caps=[day, month], block=True)
    assert fits.reservation_id is not None and not fits.over and fits.spent_micros == (600, 600)
    refused = await ledger.reserve(ts_ms=20, request_id="b", provider="p", model="m", amount_micros=1,
                                   caps=[day, month], block=True)
    assert refused.reservation_id is None and refused.over and refused.reserved_micros == 400
    zero = await ledger.reserve(ts_ms=20, request_id="c", provider="p", model="m", amount_micros=0,
                                caps=[day, month], block=True)
    assert zero.reservation_id is not None and not zero.over
    admitted_over = await ledger.reserve(ts_ms=20, request_id="d", provider="p", model="m", amount_micros=7,
                                         caps=[day, month], block=False)
    assert admitted_over.reservation_id is not None and admitted_over.over
    # Outside the day's window the old spend does not count.
    later = await ledger.reserve(ts_ms=20, request_id="e", provider="p", model="m", amount_micros=500,
                                 caps=[Cap(100, 200, 1_000)], block=True)
    assert later.spent_micros == (0,) and later.reserved_micros == 407
    assert later.reservation_id is not None  # 0 spent + 407 reserved + 500 <= 1000


async def test_spend_cache_sees_other_connections(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    try:
        await ledger.settle(None, record(ts_ms=5, cost=10))
        assert await ledger.spend(0, 100) == 10
        other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        other.execute("INSERT INTO usage (ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
                      " cost_micros, outcome, estimated) VALUES (6, 'x', 'p', 'm', 0, 0, 32, 'ok', 0)")
        other.close()
        assert await ledger.spend(0, 100) == 42
        await ledger.settle(None, record(ts_ms=7, cost=8))
        assert await ledger.spend(0, 100) == 50
        assert await ledger.spend(7, 8) == 8
    finally:
        ledger.close()


async def test_reservations_of_a_gone_owner_are_charged_at_their_amount(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    for i in range(3):
        await ledger.reserve(ts_ms=1, request_id=str(i), provider="p", model="m", amount_micros=100 + i,
                             caps=[], block=True)
    await ledger.settle(None, record(ts_ms=1))
    ledger.close()
    again = Ledger.open(tmp_path)
    try:
        assert again.report.stale_reservations == 3
        assert again.report.stale_reserved_micros == 303
        assert await again.reserved() == (0, 0)
        assert await again.record_count() == 4
        assert await again.spend(0, 10) == 100 + 303  # the worst case of each, charged
        (row,) = [r for r in await again.breakdown(0, 10) if r.provider == "p"]
        assert row.cost_micros == 303 and row.requests == 0  # charged, not counted as answered
    finally:
        again.close()
    third = Ledger.open(tmp_path)
    assert third.report.stale_reservations == 0
    third.close()


async def test_alert_marks_are_first_wins_and_durable(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    assert await ledger.mark_alert("daily:2026-11-26", "threshold", 1) is True
    assert await ledger.mark_alert("daily:2026-11-26", "threshold", 2) is False
    assert await ledger.mark_alert("daily:2026-11-26", "limit", 3) is True
    ledger.close()
    again = Ledger.open(tmp_path)
    try:
        assert await again.mark_alert("daily:2026-11-26", "threshold", 4) is False
        assert await again.alerts(["daily:2026-11-26", "monthly:2026-11"]) == {
            ("daily:2026-11-26", "threshold"), ("daily:2026-11-26", "limit")}
    finally:
        again.close()


async def test_garbage_file_is_moved_aside_and_a_new_ledger_started(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    (tmp_path / f"{DB_NAME}-wal").write_bytes(b"stale wal")
    ledger = Ledger.open(tmp_path)
    try:
        report = ledger.report
        assert report.persistent and report.moved_aside is not None and report.problem
        assert report.moved_aside.read_bytes().startswith(b"this is not a database")
        assert await ledger.record_count() == 0
        await ledger.settle(None, record())
        assert await ledger.record_count() == 1
        assert await ledger.integrity_check() == "ok"
    finally:
        ledger.close()


async def test_damaged_pages_are_detected_and_moved_aside(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    for i in range(300):
        await ledger.settle(None, record(ts_ms=i, cost=i))
    ledger.close()
    path = tmp_path / DB_NAME
    data = bytearray(path.read_bytes())
    assert len(data) > 4096 * 4
    data[4096 * 2: 4096 * 4] = b"\xa5" * (4096 * 2)  # trash two b-tree pages, keep the header
    path.write_bytes(bytes(data))
    again = Ledger.open(tmp_path)
    try:
        assert again.report.moved_aside is not None and again.report.persistent
        assert await again.record_count() == 0
    finally:
        again.close()


async def test_unusable_location_falls_back_to_memory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    ledger = Ledger.open(not_a_dir)
    try:
        assert not ledger.report.persistent and ledger.report.problem
        await ledger.settle(None, record())
        assert await ledger.record_count() == 1
    finally:
        ledger.close()


async def test_newer_schema_is_left_alone(tmp_path: Path) -> None:
    Ledger.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    ledger = Ledger.open(tmp_path)
    try:
        assert not ledger.report.persistent and ledger.report.moved_aside is None
        assert "newer" in (ledger.report.problem or "")
    finally:
        ledger.close()
    assert (tmp_path / DB_NAME).exists()


async def test_closed_ledger_refuses_work(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(RuntimeError):
        await ledger.record_count()


async def test_money_commits_are_fsynced_free_rows_are_not(ledger: Ledger) -> None:
    """synchronous=FULL for anything that moves money, NORMAL for a free call's settle."""

    async def mode() -> int:  # 2 = FULL, 1 = NORMAL; read on the ledger's own thread
        return int(await ledger._run(lambda: ledger._db().execute("PRAGMA synchronous").fetchone()[0]))

    await ledger.settle(None, record(cost=0, provider="local-llm", model="smollm2"))
    assert await mode() == 1
    await ledger.settle(None, record(cost=5))
    assert await mode() == 2
    await ledger.settle(None, record(cost=0))
    assert await mode() == 1
    reserved = await ledger.reserve(ts_ms=2, request_id="b", provider="p", model="m", amount_micros=50,
                                    caps=[], block=True)
    assert await mode() == 2
    assert reserved.reservation_id is not None
    await ledger.settle(reserved.reservation_id, record(cost=0))  # a reservation released: money
    assert await mode() == 2
    assert await ledger.record_count() == 4


async def test_a_settle_the_lock_refuses_is_journalled_and_replayed_by_the_next_open(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path)
    held = await ledger.reserve(ts_ms=1, request_id="a", provider="p", model="m", amount_micros=900,
                                caps=[], block=True)
    assert held.reservation_id is not None
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the ledger
    assert await ledger.settle(held.reservation_id, record(ts_ms=1, cost=300)) is None  # deferred
    assert (await ledger.spend(0, 10), await ledger.reserved(), ledger.pending) == (300, (0, 0), 1)
    with pytest.raises(LedgerWriteError) as refused:
        await ledger.reserve(ts_ms=1, request_id="b", provider="p", model="m", amount_micros=1, caps=[], block=True)
    assert refused.value.kind == "locked"
    ledger.close()  # as good as dead: the record is only in its journal now
    other.execute("ROLLBACK")
    other.close()
    again = Ledger.open(tmp_path)
    try:
        assert (again.report.replayed, again.report.stale_reservations) == (1, 0)
        assert await again.spend(0, 10) == 300  # the real cost, not the 900 reserved
        assert await again.reserved() == (0, 0)
    finally:
        again.close()
    third = Ledger.open(tmp_path)  # replayed once only
    try:
        assert third.report.replayed == 0 and await third.spend(0, 10) == 300
    finally:
        third.close()


async def test_a_version_1_ledger_is_migrated_and_its_ownerless_reservations_charged(tmp_path: Path) -> None:
    from sidecar.store.ledger import MIGRATIONS

    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO usage (id, ts_ms, request_id, provider, model, prompt_tokens, completion_tokens,"
               " cost_micros, outcome, estimated) VALUES (7, 1, 'old', 'p', 'm', 3, 4, 250, 'ok', 0)")
    db.execute("INSERT INTO reservations (ts_ms, request_id, provider, model, amount_micros, over)"
               " VALUES (2, 'left', 'p', 'm', 800, 0)")
    db.close()
    ledger = Ledger.open(tmp_path)
    try:
        assert ledger.report.persistent and ledger.report.stale_reservations == 1
        assert await ledger.record_ids() >= {7}  # ids survive the table rebuild
        assert await ledger.spend(0, 10) == 250 + 800
        assert await ledger.integrity_check() == "ok"
    finally:
        ledger.close()
    check = sqlite3.connect(tmp_path / DB_NAME)
    assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert check.execute("SELECT outcome, cost_micros FROM usage ORDER BY id").fetchall() == [
        ("ok", 250), ("abandoned", 800)]
    check.close()


async def test_a_running_ledger_charges_the_reservations_of_a_process_gone_since(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.store.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "SWEEP_INTERVAL_S", 0.0)
    survivor, gone = Ledger.open(tmp_path), Ledger.open(tmp_path)
    try:
        mine = await survivor.reserve(ts_ms=1, request_id="mine", provider="p", model="m", amount_micros=70,
                                      caps=[], block=True)
        await gone.reserve(ts_ms=1, request_id="theirs", provider="p", model="m", amount_micros=500,
                           caps=[], block=True)
        await survivor.reserve(ts_ms=1, request_id="x", provider="p", model="m", amount_micros=1, caps=[], block=True)
        assert await survivor.reserved() == (3, 571)  # the other process still runs: left alone
        gone._owner.release(keep_journal=True)  # as if it died: its lock is gone
        await survivor.reserve(ts_ms=1, request_id="y", provider="p", model="m", amount_micros=1, caps=[], block=True)
        assert await survivor.reserved() == (3, 72)  # its 500 charged, ours untouched
        assert await survivor.spend(0, 10) == 500
        assert mine.reservation_id is not None
        assert await survivor.settle(mine.reservation_id, record(ts_ms=1, cost=60)) is not None
    finally:
        survivor.close()
        gone.close()
