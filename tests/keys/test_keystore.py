"""``sidecar.store.keys.KeyStore`` against a real Secret Service (GNOME Keyring on a private bus)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sidecar.store.keys import SERVICE, KeychainError, KeyStore, key_refs
from tests.keys.secret_service import SecretService, secret_service
from tests.support.keys import ANTHROPIC_KEY, CUSTOM_KEY, OPENAI_KEY

__all__ = ["secret_service"]  # the fixture, for this module's tests


@pytest.fixture
def on_bus(secret_service: SecretService, monkeypatch: pytest.MonkeyPatch) -> SecretService:
    """This process talks to the private bus (the Secret Service client reads the variable)."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", secret_service.address)
    return secret_service


def doc_with_keys() -> dict[str, object]:
    return {"providers": {"openai": {"apiKey": OPENAI_KEY, "enabled": True},
                          "anthropic": {"baseURL": "http://127.0.0.1:9/"},
                          "custom": {"lab": {"apiKey": CUSTOM_KEY, "defaultModel": "m"}}},
            "budget": {"dailyLimit": 1}}


def test_detect_finds_the_secret_service(on_bus: SecretService) -> None:
    store = KeyStore.detect()
    assert (store.storage, store.problem) == ("keychain", None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="elsewhere the user's own keychain would answer")
def test_detect_without_a_session_bus_falls_back_to_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent-run-dir")  # no default bus socket either
    store = KeyStore.detect()
    assert store.storage == "file"
    assert store.problem is not None and "credential store" in store.problem


def test_the_environment_switch_keeps_keys_in_the_file(on_bus: SecretService) -> None:
    store = KeyStore.from_env({"MODEL_SIDECAR_KEY_STORAGE": "file"})
    assert store.storage == "file"
    bus = {"DBUS_SESSION_BUS_ADDRESS": os.environ["DBUS_SESSION_BUS_ADDRESS"]}
    assert KeyStore.from_env({"MODEL_SIDECAR_KEY_STORAGE": "auto", **bus}).storage == "keychain"


def test_seal_moves_every_plain_key_and_open_reads_them_back(on_bus: SecretService) -> None:
    store = KeyStore.detect()
    doc = doc_with_keys()
    sealed, made = store.seal(doc)
    assert doc == doc_with_keys()  # the input is left alone
    entries = sealed["providers"]
    assert "apiKey" not in entries["openai"] and "apiKey" not in entries["custom"]["lab"]
    assert entries["openai"]["enabled"] is True and sealed["budget"] == {"dailyLimit": 1}
    refs = key_refs(sealed)
    assert refs == set(made) and len(refs) == 2
    assert {on_bus.lookup(ref) for ref in refs} == {OPENAI_KEY, CUSTOM_KEY}
    assert entries["openai"]["apiKeyRef"].startswith("openai ")
    # Read back by another store (a restart), nothing known beforehand.
    keys, problem = KeyStore.detect().open(sealed, {})
    assert problem is None
    assert keys == made
    store.forget(refs)
    assert all(on_bus.lookup(ref) is None for ref in refs)


def test_open_names_the_providers_whose_item_is_gone(on_bus: SecretService) -> None:
    store = KeyStore.detect()
    sealed, made = store.seal({"providers": {"anthropic": {"apiKey": ANTHROPIC_KEY}}})
    store.forget(made)
    keys, problem = store.open(sealed, {})
    assert keys == {}
    assert problem is not None and "anthropic" in problem and ANTHROPIC_KEY not in problem


def test_without_a_store_seal_keeps_plain_keys_and_drops_a_stale_ref() -> None:
    store = KeyStore(None, "no store here")
    sealed, made = store.seal({"providers": {"openai": {"apiKey": OPENAI_KEY, "apiKeyRef": "openai 00"}}})
    assert (sealed, made) == ({"providers": {"openai": {"apiKey": OPENAI_KEY}}}, {})
    keys, problem = store.open({"providers": {"openai": {"apiKeyRef": "openai 00"}}}, {})
    assert keys == {} and problem is not None and "openai" in problem


def test_a_store_item_is_the_service_and_account_a_user_sees(on_bus: SecretService) -> None:
    store = KeyStore.detect()
    ref = store.put("openai", OPENAI_KEY)
    assert on_bus.search()[ref] == OPENAI_KEY
    assert SERVICE == "model-sidecar"
    store.forget([ref])


def test_seal_deletes_the_items_it_made_when_a_later_write_fails(on_bus: SecretService) -> None:
    from keyring.backends.SecretService import Keyring

    class FailsOnLab(Keyring):  # the real Secret Service, refusing one account (fault injection)
        def set_password(self, service: str, username: str, password: str) -> None:
            if username.startswith("lab "):
                raise RuntimeError("the collection is locked")
            super().set_password(service, username, password)

    before = on_bus.search()
    store = KeyStore(FailsOnLab())
    with pytest.raises(KeychainError, match="locked") as caught:
        store.seal(doc_with_keys())
    assert OPENAI_KEY not in caught.value.reason and CUSTOM_KEY not in caught.value.reason
    assert on_bus.search() == before  # the openai item made first is gone again


def test_without_a_session_bus_keyring_is_not_even_imported() -> None:
    """Headless Linux: nothing could answer, so the credential store's client (~13 MB of
    memory) is never loaded; the file is used and the reason is given."""
    if sys.platform in ("darwin", "win32"):
        pytest.skip("the Secret Service is the store on Linux and the BSDs only")
    code = ("import sys; from sidecar.store.keys import KeyStore; s = KeyStore.from_env({}); "
            "print(s.storage, 'keyring' in sys.modules, s.problem)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    storage, imported, problem = out.stdout.strip().splitlines()[-1].split(" ", 2)
    assert (storage, imported) == ("file", "False")
    assert "DBUS_SESSION_BUS_ADDRESS" in problem
