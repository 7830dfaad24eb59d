"""Fixtures of the budget tests: a real ledger file in a tmp dir and an injected clock."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.budget import BudgetManager
from sidecar.store.ledger import Ledger
from sidecar.wire.config import BudgetConfig
from tests.stdio.harness import SidecarProcess, sidecar_command


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


def _strace() -> str:
    """The strace executable, or a skip (a failure in CI) saying why it cannot be used."""
    path = shutil.which("strace")
    problem = None
    if path is None:
        problem = "strace is not installed (apt-get install -y strace)"
    else:
        probe = subprocess.run([path, "-f", "-qq", "-e", "trace=fsync", "true"], capture_output=True, timeout=30)
        if probe.returncode != 0:
            problem = f"strace cannot trace here: {probe.stderr.decode(errors='replace')[-300:]}"
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(problem)
        pytest.skip(problem)
    assert path is not None
    return path


@pytest.fixture
def traced_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``start(config)`` → (sidecar under strace, trace log path); whole strings in the trace
    (several response lines can go out in one write)."""
    tracer = _strace()
    started: list[SidecarProcess] = []
    log = tmp_path / "strace.log"

    def start(config: dict[str, Any]) -> tuple[SidecarProcess, Path]:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "config.json").write_text(json.dumps(config))
        command = [tracer, "-f", "-qq", "-y", "-s", "1000000", "-o", str(log),
                   "-e", "trace=fsync,fdatasync,write,recvfrom", "--", *sidecar_command()]
        monkeypatch.setenv("SIDECAR_CMD", shlex.join(command))
        sidecar = SidecarProcess(data_dir)
        started.append(sidecar)
        return sidecar, log

    yield start
    for sidecar in started:
        assert sidecar.close() == 0, sidecar.stderr.decode(errors="replace")[-2000:]
        sidecar.assert_clean()
