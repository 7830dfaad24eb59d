"""Fixtures that spawn the sidecar as a subprocess, the way a host does."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stdio.harness import SidecarProcess
from tests.stdio.schemas import assert_wire_valid

# Fake keys used in stdio tests; any of them on stdout/stderr fails the test (they live in
# tests.support.keys, which the secret guard of tests/conftest.py watches for every test).
from tests.support.keys import ALL_KEYS, ANTHROPIC_KEY, CUSTOM_KEY, OPENAI_KEY

__all__ = ["ALL_KEYS", "ANTHROPIC_KEY", "CUSTOM_KEY", "OPENAI_KEY", "Spawn", "fake_config"]

Spawn = Callable[..., SidecarProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(config=None, env=None, args=())`` → a running sidecar; checked at teardown."""
    started: list[SidecarProcess] = []

    def _spawn(config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
               args: tuple[str, ...] = (), data_dir: Path | None = None) -> SidecarProcess:
        directory = data_dir or tmp_path / f"data{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (directory / "config.json").write_text(json.dumps(config))
        process = SidecarProcess(directory, env=env, args=args, secrets=ALL_KEYS)
        started.append(process)
        return process

    yield _spawn
    for process in started:
        if process.proc.poll() is None:
            code = process.close()
            assert code == 0, process.stderr.decode(errors="replace")[-3000:]
        process.assert_clean()
        for line in process.raw_lines:
            assert_wire_valid(json.loads(line))


@pytest.fixture
def fakes() -> Iterator[dict[str, Any]]:
    """One started fake server per wire protocol, keyed by provider name."""
    from tests.fakes import FakeServer

    servers = {
        "openai": FakeServer("openai", api_key=OPENAI_KEY).start(),
        "anthropic": FakeServer("anthropic", api_key=ANTHROPIC_KEY).start(),
        "ollama": FakeServer("ollama").start(),
        "local-llm": FakeServer("llamacpp", api_key=CUSTOM_KEY).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


FREE = {"inputPer1M": 0.0, "outputPer1M": 0.0}
FREE_OPENAI = "gpt-4o-mini"
FREE_ANTHROPIC = "claude-haiku-4-5"


def fake_config(fakes: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A config.json pointing every provider at its fake, with fast retries."""
    fast = {"rateLimit": {"maxRetries": 1}}
    config: dict[str, Any] = {
        "providers": {
            "openai": {"baseURL": fakes["openai"].base_url, "apiKey": OPENAI_KEY, **fast},
            "anthropic": {"baseURL": fakes["anthropic"].base_url, "apiKey": ANTHROPIC_KEY, **fast},
            "ollama": {"baseURL": fakes["ollama"].base_url, **fast},
            "custom": {
                "local-llm": {
                    "baseURL": fakes["local-llm"].base_url,
                    "apiKey": CUSTOM_KEY,
                    "defaultModel": "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "headers": {"X-Team": "desk"},
                    **fast,
                }
            },
        },
        "defaultProvider": "openai",
        "fallbackChain": ["anthropic", "ollama", "local-llm"],
        # The cloud fakes' default models priced at 0, like the local ones, so that
        # routing tests see the configured order. Billing at list price wherever a
        # model is served has its own tests (test_core_fixes.py).
        "modelOverrides": {f"openai/{FREE_OPENAI}": FREE, f"anthropic/{FREE_ANTHROPIC}": FREE},
    }
    config.update(top)
    return config
