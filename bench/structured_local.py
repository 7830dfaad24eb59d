"""Structured output on the real embedded model (SmolLM2-135M, llama-cpp-python server).

A fixed set of extraction tasks, each with its JSON Schema, goes through the sidecar as a
host sends it (``model:generate`` with ``responseFormat``, ``maxRetries`` 2, temperature
0 then the sidecar's retries with feedback). Reported per schema: success on the first
attempt, success after retries, failures with their cause, and the mechanism the
compatible provider ended up using (llama-cpp-python refuses the nested json_schema form
and takes the flat ``json_object`` + ``schema`` one, which it enforces with a grammar).

    .venv/bin/python bench/structured_local.py [--repeat 3]

Writes ``bench/results-structured-local.json``. Needs the ``[local]`` extra.
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

from tests.stdio.harness import SidecarProcess  # noqa: E402
from tests.support.local_server import local_server  # noqa: E402

OUT = Path(__file__).resolve().parent / "results-structured-local.json"

TASKS: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "Ada Lovelace was 36 years old. Give her name and age.", {
        "type": "object", "additionalProperties": False, "required": ["name", "age"],
        "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}}),
    ("sentiment enum", "Review: 'The battery died after a day, very disappointing.' Classify the sentiment.", {
        "type": "object", "additionalProperties": False, "required": ["sentiment"],
        "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}}}),
    ("tag list", "List three tags for an article about Rust async runtimes.", {
        "type": "object", "additionalProperties": False, "required": ["tags"],
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5}}}),
    ("nested address", "Alice lives at 12 Main Street, Springfield. Extract her name and address.", {
        "type": "object", "additionalProperties": False, "required": ["name", "address"],
        "properties": {"name": {"type": "string"}, "address": {
            "type": "object", "additionalProperties": False, "required": ["street", "city"],
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}}}),
    ("booleans and numbers", "A laptop costs 999.5 dollars and is in stock. Give price and availability.", {
        "type": "object", "additionalProperties": False, "required": ["price", "inStock"],
        "properties": {"price": {"type": "number"}, "inStock": {"type": "boolean"}}}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per task (temperature 0, then 0.7)")
    args = parser.parse_args()
    results: dict[str, Any] = {"model": "smollm2-135m-instruct (Q4_1, llama-cpp-python 0.3.36)",
                               "maxRetries": 2, "tasks": {}}
    with local_server() as url:
        with tempfile.TemporaryDirectory() as tmp:
            off = {"enabled": False}
            Path(tmp, "config.json").write_text(json.dumps({"providers": {
                "openai": off, "anthropic": off, "ollama": off, "custom": {"local-llm": {"baseURL": url}}}}))
            sidecar = SidecarProcess(Path(tmp))
            for label, prompt, schema in TASKS:
                outcome = {"runs": 0, "first_try": 0, "after_retries": 0, "failed": 0, "attempts": 0,
                           "causes": {}, "seconds": 0.0}
                for run in range(args.repeat):
                    started = time.perf_counter()
                    response = sidecar.call("model:generate", {
                        "request": {"prompt": prompt, "maxTokens": 120, "temperature": 0 if run == 0 else 0.7},
                        "selection": {"provider": "local-llm"},
                        "responseFormat": {"type": "json_schema", "schema": schema, "maxRetries": 2}},
                        timeout=300)
                    outcome["seconds"] += time.perf_counter() - started
                    outcome["runs"] += 1
                    if "result" in response:
                        attempts = response["result"]["metadata"]["attempts"]
                        outcome["attempts"] += len(attempts)
                        outcome["first_try" if len(attempts) == 1 else "after_retries"] += 1
                    else:
                        outcome["failed"] += 1
                        cause = response["error"]["data"].get("cause") or response["error"]["data"]["type"]
                        outcome["causes"][cause] = outcome["causes"].get(cause, 0) + 1
                outcome["seconds"] = round(outcome["seconds"], 1)
                results["tasks"][label] = outcome
                print(label, outcome, flush=True)
            sidecar.close()
    runs = sum(t["runs"] for t in results["tasks"].values())
    ok = sum(t["first_try"] + t["after_retries"] for t in results["tasks"].values())
    first = sum(t["first_try"] for t in results["tasks"].values())
    results["summary"] = {"runs": runs, "success_after_retries": round(ok / runs, 3),
                          "success_first_try": round(first / runs, 3)}
    results["mechanism"] = "response_format json_object + schema (grammar-constrained), after the nested form was refused"
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
