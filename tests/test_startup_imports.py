"""What the sidecar loads to serve: not httpx's command-line tool (click, pygments, rich),
which httpx imports whenever those packages are installed."""

from __future__ import annotations

import json
import subprocess
import sys


def test_serving_modules_leave_out_httpx_command_line_tool() -> None:
    code = ("import json, sys, sidecar.app, httpx\n"
            "print(json.dumps([m for m in ('click', 'pygments', 'rich', 'httpx._main')"
            " if sys.modules.get(m) is not None]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []
