"""Structured output on the fake providers: mechanism per provider and success after retries.

Each provider's fake answers a fixed mix of scripted misbehaviours (fenced JSON, prose
around it, a trailing comma, a wrong type then a correct answer, a schema violation
twice then a correct answer, truncation, a model that never complies); the sidecar runs
as a host drives it, with maxRetries 2. Writes ``bench/results-structured.json``.

    .venv/bin/python bench/structured.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes import FakeServer, Reply  # noqa: E402
from tests.stdio.harness import SidecarProcess  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
GOOD = json.dumps({"name": "Ada", "age": 36})
#: (label, scripted answers in order) — the first valid answer ends the request.
CASES = [
    ("clean", [GOOD]),
    ("fenced", [f"```json\n{GOOD}\n```"]),
    ("prose around", [f"Sure, here it is: {GOOD} Anything else?"]),
    ("trailing comma", ['{"name": "Ada", "age": 36,}']),
    ("wrong type, then right", ['{"name": "Ada", "age": "36"}', GOOD]),
    ("missing field twice, then right", ['{"name": "Ada"}', '{"name": "Ada"}', GOOD]),
    ("truncated, then right", ['{"name": "Ad', GOOD]),
    ("never complies", ["I am unable to answer in JSON."] * 3),
]
KINDS = {"openai": "openai", "anthropic": "anthropic", "ollama": "ollama", "local-llm": "llamacpp"}


def main() -> int:
    results: dict[str, dict[str, object]] = {}
    for name, kind in KINDS.items():
        with FakeServer(kind).start() as fake, tempfile.TemporaryDirectory() as tmp:
            entry = {"baseURL": fake.base_url, "apiKey": "sk-bench-0000000000000000"}
            providers: dict[str, object] = {"ollama": {"baseURL": "http://127.0.0.1:9"}}
            if name in ("openai", "anthropic", "ollama"):
                providers[name] = entry
            else:
                providers["custom"] = {name: {**entry, "defaultModel": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
            Path(tmp, "config.json").write_text(json.dumps({"providers": providers, "defaultProvider": name,
                                                            "fallbackChain": [name]}))
            sidecar = SidecarProcess(Path(tmp))
            outcomes, mechanism, calls = {}, None, 0
            for label, answers in CASES:
                fake.reset()
                fake.enqueue(*(Reply(a) for a in answers))
                response = sidecar.call("model:generate", {
                    "request": {"prompt": "Extract: Ada, 36."}, "selection": {"provider": name},
                    "responseFormat": {"type": "json_schema", "schema": SCHEMA, "maxRetries": 2}})
                ok = "result" in response
                outcomes[label] = {"ok": ok, "upstreamCalls": len(fake.requests),
                                   "repaired": response["result"]["metadata"].get("repaired") if ok else None}
                calls += len(fake.requests)
                if ok:
                    mechanism = response["result"]["metadata"]["structuredMechanism"]
            sidecar.close()
            succeeded = sum(1 for o in outcomes.values() if o["ok"])
            results[name] = {"mechanism": mechanism, "successAfterRetries": f"{succeeded}/{len(CASES)}",
                             "recoverableRecovered": f"{succeeded}/{len(CASES) - 1}", "upstreamCalls": calls,
                             "cases": outcomes}
    out = REPO / "bench" / "results-structured.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name, row in results.items():
        print(f"{name:<10} {row['mechanism']:<32} {row['successAfterRetries']} ({row['upstreamCalls']} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
