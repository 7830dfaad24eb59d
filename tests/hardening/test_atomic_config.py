"""``config.json`` is replaced atomically: a process killed in the middle of writing it
leaves the old file or the new one, never a half-written one.

``MODEL_SIDECAR_FAULT=config-write-pause`` makes the config writer write half of the new
content to the file it is writing, then stop the whole process (SIGSTOP). The test waits
for the stop, kills the process with SIGKILL there, and reads what a restart would read.
The pause sits inside the write itself, so it holds for any way of writing the file: a
writer that truncates ``config.json`` in place is caught half-way.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.config import config_from_doc, merge_patch
from tests.hardening.conftest import build_config, entry
from tests.stdio.harness import SidecarProcess

pytestmark = [pytest.mark.stdio, pytest.mark.hardening, pytest.mark.timeout(60)]

MODEL = "m"
#: Big enough that half of it is clearly not a whole document.
PATCH: dict[str, Any] = {"formatTemplates": {f"t{i}": {"schema": {"type": "object", "description": "x" * 200}}
                                             for i in range(20)}}


def _state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``T`` when stopped, ``Z`` when a zombie)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _wait_stopped(sidecar: SidecarProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _state(sidecar.proc.pid) != "T":
        if sidecar.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("the writer never paused mid-write; stderr: "
                                 + sidecar.stderr[-1500:].decode(errors="replace"))
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_kill_mid_write_leaves_the_old_or_the_new_config_never_half(tmp_path: Path) -> None:
    old_doc = build_config({"fast": entry("http://127.0.0.1:9/v1", model=MODEL)}, default="fast")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old_doc))
    old = path.read_bytes()
    new_doc = merge_patch(old_doc, PATCH)

    sidecar = SidecarProcess(tmp_path, env={"MODEL_SIDECAR_FAULT": "config-write-pause"})
    try:
        sidecar.start("model:set-config", {"config": PATCH})
        _wait_stopped(sidecar)
        written = [p for p in tmp_path.iterdir() if p.name.startswith("config.json")]
        # Half of the new content is on disk in some file: the pause came mid-write.
        assert any(0 < p.stat().st_size and p.read_bytes() != old for p in written), written
        os.kill(sidecar.proc.pid, signal.SIGKILL)
        assert sidecar.proc.wait(10) == -signal.SIGKILL
    finally:
        sidecar.close()

    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError:
        pytest.fail(f"config.json was left half-written ({len(raw)} bytes): {raw[:80]!r}...")
    assert raw == old or doc == new_doc, "config.json is neither the old file nor the new one"
    config_from_doc(doc)

    # A restart reads it as it is, clears the interrupted temp file, and serves.
    again = SidecarProcess(tmp_path)
    try:
        stored = again.result("model:get-config")
        assert set(stored.get("formatTemplates") or {}) == set(doc.get("formatTemplates") or {})
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("config.json")) == ["config.json"]
    finally:
        assert again.close() == 0
    again.assert_clean()
