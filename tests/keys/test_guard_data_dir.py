"""The secret guard scans each spawned sidecar's data dir, not only its output.

A sidecar that keeps keys in the credential store may leave none in any file; one that
keeps them in config.json (no store) may hold them there only. The findings are taken
here with the guard's own scan, after the sidecar has exited, so that this session's
guard has nothing left to report afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.keys.secret_service import SecretService, secret_service
from tests.stdio.harness import SidecarProcess
from tests.support import secret_guard
from tests.support.keys import OPENAI_KEY

__all__ = ["secret_service"]  # the fixture, for this module's tests

pytestmark = pytest.mark.stdio


def run_and_plant(data_dir: Path, env: dict[str, str], planted: dict[str, str]) -> list[str]:
    """Start a sidecar, plant files holding OPENAI_KEY in its data dir, stop it: the findings."""
    data_dir.mkdir()
    sidecar = SidecarProcess(data_dir, env=env)
    try:
        assert "keyStorage" in sidecar.result("model:get-config")  # started and loaded
        for name, text in planted.items():
            (data_dir / name).write_text(text)
    finally:
        assert sidecar.close() == 0
    found = secret_guard._process_findings()
    for name in planted:
        (data_dir / name).unlink()
    return found


def test_keychain_mode_allows_no_key_in_any_file(secret_service: SecretService, tmp_path: Path) -> None:
    env = {**secret_service.env, "MODEL_SIDECAR_KEY_STORAGE": "auto"}
    config = json.dumps({"providers": {"openai": {"apiKey": OPENAI_KEY}}})
    found = run_and_plant(tmp_path / "data", env, {"config.json": config})
    assert [hit.split(" in ", 1)[1] for hit in found] == [f"{_label(found[0])} data dir file config.json"]


def test_file_mode_allows_keys_in_config_json_only(tmp_path: Path) -> None:
    config = json.dumps({"providers": {"openai": {"apiKey": OPENAI_KEY}}})
    found = run_and_plant(tmp_path / "data", {}, {"config.json": config, "notes.txt": OPENAI_KEY})
    assert [hit.split(" in ", 1)[1] for hit in found] == [f"{_label(found[0])} data dir file notes.txt"]


def _label(hit: str) -> str:
    """``sidecar pid N`` of a finding."""
    return hit.split(" in ", 1)[1].split(" data dir", 1)[0]
