"""Shared pieces of the hardening tests: explicit configs, leak probes, memory readings.

Every config here names every provider it uses and disables the rest (the built-in
``openai``/``anthropic``/``ollama`` entries and the default ``local-llm`` custom entry),
so the tests never depend on the defaults.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.stdio.conftest import spawn  # the fixture, re-exported for this package
from tests.stdio.harness import SidecarProcess
from tests.support.keys import ANTHROPIC_KEY, CUSTOM_KEY, OPENAI_KEY

__all__ = [
    "ANTHROPIC_KEY",
    "CUSTOM_KEY",
    "OPENAI_KEY",
    "assert_no_leaks",
    "build_config",
    "busy_limiters",
    "debug_state",
    "entry",
    "idle_baseline",
    "rss_mb",
    "spawn",
]

if sys.platform == "win32":  # pragma: no cover - /proc, SIGKILL and SIGUSR1 are POSIX
    collect_ignore_glob = ["test_*.py"]

_OFF = {"enabled": False}
#: The default custom entry being added to the built-in config, written out in full so
#: the file validates whether or not the defaults carry it.
_LOCAL_LLM_OFF = {"baseURL": "http://127.0.0.1:8080/v1", "defaultModel": "off", "enabled": False}


def entry(base_url: str, *, model: str, key: str | None = None, retries: int = 0, timeout_ms: int | None = None,
          **extra: Any) -> dict[str, Any]:
    """One provider entry with few retries, so faults resolve fast."""
    out: dict[str, Any] = {"baseURL": base_url, "defaultModel": model, "rateLimit": {"maxRetries": retries},
                           **extra}
    if key is not None:
        out["apiKey"] = key
    if timeout_ms is not None:
        out["timeoutMs"] = timeout_ms
    return out


def build_config(providers: dict[str, dict[str, Any]], *, default: str, chain: list[str] | None = None,
                 **top: Any) -> dict[str, Any]:
    """A whole config.json: ``providers`` by name (built-in or custom), everything else off."""
    builtin = {name: providers.get(name, _OFF) for name in ("openai", "anthropic", "ollama")}
    custom = {"local-llm": _LOCAL_LLM_OFF}
    custom.update({name: value for name, value in providers.items() if name not in builtin})
    config: dict[str, Any] = {
        "providers": {**builtin, "custom": custom},
        "defaultProvider": default,
        "fallbackChain": chain if chain is not None else [name for name in providers if name != default],
    }
    config.update(top)
    return config


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def _debug_lines(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    out = []
    for line in bytes(sidecar.stderr).split(b"\n"):
        if b'"debug_state"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def idle_baseline(sidecar: SidecarProcess) -> dict[str, Any]:
    """The counts of a started sidecar once idle: the first call answered and the
    start-up refresh of local model lists (a background task) ended."""
    assert "result" in sidecar.call("model:usage")
    baseline = debug_state(sidecar)
    deadline = time.monotonic() + 5
    while baseline["tasks"] > 4 and time.monotonic() < deadline:
        time.sleep(0.05)
        baseline = debug_state(sidecar)
    return baseline


def debug_state(sidecar: SidecarProcess, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the sidecar for its counts (SIGUSR1 → one ``debug_state`` line on stderr).

    Only call it once the sidecar has answered a request: the handler is installed
    before the first line is read, and an earlier SIGUSR1 would kill the process.
    """
    before = len(_debug_lines(sidecar))
    sidecar.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _debug_lines(sidecar)
        if len(lines) > before:
            return lines[-1]
        time.sleep(0.02)
    raise AssertionError("no debug_state line on stderr")


def busy_limiters(sidecar: SidecarProcess) -> dict[str, dict[str, Any]]:
    """Rate limiters (per provider and per model) that still count a call in flight or queued."""
    busy = {}
    for name, health in sidecar.result("model:health")["providers"].items():
        limiters = {name: health.get("limiter") or {}}
        limiters.update({f"{name}/{model}": state for model, state in (health.get("modelLimiters") or {}).items()})
        busy.update({key: state for key, state in limiters.items() if state.get("inFlight") or state.get("queued")})
    return busy


def assert_no_leaks(sidecar: SidecarProcess, baseline: dict[str, Any], servers: list[Any],
                    *, keepalive: int = 0, timeout: float = 5.0, limiters: bool = True) -> dict[str, Any]:
    """Back to the idle baseline: no request, task, reservation or limiter permit left, and
    the fakes' connections closed.

    ``keepalive`` is how many idle pooled connections each fake may still hold (a
    connection that served a whole answer goes back to the pool; one that was cut,
    timed out or cancelled must be closed). ``limiters`` also asks ``model:health`` that
    no rate limiter still counts a call in flight or queued.
    """
    deadline = time.monotonic() + timeout
    state = debug_state(sidecar)
    while time.monotonic() < deadline:
        if (state["tasks"] <= baseline["tasks"] and state["in_flight"] == 0 and state["request_tasks"] == 0
                and state["open_reservations"] == 0):
            break
        time.sleep(0.1)
        state = debug_state(sidecar)
    assert state["in_flight"] == 0 and state["request_tasks"] == 0, state
    assert state["open_reservations"] == 0, state
    assert state["tasks"] <= baseline["tasks"], (state, baseline)
    for server in servers:
        remaining = max(0.5, deadline - time.monotonic())
        end = time.monotonic() + remaining
        while server.open_connections > keepalive and time.monotonic() < end:
            time.sleep(0.02)
        assert server.open_connections <= keepalive, f"{server}: {server.open_connections} connections open"
    if limiters:  # last: its probes leave one idle pooled connection per provider
        assert busy_limiters(sidecar) == {}
    return state


@pytest.fixture
def hardening_spawn(spawn: Any) -> Any:
    """``spawn`` with a warm-up: returns (sidecar, idle debug baseline)."""

    def _spawn(config: dict[str, Any], **kwargs: Any) -> tuple[SidecarProcess, dict[str, Any]]:
        sidecar = spawn(config, **kwargs)
        return sidecar, idle_baseline(sidecar)

    return _spawn
