"""Tools and images through stdio, the checks before anything is sent: bad parts are
InvalidParams with their path, capabilities decide the candidates, and a model known to
lack one is a ValidationError with nothing uploaded."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.stdio.conftest import Spawn, fake_config
from tests.stdio.schemas import assert_wire_valid
from tests.support.images import png

pytestmark = pytest.mark.stdio

TOOL = {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                                            "required": ["path"]}}


def with_image(part: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {"request": {"prompt": "", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe the picture."}, {"type": "image", **part}]}], **request}}


def nothing_sent(fakes: dict[str, Any]) -> bool:
    return all(not server.requests for server in fakes.values())


def test_bad_images_and_tools_are_invalid_params_and_nothing_is_sent(spawn: Spawn, fakes: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    sidecar = spawn(fake_config(fakes))
    cases = [
        (with_image({"path": str(tmp_path / "missing.png")}), "/request/messages/0/content/1/path"),
        (with_image({"path": str(text)}), "/request/messages/0/content/1/path"),
        (with_image({"data": "%%%", "mediaType": "image/png"}), "/request/messages/0/content/1/data"),
        (with_image({"url": "ftp://example.com/a.png"}), "/request/messages/0/content/1/url"),
        (with_image({"path": "/x.png", "url": "https://example.com/a.png"}), "/request/messages/0/content/1"),
        ({"request": {"prompt": "hi", "tools": [TOOL, TOOL]}}, "/request/tools/1/name"),
        ({"request": {"prompt": "hi", "tools": [{**TOOL, "name": "has space"}]}}, "/request/tools/0/name"),
        ({"request": {"prompt": "hi", "tools": [{**TOOL, "parameters": {"type": "object", "required": 3}}]}},
         "/request/tools/0/parameters/required"),
        ({"request": {"prompt": "hi", "tools": [TOOL], "toolChoice": {"name": "nope"}}}, "/request/toolChoice/name"),
        ({"request": {"prompt": "", "messages": [{"role": "tool", "toolCallId": "c1", "content": "42"}]}},
         "/request/messages/0/toolCallId"),
    ]
    for params, path in cases:
        for method in ("model:generate", "model:stream"):
            response = sidecar.call(method, params)
            assert_wire_valid(response, method)
            error = response["error"]
            assert error["code"] == -32602, (params, error)
            assert path in [e["path"] for e in error["data"]["errors"]], (path, error["data"]["errors"])
    assert nothing_sent(fakes)
    assert sidecar.result("model:get-config", {})  # still serving


def test_a_model_known_to_lack_vision_is_refused_before_any_upload(spawn: Spawn, fakes: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    image = tmp_path / "shot.png"
    image.write_bytes(png(8, 8))
    sidecar = spawn(fake_config(fakes))
    params = with_image({"path": str(image)})
    params["selection"] = {"provider": "openai", "modelId": "gpt-3.5-turbo"}
    error = sidecar.call("model:generate", params)["error"]
    assert error["code"] == -32005 and error["data"]["type"] == "ValidationError"
    assert "lacks vision" in error["message"]
    assert nothing_sent(fakes)


def test_auto_selection_skips_models_without_the_capability_with_a_reason(spawn: Spawn,
                                                                          fakes: dict[str, Any]) -> None:
    config = fake_config(fakes)
    config["providers"]["openai"]["models"] = ["gpt-3.5-turbo"]
    sidecar = spawn(config)
    data = base64.b64encode(png()).decode()
    decision = sidecar.result("model:select", with_image({"data": data, "mediaType": "image/png"}))
    reasons = " | ".join(decision["reasons"])
    assert "openai/gpt-3.5-turbo: excluded, lacks vision" in reasons
    assert (decision["provider"], decision["modelId"]) != ("openai", "gpt-3.5-turbo")
    # A model nobody describes (the custom server's) stays a candidate: it is tried.
    assert any(c["provider"] == "local-llm" and not c.get("excluded") for c in decision["candidates"]), decision
    plain = sidecar.result("model:select", {"request": {"prompt": "Describe the picture."}})
    assert "lacks vision" not in " | ".join(plain["reasons"])


def test_an_ollama_model_that_reports_no_vision_is_refused_for_images(spawn: Spawn, fakes: dict[str, Any]) -> None:
    sidecar = spawn(fake_config(fakes))
    listed = {m["id"]: m for m in sidecar.result("model:list-models", {"provider": "ollama", "refresh": True})["models"]}
    assert "vision" not in listed["llama3.2:latest"]["capabilities"]
    assert "tools" in listed["llama3.2:latest"]["capabilities"]
    params = with_image({"data": base64.b64encode(png()).decode(), "mediaType": "image/png"})
    params["selection"] = {"provider": "ollama", "modelId": "llama3.2:latest"}
    error = sidecar.call("model:generate", params)["error"]
    assert error["code"] == -32005 and "lacks vision" in error["message"]
    assert not fakes["ollama"].requests
