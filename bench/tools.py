"""Tool calls: recovery from scripted misbehaviours on the fakes, and forced calls on the real local model.

Part 1, the fakes: each provider's fake (openai, anthropic, ollama, and llama.cpp's
server as an OpenAI-compatible custom entry) answers a request that offers one tool
with ``toolChoice: "required"`` and ``maxToolRetries: 2`` with a scripted mix: a clean
call, bad arguments then a good call, an unknown tool then a good call, truncated
argument JSON then a good call, text instead of the required call then a good call, bad
arguments twice then a good call, and bad arguments every time. Each case runs as
``model:generate`` and as ``model:stream``. Reported per provider and mode: success
after retries, attempts used (``metadata.attempts``), upstream calls. Truncated JSON
cannot happen where the provider sends arguments as an object (Anthropic's non-streamed
``input``, Ollama): those cases are "n/a", not run.

Part 2, the real embedded model (SmolLM2-135M served by llama-cpp-python, needs the
``[local]`` extra): N prompts, each with one tool from a small set (strings with
bounds, enums, integers with bounds, a date pattern, nested objects), forced by name
and with ``"required"`` (which the compatible provider sends by name when there is one
tool), at temperature 0. Reported: valid on the first attempt, valid after retries,
failed, seconds per call.

    .venv/bin/python bench/tools.py [--no-local] [--repeat 1]

Writes ``bench/results-tools.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes import FakeServer, Reply  # noqa: E402
from tests.fakes.behaviours import FakeToolCall  # noqa: E402
from tests.stdio.harness import SidecarProcess  # noqa: E402

OUT = Path(__file__).resolve().parent / "results-tools.json"

WEATHER = {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "minLength": 1},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}},
}
GOOD = FakeToolCall("get_weather", {"city": "Paris", "unit": "celsius"})
BAD = FakeToolCall("get_weather", {"city": 5, "unit": "kelvin"})
#: (label, scripted answers in order, needs raw argument text). The first valid call ends the request.
CASES: list[tuple[str, list[Reply], bool]] = [
    ("clean", [Reply("", tool_calls=[GOOD])], False),
    ("bad arguments, then right", [Reply("", tool_calls=[BAD]), Reply("", tool_calls=[GOOD])], False),
    ("unknown tool, then right", [Reply("", tool_calls=[FakeToolCall("get_wether", {"city": "Paris", "unit": "celsius"})]),
                                  Reply("", tool_calls=[GOOD])], False),
    ("truncated JSON, then right", [Reply("", tool_calls=[FakeToolCall("get_weather", '{"city": "Par')]),
                                    Reply("", tool_calls=[GOOD])], True),
    ("no call when required, then right", [Reply("It is sunny in Paris."), Reply("", tool_calls=[GOOD])], False),
    ("bad arguments twice, then right", [Reply("", tool_calls=[BAD])] * 2 + [Reply("", tool_calls=[GOOD])], False),
    ("bad arguments every time", [Reply("", tool_calls=[BAD])] * 3, False),
]  # fmt: skip
KINDS = {"openai": "openai", "anthropic": "anthropic", "ollama": "ollama", "local-llm": "llamacpp"}


def raw_text_possible(provider: str, mode: str) -> bool:
    """Whether the provider's wire can carry argument text that is not JSON: OpenAI-style
    arguments are a string; Anthropic's streamed input comes as JSON text pieces; Ollama
    and Anthropic's non-streamed ``input`` are objects."""
    return provider in ("openai", "local-llm") or (provider == "anthropic" and mode == "stream")


def fake_config(name: str, url: str) -> dict[str, Any]:
    entry = {"baseURL": url, "apiKey": "sk-bench-0000000000000000"}
    providers: dict[str, Any] = {"ollama": {"baseURL": "http://127.0.0.1:9"}}
    if name in ("openai", "anthropic", "ollama"):
        providers[name] = entry
    else:
        providers["custom"] = {name: {**entry, "defaultModel": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
    return {"providers": providers, "defaultProvider": name, "fallbackChain": [name]}


def ask(sidecar: SidecarProcess, mode: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """One request as ``model:generate`` or ``model:stream``; the response message."""
    if mode == "generate":
        return sidecar.call("model:generate", params, timeout=timeout)
    request_id = sidecar.start("model:stream", params)
    return sidecar.response(request_id, timeout=timeout)


def run_case(sidecar: SidecarProcess, fake: FakeServer, name: str, mode: str, answers: list[Reply]) -> dict[str, Any]:
    fake.reset()
    fake.enqueue(*answers)
    response = ask(sidecar, mode, {
        "request": {"prompt": "What is the weather in Paris?", "tools": [WEATHER], "toolChoice": "required",
                    "maxToolRetries": 2}, "selection": {"provider": name}})
    ok = "result" in response
    data = response["result"]["metadata"] if ok else response["error"]["data"]
    valid = ok and bool(response["result"].get("toolCalls")) and response["result"]["toolCalls"][0]["arguments"] == \
        {"city": "Paris", "unit": "celsius"}
    return {"ok": valid, "attempts": len(data.get("attempts") or ()), "upstreamCalls": len(fake.requests),
            "error": None if ok else data["type"]}


def bench_fake(name: str, kind: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    with FakeServer(kind).start() as fake, tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(fake_config(name, fake.base_url)))
        sidecar = SidecarProcess(Path(tmp))
        for mode in ("generate", "stream"):
            cases: dict[str, Any] = {}
            for label, answers, raw in CASES:
                cases[label] = (run_case(sidecar, fake, name, mode, answers)
                                if not raw or raw_text_possible(name, mode) else "n/a")
            ran = [c for c in cases.values() if c != "n/a"]
            row[mode] = {"success": f"{sum(c['ok'] for c in ran)}/{len(ran)}",
                         "attempts": sum(c["attempts"] for c in ran),
                         "upstreamCalls": sum(c["upstreamCalls"] for c in ran), "cases": cases}
        sidecar.close()
    return row


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


#: Tools of the real-model part, and prompts for each.
LOCAL_TOOLS: list[tuple[dict[str, Any], list[str]]] = [
    ({"name": "get_weather", "description": "The current weather in a city.", "parameters": WEATHER["parameters"]},
     ["What is the weather in Paris, in celsius?", "Is it cold in Oslo right now? Use fahrenheit.",
      "Tell me the weather in Tokyo.", "Weather for Berlin please, celsius."]),
    ({"name": "read_file", "description": "Read a text file of the project.",
      "parameters": _obj(["path"], path={"type": "string", "minLength": 1, "maxLength": 80})},
     ["Show me the README.md file.", "Open docs/protocol.md.", "What is in pyproject.toml?",
      "Read the file scripts/setup.sh."]),
    ({"name": "search", "description": "Search the documentation.",
      "parameters": _obj(["query", "limit"], query={"type": "string", "minLength": 1, "maxLength": 60},
                         limit={"type": "integer", "minimum": 1, "maximum": 10})},
     ["Find the five best pages about rate limits.", "Search the docs for 'budget' and give me 3 results.",
      "Look up streaming cancellation.", "Search for tool calls, at most two results."]),
    ({"name": "create_event", "description": "Add an event to the calendar.",
      "parameters": _obj(["title", "date"], title={"type": "string", "minLength": 1, "maxLength": 60},
                         date={"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"})},
     ["Add 'Dentist' on 2026-03-14 to my calendar.", "Schedule the team lunch for 2027-01-05.",
      "Create an event called Release party on December 24th 2026.", "Put 'Pay rent' on the first of May 2026."]),
    ({"name": "send_message", "description": "Send a chat message to a person.",
      "parameters": _obj(["to", "message"], to=_obj(["name"], name={"type": "string", "minLength": 1, "maxLength": 40}),
                         message={"type": "string", "minLength": 1, "maxLength": 200},
                         urgent={"type": "boolean"})},
     ["Tell Alice the build is green.", "Send Bob an urgent message: the server is down.",
      "Message Carol that lunch is at noon.", "Let Dave know I will be late."]),
]  # fmt: skip


def local_call(sidecar: SidecarProcess, tool: dict[str, Any], prompt: str, choice: Any) -> dict[str, Any]:
    import jsonschema

    started = time.perf_counter()
    response = sidecar.call("model:generate", {"request": {
        "prompt": prompt, "tools": [tool], "toolChoice": choice, "maxTokens": 120, "temperature": 0,
        "maxToolRetries": 2}}, timeout=180)
    seconds = time.perf_counter() - started
    if "error" not in response:
        result = response["result"]
        calls = result.get("toolCalls") or []
        if len(calls) == 1 and calls[0]["name"] == tool["name"]:
            jsonschema.validate(calls[0]["arguments"], tool["parameters"])  # the sidecar's promise, checked again
            return {"ok": True, "attempts": len(result["metadata"]["attempts"]), "seconds": round(seconds, 2),
                    "arguments": calls[0]["arguments"]}
        return {"ok": False, "attempts": len(result["metadata"]["attempts"]), "seconds": round(seconds, 2),
                "error": "answered without the call"}
    data = response["error"]["data"]
    return {"ok": False, "attempts": len(data.get("attempts") or ()), "seconds": round(seconds, 2),
            "error": data["type"], "message": response["error"]["message"][:300]}


def bench_local(repeat: int) -> dict[str, Any]:
    from tests.support.local_server import local_server

    runs: list[dict[str, Any]] = []
    with local_server() as url, tempfile.TemporaryDirectory() as tmp:
        off = {"enabled": False}
        Path(tmp, "config.json").write_text(json.dumps({"providers": {
            "openai": off, "anthropic": off, "ollama": off, "custom": {"local-llm": {"baseURL": url}}}}))
        sidecar = SidecarProcess(Path(tmp))
        for _ in range(repeat):
            for tool, prompts in LOCAL_TOOLS:
                for prompt in prompts:
                    for label, choice in (("named", {"name": tool["name"]}), ("required", "required")):
                        runs.append({"tool": tool["name"], "prompt": prompt, "choice": label,
                                     **local_call(sidecar, tool, prompt, choice)})
        alive = "result" in sidecar.call("model:generate", {"request": {"prompt": "Say hi.", "maxTokens": 8}},
                                         timeout=60)
        sidecar.close()
    summary: dict[str, Any] = {}
    for label in ("named", "required"):
        mine = [r for r in runs if r["choice"] == label]
        summary[label] = {
            "prompts": len(mine), "valid": sum(r["ok"] for r in mine),
            "validFirstTry": sum(r["ok"] and r["attempts"] == 1 for r in mine),
            "retries": sum(r["attempts"] - 1 for r in mine if r["ok"]),
            "failed": sum(not r["ok"] for r in mine),
            "secondsPerCall": round(sum(r["seconds"] for r in mine) / max(1, len(mine)), 2)}
    return {"summary": summary, "serverAnswersAfterwards": alive, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-local", action="store_true", help="skip the real local model")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the real-model prompts")
    args = parser.parse_args()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "fakes": {}}
    for name, kind in KINDS.items():
        results["fakes"][name] = bench_fake(name, kind)
        for mode, row in results["fakes"][name].items():
            print(f"{name:<10} {mode:<9} success {row['success']:<6} attempts {row['attempts']:<3} "
                  f"upstream calls {row['upstreamCalls']}")
    if not args.no_local:
        results["local"] = bench_local(args.repeat)
        for label, row in results["local"]["summary"].items():
            print(f"local {label:<9} {row}")
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
