"""Fixtures of the budget tests: a real ledger file in a tmp dir and an injected clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.budget import BudgetManager
from sidecar.store.ledger import Ledger
from sidecar.wire.config import BudgetConfig


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def set(self, moment: datetime) -> None:
        self.moment = moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


class Alerts:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, payload: dict[str, Any]) -> None:
        self.sent.append(payload)

    def kinds(self) -> list[tuple[str, float]]:
        return [(a["period"], a["threshold"]) for a in self.sent]


class Config:
    """A mutable config source, read afresh by the manager on every call."""

    def __init__(self, **fields: Any) -> None:
        self.value = BudgetConfig(**fields)

    def __call__(self) -> BudgetConfig:
        return self.value

    def update(self, **fields: Any) -> None:
        self.value = self.value.model_copy(update=fields)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def manager_for(ledger: Ledger, clock: Clock, alerts: Alerts) -> Callable[..., tuple[BudgetManager, Config]]:
    def make(timezone: str | None = None, **fields: Any) -> tuple[BudgetManager, Config]:
        config = Config(**fields)
        return BudgetManager(ledger, config, now=clock, timezone=timezone, on_alert=alerts), config

    return make
