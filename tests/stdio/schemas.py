"""Validate every line the sidecar writes against the published ``schemas/``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMA_DIR / name).read_text()))


@cache
def _index() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMA_DIR / "index.json").read_text())
    return data


def assert_wire_valid(message: dict[str, Any], method: str | None = None) -> None:
    """Check the envelope, and the params/error data against their schema.

    Results are checked by callers that know which method they answer (``method``).
    """
    assert message.get("jsonrpc") == "2.0", message
    if "method" in message:
        assert "id" not in message
        entry = _index()["notifications"][message["method"]]
        validator(entry["params"]).validate(message["params"])
        return
    assert "id" in message
    assert ("result" in message) != ("error" in message), message
    if "error" in message:
        error = message["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str)
        validator("error.data.json").validate(error["data"])
    elif method is not None:
        validator(_index()["methods"][method]["result"]).validate(message["result"])
