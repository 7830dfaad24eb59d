"""Durable state of the sidecar: the usage ledger (``usage.sqlite3`` in the data dir) and
the per-process journal of usage it could not take yet (``usage-journal/``)."""

from __future__ import annotations

from sidecar.store.ledger import (
    ABANDONED,
    DB_NAME,
    OUTCOMES,
    SCHEMA_VERSION,
    Cap,
    Ledger,
    LedgerStatus,
    LedgerWriteError,
    OpenReport,
    ReserveResult,
    SpendRow,
    UsageRecord,
)

__all__ = [
    "ABANDONED",
    "DB_NAME",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "Cap",
    "Ledger",
    "LedgerStatus",
    "LedgerWriteError",
    "OpenReport",
    "ReserveResult",
    "SpendRow",
    "UsageRecord",
]
