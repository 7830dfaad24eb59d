"""What a sidecar that never sees a responseFormat or a tool must not load: the
structured-output modules (jsonschema, xmlschema, json_repair: ~15 MB and ~0.3 s), which
are imported on first use only; and never httpx's command-line tool (click, pygments,
rich), which httpx imports whenever those packages are installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("jsonschema", "xmlschema", "json_repair")


@pytest.mark.timeout(60)
def test_the_app_and_its_providers_load_without_the_structured_output_modules() -> None:
    code = ("import sys; import sidecar.app, sidecar.providers.openai, sidecar.providers.anthropic, "
            "sidecar.providers.ollama, sidecar.providers.aio_transport; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"loaded at start-up: {done.stdout.strip()}"


@pytest.mark.timeout(60)
def test_serving_modules_leave_out_httpx_command_line_tool() -> None:
    code = ("import json, sys, sidecar.app, httpx\n"
            "print(json.dumps([m for m in ('click', 'pygments', 'rich', 'httpx._main')"
            " if sys.modules.get(m) is not None]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []
