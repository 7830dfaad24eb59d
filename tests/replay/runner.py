"""Stdio replay: transcripts of lines in and expected lines out, with placeholders.

A transcript (``*.jsonl``) starts with a setup line, then one line per message::

    {"setup": {"fakes": {"openai": "openai"}, "script": {"openai": [["Reply", {"text": "Hi"}]]},
               "config": {"providers": {"openai": {"baseURL": "{{fake:openai}}"}}}}}
    {">": {"jsonrpc": "2.0", "id": 1, "method": "model:generate", "params": {...}}}
    {"<": {"jsonrpc": "2.0", "id": 1, "result": {...}}}

``>`` lines are written to the sidecar's stdin (``>raw``: a string sent as bytes); a
``wait`` line (``{"wait": {"fake": NAME, "requests": N}}``) holds the transcript until that
fake has received N chat requests (a cancel sent once the request is upstream); each ``<`` line must match the next stdout
line exactly, except for placeholders: ``"<any>"``, ``"<string>"``, ``"<number>"``,
``"<int>"``. ``{{fake:NAME}}`` stands for that fake server's base URL, both ways.

Run one alone: ``python -m tests.replay tests/replay/generate.jsonl`` (``SIDECAR_CMD`` to
replay against another build, e.g. the frozen binary); ``--record`` rewrites the ``<``
lines from a live run, with the volatile fields replaced by placeholders.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from tests.fakes import CutStream, Error, FakeServer, FakeToolCall, Hang, MidStreamError, Raw, Reply
from tests.stdio.harness import SidecarProcess

BEHAVIOURS = {"Reply": Reply, "Error": Error, "CutStream": CutStream, "MidStreamError": MidStreamError,
              "Hang": Hang, "Raw": Raw}
PLACEHOLDERS = {"<any>", "<string>", "<number>", "<int>"}
#: Fields whose values change from run to run; ``--record`` writes placeholders for them.
VOLATILE = {"pid": "<int>", "version": "<string>", "latencyMs": "<number>", "timeToFirstTokenMs": "<number>",
            "latencyMsP50": "<number>", "errorRate": "<number>"}
_FAKE_REF = re.compile(r"\{\{fake:([\w-]+)\}\}")


def load(path: Path) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    setup = rows[0]["setup"]
    steps = [(next(iter(row)), next(iter(row.values()))) for row in rows[1:]]
    return setup, steps


def _substitute(value: Any, urls: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _FAKE_REF.sub(lambda m: urls[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _substitute(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, urls) for v in value]
    return value


def _unsubstitute(value: Any, urls: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, url in sorted(urls.items(), key=lambda item: -len(item[1])):
            value = value.replace(url, f"{{{{fake:{name}}}}}")
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", value)
    if isinstance(value, dict):
        return {k: VOLATILE.get(k, _unsubstitute(v, urls)) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsubstitute(v, urls) for v in value]
    return value


def match(expected: Any, actual: Any, path: str = "") -> None:
    """Raise AssertionError where ``actual`` departs from ``expected``."""
    if isinstance(expected, str) and expected in PLACEHOLDERS:
        ok = {
            "<any>": True,
            "<string>": isinstance(actual, str),
            "<number>": isinstance(actual, int | float) and not isinstance(actual, bool),
            "<int>": isinstance(actual, int) and not isinstance(actual, bool),
        }[expected]
        assert ok, f"{path or '/'}: {actual!r} is not {expected}"
        return
    if isinstance(expected, str) and "127.0.0.1:<port>" in expected and isinstance(actual, str):
        pattern = re.escape(expected).replace(re.escape("127.0.0.1:<port>"), r"127\.0\.0\.1:\d+")
        assert re.fullmatch(pattern, actual), f"{path}: {actual!r} != {expected!r}"
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(expected) == set(actual), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            match(expected[key], actual[key], f"{path}/{key}")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            match(e, a, f"{path}/{i}")
        return
    assert expected == actual and type(expected) is type(actual), f"{path}: {actual!r} != {expected!r}"


def _behaviour(kind: str, args: dict[str, Any]) -> Any:
    """A scripted behaviour; a Reply's ``tool_calls`` are FakeToolCall fields."""
    if "tool_calls" in args:
        args = {**args, "tool_calls": [FakeToolCall(**call) for call in args["tool_calls"]]}
    return BEHAVIOURS[kind](**args)


def replay(path: Path, *, record: bool = False) -> None:
    """Run one transcript; with ``record``, rewrite its ``<`` lines from this run."""
    setup, steps = load(path)
    fakes = {name: FakeServer(kind).start() for name, kind in setup.get("fakes", {}).items()}
    try:
        urls = {name: server.base_url for name, server in fakes.items()}
        for name, script in setup.get("script", {}).items():
            fakes[name].enqueue(*(_behaviour(kind, args) for kind, args in script))
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            if "config" in setup:
                (data_dir / "config.json").write_text(json.dumps(_substitute(setup["config"], urls)))
            sidecar = SidecarProcess(data_dir)
            rows: list[tuple[str, Any]] = []
            first_output = True
            for line_no, (direction, value) in enumerate(steps, start=2):
                if direction == ">raw":
                    sidecar.send_raw(value.encode("utf-8") + b"\n")
                    rows.append((direction, value))
                    continue
                if direction == ">":
                    sidecar.send(_substitute(value, urls))
                    rows.append((">", value))
                    continue
                if direction == "wait":
                    fakes[value["fake"]].wait_for_requests(value["requests"], timeout=10)
                    rows.append((direction, value))
                    continue
                actual = sidecar.ready if first_output else sidecar.next_message(timeout=20)
                first_output = False
                if record:
                    rows.append(("<", _unsubstitute(actual, urls)))
                else:
                    match(_substitute(value, urls), actual, f"{path.name}:{line_no}")
            code = sidecar.close()
            assert code == 0, sidecar.stderr.decode(errors="replace")[-2000:]
            extra = [m for m in iter(lambda: sidecar.messages.get(timeout=1), None)]
            assert extra == [], f"unexpected extra output: {extra}"
            if record:
                lines = [json.dumps({"setup": setup})] + [json.dumps({d: v}) for d, v in rows]
                path.write_text("\n".join(lines) + "\n")
    finally:
        for server in fakes.values():
            server.stop()
