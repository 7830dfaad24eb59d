"""Generate ``schemas/`` (JSON Schema 2020-12 of every IPC message) from the wire models.

``python -m sidecar.wire.schemas`` rewrites the folder; ``--check`` exits 1 when the
files on disk differ from what the models generate (the drift test runs the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from sidecar.wire.registry import ERROR_DATA, METHODS, NOTIFICATIONS

__all__ = ["generate_all", "main"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def _file_stem(name: str) -> str:
    return name.replace("$/", "").replace(":", ".")


def _schema(model: Any, mode: str, title: str, description: str) -> dict[str, Any]:
    schema: dict[str, Any] = model.model_json_schema(by_alias=True, mode=mode)
    return {"$schema": DIALECT, "$id": f"{title}.json", "title": title, "description": description, **{
        k: v for k, v in schema.items() if k not in ("title", "description")
    }}


def generate_all() -> dict[str, bytes]:
    """File name → bytes of every schema file."""
    files: dict[str, dict[str, Any]] = {}
    for method, (params, result) in METHODS.items():
        stem = _file_stem(method)
        files[f"{stem}.params.json"] = _schema(
            params, "validation", f"{stem}.params", f"Params of the {method} request."
        )
        files[f"{stem}.result.json"] = _schema(
            result, "serialization", f"{stem}.result", f"Result of the {method} request."
        )
    for method, (direction, params) in NOTIFICATIONS.items():
        stem = _file_stem(method)
        mode = "validation" if direction == "host→sidecar" else "serialization"
        files[f"{stem}.notification.json"] = _schema(
            params, mode, f"{stem}.notification", f"Params of the {method} notification ({direction})."
        )
    files["error.data.json"] = _schema(
        ERROR_DATA, "serialization", "error.data", "The data member of every JSON-RPC error the sidecar sends."
    )
    files["index.json"] = {
        "protocolVersion": 1,
        "methods": {m: {"params": f"{_file_stem(m)}.params.json", "result": f"{_file_stem(m)}.result.json"}
                    for m in METHODS},
        "notifications": {n: {"direction": d, "params": f"{_file_stem(n)}.notification.json"}
                          for n, (d, _) in NOTIFICATIONS.items()},
        "errorData": "error.data.json",
    }
    return {name: orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
            for name, doc in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if schemas/ is out of date")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    wanted = generate_all()
    existing = {p.name for p in args.dir.glob("*.json")} if args.dir.exists() else set()
    if args.check:
        stale = sorted(n for n, data in wanted.items()
                       if not (args.dir / n).exists() or (args.dir / n).read_bytes() != data)
        extra = sorted(existing - set(wanted))
        if stale or extra:
            sys.stderr.write(f"schemas out of date: {stale + extra}; run python -m sidecar.wire.schemas\n")
            return 1
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    for name in existing - set(wanted):
        (args.dir / name).unlink()
    for name, data in wanted.items():
        (args.dir / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
