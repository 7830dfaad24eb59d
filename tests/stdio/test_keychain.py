"""Keys in the OS credential store, through stdio, against a real Secret Service.

Each test runs the sidecar (or the frozen binary, with ``SIDECAR_CMD``) on a private
D-Bus session bus with an unlocked GNOME Keyring (:mod:`tests.keys.secret_service`), and
reads what it stored back with ``secret-tool``. The secret guard scans every spawned
sidecar's data dir after each test: with the keychain in use, no file may hold a key.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.keys.secret_service import SecretService, secret_service
from tests.stdio.conftest import ANTHROPIC_KEY, CUSTOM_KEY, OPENAI_KEY, Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid

__all__ = ["secret_service"]  # the fixture, for this module's tests

pytestmark = pytest.mark.stdio

PREVIEW = "sk-\u2026" + OPENAI_KEY[-4:]


def keychain_env(service: SecretService, **extra: str) -> dict[str, str]:
    return {**service.env, "MODEL_SIDECAR_KEY_STORAGE": "auto", **extra}


def stored(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "config.json").read_text())


def no_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without any apiKey."""
    config = json.loads(json.dumps(config))
    for entry in [*(config["providers"][n] for n in ("openai", "anthropic", "ollama")),
                  *config["providers"]["custom"].values()]:
        entry.pop("apiKey", None)
    return config


def assert_no_trace(data_dir: Path, *keys: str) -> None:
    """No file of the data dir holds a key, or the preview's tail next to an ellipsis."""
    for path in data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for key in keys:
                assert key.encode() not in data, path
            assert "\u2026".encode() not in data, f"{path} holds a key preview"


def openai_ref(data_dir: Path) -> str:
    entry = stored(data_dir)["providers"]["openai"]
    assert "apiKey" not in entry
    ref = entry["apiKeyRef"]
    assert isinstance(ref, str)
    return ref


def test_set_config_keeps_the_key_in_the_keychain_and_a_restart_reads_it(
        secret_service: SecretService, spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sidecar = spawn(no_keys(fake_config(fakes)), env=keychain_env(secret_service), data_dir=data_dir)
    response = sidecar.call("model:get-config")
    assert_wire_valid(response, "model:get-config")
    assert response["result"]["keyStorage"] == "keychain"
    result = sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})
    assert result["providers"]["openai"]["apiKey"] == PREVIEW
    assert result["keyStorage"] == "keychain"
    ref = openai_ref(data_dir)
    assert secret_service.lookup(ref) == OPENAI_KEY
    assert stat.S_IMODE((data_dir / "config.json").stat().st_mode) == 0o600
    assert_no_trace(data_dir, OPENAI_KEY)
    health = sidecar.result("model:health")
    assert (health["config"]["keyStorage"], health["config"].get("keyStorageProblem")) == ("keychain", None)
    assert sidecar.close() == 0

    again = spawn(env=keychain_env(secret_service), data_dir=data_dir)
    assert again.result("model:get-config")["providers"]["openai"]["apiKey"] == PREVIEW
    answer = again.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": "openai"}})
    assert answer["metadata"]["provider"] == "openai"
    assert fakes["openai"].requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"


def test_plain_keys_of_an_existing_file_move_to_the_keychain_at_start(
        secret_service: SecretService, spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sidecar = spawn(fake_config(fakes), env=keychain_env(secret_service), data_dir=data_dir)
    assert sidecar.result("model:get-config")["keyStorage"] == "keychain"  # answered once loaded
    doc = stored(data_dir)
    refs = {name: doc["providers"][name]["apiKeyRef"] for name in ("openai", "anthropic")}
    refs["local-llm"] = doc["providers"]["custom"]["local-llm"]["apiKeyRef"]
    assert {name: secret_service.lookup(ref) for name, ref in refs.items()} == {
        "openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY, "local-llm": CUSTOM_KEY}
    assert doc["providers"]["custom"]["local-llm"]["headers"] == {"X-Team": "desk"}  # the rest is kept
    assert_no_trace(data_dir, OPENAI_KEY, ANTHROPIC_KEY, CUSTOM_KEY)
    for provider in ("openai", "anthropic", "local-llm"):
        sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": provider}})
    assert fakes["openai"].requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert fakes["anthropic"].requests[-1].headers["x-api-key"] == ANTHROPIC_KEY
    assert fakes["local-llm"].requests[-1].headers["authorization"] == f"Bearer {CUSTOM_KEY}"


def test_a_new_key_replaces_the_item_and_null_deletes_it(
        secret_service: SecretService, spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sidecar = spawn(no_keys(fake_config(fakes)), env=keychain_env(secret_service), data_dir=data_dir)
    sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": ANTHROPIC_KEY}}}})
    first = openai_ref(data_dir)
    view = sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})
    second = openai_ref(data_dir)
    assert second != first
    assert (secret_service.lookup(first), secret_service.lookup(second)) == (None, OPENAI_KEY)
    # The whole view sent back (previews, keyStorage) keeps the key and its item.
    sidecar.result("model:set-config", {"config": view})
    assert openai_ref(data_dir) == second
    after = sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": None}}}})
    assert "apiKey" not in after["providers"]["openai"]
    assert "apiKeyRef" not in stored(data_dir)["providers"]["openai"]
    assert secret_service.lookup(second) is None
    assert second not in secret_service.search()


def test_environment_keys_are_never_copied_into_storage(
        secret_service: SecretService, spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    before = secret_service.search()
    sidecar = spawn(env=keychain_env(secret_service, OPENAI_API_KEY=OPENAI_KEY), data_dir=data_dir)
    view = sidecar.result("model:get-config")
    assert view["providers"]["openai"]["apiKey"] == PREVIEW
    sidecar.result("model:set-config", {"config": view})  # everything sent back, the preview too
    assert "apiKey" not in stored(data_dir)["providers"]["openai"]
    assert "apiKeyRef" not in stored(data_dir)["providers"]["openai"]
    assert secret_service.search() == before
    assert_no_trace(data_dir, OPENAI_KEY)


def test_a_session_key_is_used_and_never_written(
        secret_service: SecretService, spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    from tests.fakes import FakeServer

    data_dir = tmp_path / "data"
    with FakeServer("openai", api_key=CUSTOM_KEY).start() as server:
        config = no_keys(fake_config(fakes))
        config["providers"]["openai"]["baseURL"] = server.base_url
        sidecar = spawn(config, env=keychain_env(secret_service), data_dir=data_dir)
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})
        items = secret_service.search()
        view = sidecar.result("model:set-config", {"config": {"providers": {"openai": {"sessionApiKey": CUSTOM_KEY}}}})
        assert view["providers"]["openai"]["apiKey"].endswith("\u2026" + CUSTOM_KEY[-4:])  # the key in use
        sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": "openai"}})
        assert server.requests[-1].headers["authorization"] == f"Bearer {CUSTOM_KEY}"
        assert secret_service.search() == items
        assert_no_trace(data_dir, CUSTOM_KEY)
        # null ends the session key: the stored key is used again.
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"sessionApiKey": None}}}})
        assert sidecar.result("model:get-config")["providers"]["openai"]["apiKey"] == PREVIEW
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"sessionApiKey": CUSTOM_KEY}}}})
        assert sidecar.close() == 0
        again = spawn(env=keychain_env(secret_service), data_dir=data_dir)
        assert again.result("model:get-config")["providers"]["openai"]["apiKey"] == PREVIEW


def test_a_session_key_for_no_entry_is_refused(secret_service: SecretService, spawn: Spawn) -> None:
    sidecar = spawn(env=keychain_env(secret_service))
    response = sidecar.call("model:set-config", {"config": {"providers": {"custom": {
        "nowhere": {"sessionApiKey": OPENAI_KEY}}}}})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"][0]["path"] == "/config/providers/custom/nowhere/sessionApiKey"
    response = sidecar.call("model:set-config", {"config": {"providers": {"openai": {"apiKeyRef": "x"}}}})
    assert response["error"]["data"]["errors"][0]["path"] == "/config/providers/openai/apiKeyRef"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="elsewhere the user's own keychain would answer")
def test_without_a_secret_service_keys_stay_in_the_file_and_that_is_reported(
        spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # The harness never passes a bus on; with none the Secret Service cannot be reached.
    sidecar = spawn(env={"MODEL_SIDECAR_KEY_STORAGE": "auto"}, data_dir=data_dir)
    view = sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})
    assert view["keyStorage"] == "file"
    health = sidecar.result("model:health")["config"]
    assert health["keyStorage"] == "file"
    assert "credential store" in health["keyStorageProblem"]
    assert stored(data_dir)["providers"]["openai"]["apiKey"] == OPENAI_KEY
    assert stat.S_IMODE((data_dir / "config.json").stat().st_mode) == 0o600


def test_a_keychain_that_fails_at_write_time_changes_nothing(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    service = SecretService()  # this test's own: it is stopped half way
    try:
        sidecar = spawn(env=keychain_env(service), data_dir=data_dir)
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})
        before = (data_dir / "config.json").read_bytes()
        service.close()  # the keyring daemon and the bus are gone
        response = sidecar.call("model:set-config", {"config": {
            "providers": {"anthropic": {"apiKey": ANTHROPIC_KEY}}, "budget": {"dailyLimit": 3}}}, timeout=40)
        assert response["error"]["code"] == -32009, response
        assert "credential store" in response["error"]["data"]["reason"]
        assert (data_dir / "config.json").read_bytes() == before
        assert [p.name for p in data_dir.glob("config.json*")] == ["config.json"]
        view = sidecar.result("model:get-config")  # still serving, the old config in use
        assert view["providers"]["openai"]["apiKey"] == PREVIEW
        assert "dailyLimit" not in view["budget"]
    finally:
        service.close()


def test_the_harness_never_passes_the_user_bus_on(
        secret_service: SecretService, spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the test run had a desktop session's bus: the harness drops it, so tests never
    # touch the user's own keyring (only a bus a test passes explicitly is used).
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", secret_service.address)
    before = secret_service.search()
    sidecar = spawn(env={"MODEL_SIDECAR_KEY_STORAGE": "auto"})
    assert sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})[
        "keyStorage"] == "file"
    assert secret_service.search() == before


def test_a_session_key_that_could_not_be_sent_is_refused(secret_service: SecretService, spawn: Spawn) -> None:
    sidecar = spawn(env=keychain_env(secret_service))
    for bad in ("sk-with\u00e9accent", 42):
        response = sidecar.call("model:set-config", {"config": {"providers": {"openai": {"sessionApiKey": bad}}}})
        assert response["error"]["code"] == -32602
        error = response["error"]["data"]["errors"][0]
        assert error["path"] == "/config/providers/openai/sessionApiKey"
        assert "sessionApiKey" in error["message"]
    assert "apiKey" not in sidecar.result("model:get-config")["providers"]["openai"]


def test_a_stored_key_whose_item_is_gone_is_reported_not_hidden(
        secret_service: SecretService, spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sidecar = spawn(no_keys(fake_config(fakes)), env=keychain_env(secret_service), data_dir=data_dir)
    sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": OPENAI_KEY}}}})
    assert sidecar.close() == 0
    secret_service.clear(openai_ref(data_dir))  # deleted by hand (Passwords and Keys, secret-tool)
    again = spawn(env=keychain_env(secret_service), data_dir=data_dir)
    health = again.result("model:health")
    assert health["config"]["keyStorage"] == "keychain"
    assert "openai" in health["config"]["keyStorageProblem"]
    assert health["providers"]["openai"]["lastError"] == "no API key configured"
    assert "apiKey" not in again.result("model:get-config")["providers"]["openai"]


def test_keys_that_cannot_be_moved_at_start_stay_usable_and_are_reported(
        secret_service: SecretService, spawn: Spawn, fakes: dict[str, Any], tmp_path: Path) -> None:
    import shutil
    import subprocess

    data_dir = tmp_path / "data"
    first = spawn(no_keys(fake_config(fakes)), env=keychain_env(secret_service), data_dir=data_dir)
    assert first.result("model:get-config")["keyStorage"] == "keychain"
    assert first.close() == 0  # the ledger and the lock file exist now
    (data_dir / "config.json").write_text(json.dumps(fake_config(fakes)))
    before = (data_dir / "config.json").read_bytes(), secret_service.search()
    # An immutable data dir: no file can be created in it, so config.json cannot be replaced.
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(data_dir)]).returncode != 0:
        pytest.skip("chattr +i is not possible here")
    try:
        sidecar = spawn(env=keychain_env(secret_service), data_dir=data_dir)
        health = sidecar.result("model:health")["config"]
        assert health["keyStorage"] == "keychain"
        assert "could not be moved" in health["keyStorageProblem"]
        assert ((data_dir / "config.json").read_bytes(), secret_service.search()) == before  # no item left
        sidecar.result("model:generate", {"request": {"prompt": "hi"}, "selection": {"provider": "openai"}})
        assert fakes["openai"].requests[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert sidecar.close() == 0
    finally:
        subprocess.run(["chattr", "-i", str(data_dir)], check=True)
        (data_dir / "config.json").unlink()  # the plain keys this test put there
