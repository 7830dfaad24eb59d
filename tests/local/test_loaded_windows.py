"""The pure parts of the loaded-window logic: a server command line's window, the
``num_ctx`` Ollama is sent, and the time limits of an attempt."""

from __future__ import annotations

import pytest

from sidecar.core.tokens import context_window_for
from sidecar.local.embedded import CONTEXT, command
from sidecar.local.loaded import argv_context
from sidecar.providers.base import ProviderSettings
from sidecar.providers.timeouts import LOCAL_FIRST_TOKEN_S, timeouts


@pytest.mark.parametrize("argv, window", [
    (["llama-server", "-m", "x.gguf", "-c", "4096"], 4096),
    (["llama-server", "--ctx-size=2048"], 2048),
    (["python", "-m", "llama_cpp.server", "--n_ctx", "8192", "--port", "1"], 8192),
    (["llama-server", "-c"], None),  # no value
    (["llama-server", "-c", "{ctx}"], None),  # not a number
    (["llama-server", "--port", "8080"], None),
])
def test_the_window_of_a_command_line(argv: list[str], window: int | None) -> None:
    assert argv_context(argv) == window


def test_the_embedded_server_command_names_its_window() -> None:
    from pathlib import Path

    assert argv_context(command(Path("/m.gguf"), 1)) == CONTEXT


def test_num_ctx_keeps_the_running_window_and_respects_the_trained_one() -> None:
    assert context_window_for(100, 100) is None  # nothing known, fits Ollama's default
    assert context_window_for(100, 100, loaded=2048) == 2048  # no reload for a short request
    assert context_window_for(3000, 1000, loaded=2048) == 4096  # does not fit: grow
    assert context_window_for(9000, 1000, limit=8192) == 8192  # never past the trained window
    assert context_window_for(5000, 1000) == 8192


def test_timeouts_give_a_local_first_token_time_for_a_load() -> None:
    local = ProviderSettings("ollama", "ollama", "http://127.0.0.1:11434", "m", timeout_ms=5000, local=True)
    limits = timeouts(local)
    assert (limits.first, limits.silence, limits.whole) == (LOCAL_FIRST_TOKEN_S, 5.0, LOCAL_FIRST_TOKEN_S + 5.0)
    remote = ProviderSettings("openai", "openai", "https://api.openai.com/v1", "m", timeout_ms=5000)
    assert (timeouts(remote).first, timeouts(remote).whole) == (5.0, 5.0)
    configured = ProviderSettings("openai", "openai", "https://api.openai.com/v1", "m", timeout_ms=5000,
                                  first_token_timeout_ms=30_000)
    assert (timeouts(configured).first, timeouts(configured).whole) == (30.0, 35.0)
