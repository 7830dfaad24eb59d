"""schemas/ is exactly what the wire models generate (run python -m sidecar.wire.schemas)."""

from __future__ import annotations

from pathlib import Path

from sidecar.wire.schemas import generate_all

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def test_schemas_have_not_drifted_from_the_models() -> None:
    wanted = generate_all()
    on_disk = {p.name: p.read_bytes() for p in SCHEMA_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(wanted), "schemas/ has missing or extra files"
    stale = [name for name, data in wanted.items() if on_disk[name] != data]
    assert stale == [], f"regenerate with `python -m sidecar.wire.schemas`: {stale}"


def test_params_schemas_refuse_unknown_fields() -> None:
    import json

    params = json.loads((SCHEMA_DIR / "model.generate.params.json").read_text())
    assert params["additionalProperties"] is False
    request = params["$defs"]["ModelRequest"]
    assert request["additionalProperties"] is False
    assert "prompt" in request["required"]
