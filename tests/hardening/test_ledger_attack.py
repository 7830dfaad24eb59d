"""The ledger under attack: another process holding it, a second sidecar on the same data
dir, kill -9 with calls in flight, a full disk and a read-only one, all made by the test.

The rules checked (see README "Budget semantics"):

* a paid call whose reservation cannot be written goes nowhere: ``StorageError``
  (-32009, ``data.path``, ``data.reason``) and the fake provider saw nothing;
* once a call went upstream its answer is delivered and its cost is kept: in the
  ledger, or journalled and settled into it later (``model:usage`` counts it meanwhile);
* a reservation belongs to its process: a second sidecar leaves the first one's alone,
  and one left by a dead process is charged at its reserved amount;
* a sidecar on a read-only or full disk starts, serves free calls, refuses paid ones,
  and says so in ``model:health`` (``ledger``).

The disk tests mount a small tmpfs, so they need root (CAP_SYS_ADMIN); they are skipped
elsewhere.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer, Reply
from tests.stdio.conftest import ANTHROPIC_KEY, CUSTOM_KEY, OPENAI_KEY, Spawn, fake_config
from tests.stdio.harness import SidecarProcess

pytestmark = [pytest.mark.stdio, pytest.mark.hardening]

PAID_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: $1000 per 1M tokens each way: a token costs 1000 micro-dollars.
PRICE = {"inputPer1M": 1000.0, "outputPer1M": 1000.0}
USAGE = (10, 10)
CALL_MICROS = (USAGE[0] + USAGE[1]) * 1000
DB = "usage.sqlite3"


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeServer]]:
    """One fake per wire protocol; local-llm (llama.cpp) is priced by :func:`paid_config`."""
    servers = {"openai": FakeServer("openai", api_key=OPENAI_KEY).start(),
               "anthropic": FakeServer("anthropic", api_key=ANTHROPIC_KEY).start(),
               "ollama": FakeServer("ollama").start(),
               "local-llm": FakeServer("llamacpp", api_key=CUSTOM_KEY).start()}
    yield servers
    for server in servers.values():
        server.stop()


def paid_config(fakes: dict[str, Any], *, daily: float | None = None) -> dict[str, Any]:
    """local-llm priced (the default, no fallback); ollama stays a free local provider."""
    config = fake_config(fakes, defaultProvider="local-llm", fallbackChain=[])
    config["modelOverrides"] = {f"local-llm/{PAID_MODEL}": PRICE}
    if daily is not None:
        config["budget"] = {"dailyLimit": daily, "alertThreshold": 0.99}
    return config


ONLY_PAID = {"provider": "local-llm", "fallback": False}
PAID = {"request": {"prompt": "hi", "maxTokens": 20}, "selection": ONLY_PAID}
FREE = {"request": {"prompt": "hi", "maxTokens": 20}, "selection": {"provider": "ollama", "fallback": False}}


def ledger_state(data_dir: Path) -> tuple[list[tuple[str, int]], int]:
    """((outcome, cost_micros) of every usage row, open reservations), read from outside."""
    db = sqlite3.connect(f"file:{data_dir / DB}?mode=ro", uri=True, timeout=10)
    try:
        rows = [(str(o), int(c)) for o, c in db.execute("SELECT outcome, cost_micros FROM usage")]
        (open_,) = db.execute("SELECT COUNT(*) FROM reservations").fetchone()
    finally:
        db.close()
    return rows, int(open_)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def answers(sidecar: SidecarProcess, ids: list[Any], timeout: float = 60) -> list[dict[str, Any]]:
    return [sidecar.response(i, timeout=timeout) for i in ids]


def internal_errors(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in found if "error" in a and a["error"]["code"] == -32603]


@contextlib.contextmanager
def exclusive_lock(data_dir: Path) -> Iterator[None]:
    """Another process's connection holding the ledger's write lock."""
    db = sqlite3.connect(data_dir / DB, timeout=10, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


# -- another process holds the ledger ---------------------------------------------------


def test_a_locked_ledger_loses_no_paid_answer_and_no_cost(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fake = fakes["local-llm"]
    fake.set_default(Reply("all of the text", usage=USAGE, delay_s=0.5))
    sidecar = spawn(paid_config(fakes))
    assert "result" in sidecar.call("model:usage")
    ids = [sidecar.start("model:stream", PAID) for _ in range(6)]
    fake.wait_for_requests(6, timeout=20)  # all six reserved and upstream
    with exclusive_lock(sidecar.data_dir):
        found = answers(sidecar, ids)
        assert internal_errors(found) == [], internal_errors(found)[:1]
        assert all("result" in a for a in found), found[0]
        assert all(a["result"]["content"] == "all of the text" for a in found)
        # Journalled, not yet in the ledger: model:usage counts it all the same.
        assert ledger_state(sidecar.data_dir) == ([], 6)
        usage = sidecar.result("model:usage")
        spent = round(usage["daily"]["spentUsd"] * 1e6)
        assert spent > 0 and usage["daily"]["reservedUsd"] == 0
        assert usage["byProvider"]["local-llm"]["requests"] == 6
        health = sidecar.result("model:health")["ledger"]
        assert health["pending"] == 6 and "locked" in health["problem"], health
        journal = list((sidecar.data_dir / "usage-journal").glob("*.jsonl"))
        assert len(journal) == 1 and len(journal[0].read_bytes().splitlines()) == 6
    # The lock is gone: the journal is settled into the ledger, the reservations with it.
    wait_until(lambda: len(ledger_state(sidecar.data_dir)[0]) == 6, 20, "the journal to reach the ledger")
    rows, reservations = ledger_state(sidecar.data_dir)
    assert reservations == 0 and {o for o, _ in rows} == {"ok"} and sum(c for _, c in rows) == spent
    assert len(fake.served) == 6
    assert round(sidecar.result("model:usage")["daily"]["spentUsd"] * 1e6) == spent
    assert sidecar.result("model:health")["ledger"]["pending"] == 0


def test_a_paid_call_that_cannot_reserve_goes_nowhere(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fake = fakes["local-llm"]
    fake.set_default(Reply("ok", usage=USAGE))
    sidecar = spawn(paid_config(fakes))
    assert "result" in sidecar.call("model:usage")
    with exclusive_lock(sidecar.data_dir):
        started = time.monotonic()
        ids = [sidecar.start("model:generate", PAID) for _ in range(5)]
        errors = [a["error"] for a in answers(sidecar, ids)]
        waited = time.monotonic() - started
        for error in errors:
            assert (error["code"], error["data"]["type"]) == (-32009, "StorageError"), error
            assert error["data"]["path"] == str(sidecar.data_dir / DB)
            assert "locked" in error["data"]["reason"]
            assert error["data"]["retryable"] is True
        assert fake.requests == []  # nothing went upstream
        # A bounded wait: the first waits RESERVE_WAIT_S (5 s), the others not each as long.
        assert waited < 12, waited
        # A free call needs no reservation: it is served, its (zero) row journalled.
        assert "result" in sidecar.call("model:generate", FREE, timeout=30)
    assert "result" in sidecar.call("model:generate", PAID)
    wait_until(lambda: len(ledger_state(sidecar.data_dir)[0]) == 2, 20, "both rows")


def test_a_journal_left_by_a_killed_sidecar_is_settled_at_the_next_start(spawn: Spawn,
                                                                           fakes: dict[str, Any]) -> None:
    fakes["local-llm"].set_default(Reply("paid", usage=USAGE, delay_s=0.5))
    sidecar = spawn(paid_config(fakes))
    assert "result" in sidecar.call("model:usage")
    ids = [sidecar.start("model:generate", {**PAID, "request": {"prompt": "hi", "maxTokens": 500}})
           for _ in range(2)]
    fakes["local-llm"].wait_for_requests(2, timeout=20)  # reserved and upstream
    with exclusive_lock(sidecar.data_dir):
        assert all("result" in a for a in answers(sidecar, ids))
        spent = round(sidecar.result("model:usage")["daily"]["spentUsd"] * 1e6)
        sidecar.proc.send_signal(signal.SIGKILL)  # dies with both rows only in its journal
        sidecar.proc.wait(10)
    assert ledger_state(sidecar.data_dir)[0] == []
    again = spawn(data_dir=sidecar.data_dir)
    usage = again.result("model:usage")
    # The real cost of both answers, not their worst case (500 output tokens each).
    assert round(usage["daily"]["spentUsd"] * 1e6) == spent == 2 * CALL_MICROS
    assert usage["byProvider"]["local-llm"]["requests"] == 2 and usage["daily"]["reservedUsd"] == 0
    assert ledger_state(sidecar.data_dir) == ([("ok", CALL_MICROS)] * 2, 0)


# -- two sidecars on one data dir -------------------------------------------------------


def test_two_sidecars_on_one_data_dir_keep_the_limit(spawn: Spawn, fakes: dict[str, Any]) -> None:
    """Limit $0.20; each call reserves its worst case, $0.087 (67 prompt tokens at most and
    20 output tokens at $1000/1M), and the fake bills (35, 20) tokens: $0.055. However the
    two processes interleave, spent + reserved stays under the limit: two calls at once,
    three in all at most ($0.165)."""
    fake = fakes["local-llm"]
    fake.set_default(Reply("paid", usage=(35, 20), delay_s=2.0))
    params = {"request": {"prompt": "x" * 19, "maxTokens": 20}, "selection": ONLY_PAID}  # 19 bytes + 16 per message
    first = spawn(paid_config(fakes, daily=0.20))
    data_dir = first.data_dir
    ids_first = [first.start("model:generate", params) for _ in range(10)]
    fake.wait_for_requests(1, timeout=20)  # the first process's calls are in flight
    second = spawn(data_dir=data_dir)
    ids_second = [second.start("model:generate", params) for _ in range(10)]
    found = answers(first, ids_first) + answers(second, ids_second)
    assert internal_errors(found) == [], internal_errors(found)[:1]
    ok = [a for a in found if "result" in a]
    refused = [a for a in found if "error" in a]
    assert all(a["error"]["data"]["type"] == "BudgetExceededError" for a in refused), refused[:1]
    billed = len(fake.served) * 55_000
    assert len(ok) == len(fake.served) in (2, 3)
    assert billed <= 200_000
    for sidecar in (first, second):
        usage = sidecar.result("model:usage")
        assert round(usage["daily"]["spentUsd"] * 1e6) == billed
        assert usage["daily"]["reservedUsd"] == 0
    assert ledger_state(data_dir) == ([("ok", 55_000)] * len(ok), 0)


def test_a_dead_owners_reservation_is_charged_at_its_amount(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fake = fakes["local-llm"]
    fake.set_default(Reply("never delivered", usage=USAGE, delay_s=30))
    sidecar = spawn(paid_config(fakes))
    sidecar.start("model:generate", PAID)
    fake.wait_for_requests(1, timeout=20)
    db = sqlite3.connect(sidecar.data_dir / DB, timeout=10)
    ((reserved,),) = db.execute("SELECT amount_micros FROM reservations").fetchall()
    db.close()
    sidecar.proc.send_signal(signal.SIGKILL)
    sidecar.proc.wait(10)
    again = spawn(data_dir=sidecar.data_dir)
    usage = again.result("model:usage")
    assert round(usage["daily"]["spentUsd"] * 1e6) == reserved > 0  # the worst case, charged
    assert usage["daily"]["reservedUsd"] == 0
    assert ledger_state(sidecar.data_dir) == ([("abandoned", reserved)], 0)


# -- full and read-only disks -----------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at the end; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 4096)
            out.flush()
    return filler


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True, capture_output=True)


def test_a_disk_full_mid_call_loses_no_paid_answer(spawn: Spawn, fakes: dict[str, Any], small_fs: Path) -> None:
    fake = fakes["local-llm"]
    fake.set_default(Reply("paid for", usage=USAGE, delay_s=1.0))
    data_dir = small_fs / "data"
    sidecar = spawn(paid_config(fakes), data_dir=data_dir)
    assert "result" in sidecar.call("model:usage")
    ids = [sidecar.start(m, PAID) for m in ["model:generate", "model:stream"] * 4]
    fake.wait_for_requests(8, timeout=20)
    filler = fill(small_fs)
    found = answers(sidecar, ids)
    assert internal_errors(found) == [], internal_errors(found)[:1]
    assert all("result" in a for a in found), found[0]
    usage = sidecar.result("model:usage")
    assert round(usage["daily"]["spentUsd"] * 1e6) == 8 * CALL_MICROS and usage["daily"]["reservedUsd"] == 0
    # While the disk is full a new paid call cannot reserve: refused, not sent.
    error = sidecar.call("model:generate", PAID, timeout=30)["error"]
    assert error["data"]["type"] == "StorageError" and len(fake.requests) == 8
    filler.unlink()
    wait_until(lambda: ledger_state(data_dir) == ([("ok", CALL_MICROS)] * 8, 0), 20, "the rows once space is back")


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """``chattr +i``: every write to these files fails (EPERM), through descriptors already
    open too: the ledger turns read-only under a running sidecar. Root and ext4/xfs only."""
    made = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {made.stderr.decode(errors='replace')}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True, check=False)


def test_a_ledger_turned_read_only_mid_call_loses_no_paid_answer(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fake = fakes["local-llm"]
    fake.set_default(Reply("paid for", usage=USAGE, delay_s=1.0))
    sidecar = spawn(paid_config(fakes))
    assert "result" in sidecar.call("model:usage")
    ids = [sidecar.start(m, PAID) for m in ["model:generate", "model:stream"] * 4]
    fake.wait_for_requests(8, timeout=20)
    # Not the -shm: SQLite maps it into memory, and a store into an immutable mapping is
    # SIGBUS (as on a file system remounted read-only after an error), not a write error.
    with immutable([sidecar.data_dir / DB, sidecar.data_dir / f"{DB}-wal"]):
        found = answers(sidecar, ids)
        assert internal_errors(found) == [], internal_errors(found)[:1]
        assert all("result" in a for a in found), found[0]
        usage = sidecar.result("model:usage")
        assert round(usage["daily"]["spentUsd"] * 1e6) == 8 * CALL_MICROS and usage["daily"]["reservedUsd"] == 0
        assert sidecar.result("model:health")["ledger"]["pending"] == 8
        error = sidecar.call("model:generate", PAID, timeout=30)["error"]
        assert error["data"]["type"] == "StorageError" and len(fake.requests) == 8
    wait_until(lambda: ledger_state(sidecar.data_dir) == ([("ok", CALL_MICROS)] * 8, 0), 20,
               "the rows once the ledger is writable again")


def test_a_read_only_data_dir_at_start(spawn: Spawn, fakes: dict[str, Any], small_fs: Path) -> None:
    fakes["local-llm"].set_default(Reply("ok", usage=USAGE))
    data_dir = small_fs / "data"
    before = spawn(paid_config(fakes), data_dir=data_dir)
    assert "result" in before.call("model:generate", PAID)
    assert before.close() == 0
    remount(small_fs, "ro")
    sidecar = spawn(data_dir=data_dir)
    error = sidecar.call("model:generate", PAID)["error"]
    assert (error["code"], error["data"]["type"]) == (-32009, "StorageError"), error
    assert error["data"]["path"] == str(data_dir / DB) and error["data"]["reason"].startswith("readonly")
    assert len(fakes["local-llm"].requests) == 1  # the refused call went nowhere
    assert "result" in sidecar.call("model:generate", FREE)  # a free call is safe
    usage = sidecar.result("model:usage")
    assert round(usage["daily"]["spentUsd"] * 1e6) == CALL_MICROS  # the spend on disk still counts
    ledger = sidecar.result("model:health")["ledger"]
    assert ledger["status"] == "readonly" and ledger["problem"], ledger


def test_a_full_disk_at_start(spawn: Spawn, fakes: dict[str, Any], small_fs: Path) -> None:
    fakes["local-llm"].set_default(Reply("ok", usage=USAGE))
    data_dir = small_fs / "data"
    data_dir.mkdir()
    (data_dir / "config.json").write_text(__import__("json").dumps(paid_config(fakes)))
    fill(small_fs)
    sidecar = spawn(data_dir=data_dir)
    error = sidecar.call("model:generate", PAID)["error"]
    assert (error["code"], error["data"]["type"]) == (-32009, "StorageError"), error
    assert fakes["local-llm"].requests == []
    assert "result" in sidecar.call("model:generate", FREE)
    ledger = sidecar.result("model:health")["ledger"]
    assert ledger["status"] == "memory" and ledger["problem"].startswith("full"), ledger


def test_a_corrupt_ledger_moved_aside_is_shown_in_health(spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    data_dir = tmp_path / "corrupt"
    data_dir.mkdir()
    (data_dir / DB).write_bytes(b"not a database at all" * 200)
    sidecar = spawn(paid_config(fakes), data_dir=data_dir)
    ledger = sidecar.result("model:health")["ledger"]
    assert ledger["status"] == "persistent" and ledger["movedAside"], ledger
    assert Path(ledger["movedAside"]).read_bytes().startswith(b"not a database")
    assert "starts again from zero" in ledger["problem"]


def test_pid_of_a_live_sidecar_is_recorded_with_its_reservation(spawn: Spawn, fakes: dict[str, Any]) -> None:
    fake = fakes["local-llm"]
    fake.set_default(Reply("slow", usage=USAGE, delay_s=2))
    sidecar = spawn(paid_config(fakes))
    call = sidecar.start("model:generate", PAID)
    fake.wait_for_requests(1, timeout=20)
    db = sqlite3.connect(sidecar.data_dir / DB, timeout=10)
    ((pid, owner),) = db.execute("SELECT owner_pid, owner FROM reservations").fetchall()
    db.close()
    assert pid == sidecar.proc.pid and owner
    assert "result" in sidecar.response(call)


def test_paid_calls_are_refused_when_the_owner_lock_cannot_be_taken(spawn: Spawn, fakes: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    """Without its owner lock a sidecar would look dead to another one's sweep, which would
    charge its open reservations as abandoned: paid calls are refused, free ones served."""
    fakes["local-llm"].set_default(Reply("ok", usage=USAGE))
    data_dir = tmp_path / "nolock"
    data_dir.mkdir()
    (data_dir / "usage-journal").write_bytes(b"")  # a file where the lock directory belongs
    sidecar = spawn(paid_config(fakes), data_dir=data_dir)
    error = sidecar.call("model:generate", PAID)["error"]
    assert (error["code"], error["data"]["type"]) == (-32009, "StorageError"), error
    assert "cannot lock" in error["data"]["reason"]
    assert fakes["local-llm"].requests == []
    assert "result" in sidecar.call("model:generate", FREE)
    ledger = sidecar.result("model:health")["ledger"]
    assert ledger["status"] == "persistent" and "cannot lock" in ledger["problem"], ledger
    assert ledger_state(data_dir) == ([("ok", 0)], 0)
