"""Durable state of the sidecar: the usage ledger (``usage.sqlite3`` in the data dir)."""

from __future__ import annotations

from sidecar.store.ledger import (
    DB_NAME,
    OUTCOMES,
    SCHEMA_VERSION,
    Cap,
    Ledger,
    OpenReport,
    ReserveResult,
    SpendRow,
    UsageRecord,
)

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
