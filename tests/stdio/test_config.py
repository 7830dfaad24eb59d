"""model:get-config / model:set-config through stdio: previews, merge patch, atomic writes."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.stdio.conftest import ANTHROPIC_KEY, OPENAI_KEY, Spawn
from tests.stdio.schemas import assert_wire_valid

pytestmark = pytest.mark.stdio


def stored(sidecar: Any) -> dict[str, Any]:
    return json.loads((sidecar.data_dir / "config.json").read_text())


def test_defaults_work_with_no_file(spawn: Spawn) -> None:
    sidecar = spawn()
    response = sidecar.call("model:get-config")
    assert_wire_valid(response, "model:get-config")
    config = response["result"]
    assert config["providers"]["ollama"]["baseURL"] == "http://127.0.0.1:11434"
    assert config["providers"]["openai"]["baseURL"] == "https://api.openai.com/v1"
    assert config["providers"]["anthropic"]["baseURL"] == "https://api.anthropic.com"
    assert "apiKey" not in config["providers"]["openai"]
    assert not (sidecar.data_dir / "config.json").exists()


def test_environment_keys_show_as_previews_only(spawn: Spawn) -> None:
    sidecar = spawn(env={"OPENAI_API_KEY": OPENAI_KEY, "OLLAMA_HOST": "0.0.0.0:11500"})
    config = sidecar.result("model:get-config")
    assert config["providers"]["openai"]["apiKey"] == "sk-\u2026" + OPENAI_KEY[-4:]
    assert config["providers"]["ollama"]["baseURL"] == "http://127.0.0.1:11500"


def test_set_config_patches_validates_and_writes_0600(spawn: Spawn) -> None:
    sidecar = spawn()
    patch = {"providers": {"anthropic": {"apiKey": ANTHROPIC_KEY},
                           "custom": {"lm-studio": {"baseURL": "http://127.0.0.1:1234/v1",
                                                    "defaultModel": "qwen2.5-coder"}}},
             "fallbackChain": ["lm-studio", "anthropic"], "budget": {"dailyLimit": 5}}
    response = sidecar.call("model:set-config", {"config": patch})
    assert_wire_valid(response, "model:set-config")
    result = response["result"]
    assert result["providers"]["anthropic"]["apiKey"] == "sk-\u2026" + ANTHROPIC_KEY[-4:]
    assert result["providers"]["custom"]["lm-studio"]["defaultModel"] == "qwen2.5-coder"
    assert result["budget"]["dailyLimit"] == 5
    path: Path = sidecar.data_dir / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored(sidecar)["providers"]["anthropic"]["apiKey"] == ANTHROPIC_KEY
    assert [p.name for p in sidecar.data_dir.glob("config.json*")] == ["config.json"]  # no temp file left
    # Sending the redacted preview back keeps the stored key.
    sidecar.result("model:set-config", {"config": {"providers": result["providers"]}})
    assert stored(sidecar)["providers"]["anthropic"]["apiKey"] == ANTHROPIC_KEY
    # null deletes (RFC 7386).
    after = sidecar.result("model:set-config", {"config": {"providers": {"anthropic": {"apiKey": None}},
                                                           "budget": None}})
    assert "apiKey" not in after["providers"]["anthropic"]
    assert "apiKey" not in stored(sidecar)["providers"]["anthropic"]
    assert "budget" not in stored(sidecar)


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"defaultProvider": "nope"}, "/config/defaultProvider"),
        ({"providers": {"openai": {"baseURL": "ftp://x"}}}, "/config/providers/openai/baseURL"),
        ({"providers": {"openai": {"timeoutMs": 5}}}, "/config/providers/openai/timeoutMs"),
        ({"budget": {"alertThreshold": 2}}, "/config/budget/alertThreshold"),
        ({"fallbackChain": ["openai", "ghost"]}, "/config/fallbackChain"),
        ({"providers": {"custom": {"x": {"baseURL": "http://127.0.0.1:1/v1"}}}},
         "/config/providers/custom/x/defaultModel"),
        ({"provdiers": {}}, "/config/provdiers"),
    ],
)
def test_bad_patches_change_nothing(spawn: Spawn, patch: dict[str, Any], path: str) -> None:
    sidecar = spawn({"budget": {"dailyLimit": 1}})
    before = (sidecar.data_dir / "config.json").read_bytes()
    response = sidecar.call("model:set-config", {"config": patch})
    assert response["error"]["data"]["type"] == "InvalidParams", response
    assert path in [e["path"] for e in response["error"]["data"]["errors"]]
    assert (sidecar.data_dir / "config.json").read_bytes() == before
    assert sidecar.result("model:get-config")["budget"]["dailyLimit"] == 1


def test_a_corrupt_config_file_does_not_stop_the_sidecar(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "broken"
    data_dir.mkdir()
    (data_dir / "config.json").write_text("{ not json")
    (data_dir / "config.json.tmp-999").write_text("half-written")
    sidecar = spawn(data_dir=data_dir)
    assert sidecar.result("model:get-config")["defaultProvider"] == "ollama"
    assert not (data_dir / "config.json.tmp-999").exists()
    sidecar.result("model:set-config", {"config": {"defaultProvider": "anthropic"}})
    assert json.loads((data_dir / "config.json").read_text()) == {"defaultProvider": "anthropic"}
    assert sidecar.close() == 0
    assert b"config_invalid" in bytes(sidecar.stderr)


def test_keys_never_leave_in_logs_at_debug_level(spawn: Spawn, fakes: dict[str, Any]) -> None:
    from tests.stdio.conftest import fake_config

    sidecar = spawn(fake_config(fakes), args=("--log-level", "debug"))
    sidecar.result("model:generate", {"request": {"prompt": "hi"}})
    sidecar.result("model:health")
    assert sidecar.close() == 0
    sidecar.assert_clean()  # scans stdout and stderr for every key in use
    assert b'"level":"debug"' in bytes(sidecar.stderr) or b"request" in bytes(sidecar.stderr)


def test_short_placeholder_keys_and_plain_headers_are_not_scrubbed_from_output(
    spawn: Spawn, fakes: dict[str, Any]
) -> None:
    from tests.fakes import FakeServer, Reply
    from tests.stdio.conftest import fake_config

    server = FakeServer("openai").start()  # takes any key, like Ollama's /v1
    fakes["extra"] = server  # stopped with the others
    config = fake_config(fakes)
    config["providers"]["custom"]["ollama-v1"] = {
        "baseURL": server.base_url, "apiKey": "ollama", "defaultModel": "ollama",
        "headers": {"X-Team": "desk", "X-Api-Key": "header-secret-0123456789"}}
    server.enqueue(Reply("The ollama desk model answers."))
    sidecar = spawn(config)
    result = sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": "ollama-v1"}})
    assert result["content"] == "The ollama desk model answers."
    assert result["metadata"]["provider"] == "ollama-v1"
    shown = sidecar.result("model:get-config")["providers"]["custom"]["ollama-v1"]
    assert shown["headers"] == {"X-Team": "desk", "X-Api-Key": "hea\u20266789"}
    # Sending the preview back keeps both header values as they were.
    sidecar.result("model:set-config", {"config": {"providers": {"custom": {"ollama-v1": shown}}}})
    stored_entry = stored(sidecar)["providers"]["custom"]["ollama-v1"]
    assert stored_entry["headers"] == {"X-Team": "desk", "X-Api-Key": "header-secret-0123456789"}
    assert stored_entry["apiKey"] == "ollama"
    assert server.requests[0].headers["x-api-key"] == "header-secret-0123456789"
    assert server.requests[0].headers["authorization"] == "Bearer ollama"
    assert b"header-secret-0123456789" not in b"\n".join(sidecar.raw_lines)


@pytest.mark.parametrize(
    ("entry", "path"),
    [({"headers": {"X-Name": "caf\u00e9"}}, "/config/providers/ollama/headers"),
     ({"headers": {"Bad Name": "x"}}, "/config/providers/ollama/headers"),
     ({"baseURL": "http://127.0.0.1:99999"}, "/config/providers/ollama/baseURL"),
     ({"baseURL": "http:///v1"}, "/config/providers/ollama/baseURL")],
)
def test_config_that_could_not_be_sent_is_refused(spawn: Spawn, entry: dict[str, Any], path: str) -> None:
    sidecar = spawn()
    response = sidecar.call("model:set-config", {"config": {"providers": {"ollama": entry}}})
    assert path in [e["path"] for e in response["error"]["data"]["errors"]], response


def test_a_cancelled_set_config_leaves_file_and_memory_in_agreement(spawn: Spawn) -> None:
    sidecar = spawn()
    big = {f"m{i}": "x" * 100 for i in range(50_000)}
    request_id = sidecar.start("model:set-config", {"config": {
        "providers": {"ollama": {"defaultModel": "after", "headers": big}}}})
    sidecar.cancel(request_id)
    sidecar.response(request_id, timeout=30)
    in_memory = sidecar.result("model:get-config")["providers"]["ollama"]["defaultModel"]
    path = sidecar.data_dir / "config.json"
    on_disk = stored(sidecar)["providers"]["ollama"]["defaultModel"] if path.exists() else "llama3.2"
    assert in_memory == on_disk
    assert [p.name for p in sidecar.data_dir.glob("config.json.*")] == []
