"""config.json and model:set-config under attack, through stdio as a host drives them.

A bad value is refused with InvalidParams naming the field and changes nothing; whatever
the file holds, the sidecar starts (what does not load is ignored and reported in
``model:health``'s ``config``); secrets in keys, headers and URLs never leave; two
sidecars sharing a data dir merge their writes under a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeServer, Reply
from tests.fakes.server import refusing_port
from tests.hardening.conftest import ANTHROPIC_KEY, build_config, entry
from tests.stdio.conftest import Spawn
from tests.stdio.harness import SidecarProcess

pytestmark = [pytest.mark.stdio, pytest.mark.hardening]

OLLAMA_URL = "/config/providers/ollama/baseURL"
MODEL = "gpt-4o-mini"

BAD_URLS = {
    "newline": "http://127.0.0.1:9/v1\n",
    "crlf": "http://127.0.0.1:9/v1\r\n",
    "tab": "http://127.0.0.1:9/v\t1",
    "nul": "http://127.0.0.1:9/v1\x00",
    "del": "http://127.0.0.1:9/v1\x7f",
    "vtab": "http://127.0.0.1:9/v1\x0b",
    "formfeed": "http://127.0.0.1:9/v1\x0c",
    "line-separator-in-host": "http://127.0.0.1\u2028:9/v1",
    "path-over-64KiB": "http://127.0.0.1:9/" + "a" * 70_000,
    "query": "http://127.0.0.1:9/v1?api-version=1",
}


def config_bytes(sidecar: SidecarProcess) -> bytes:
    return (sidecar.data_dir / "config.json").read_bytes()


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("config.json.tmp-*"))


def error_type(response: dict[str, Any]) -> str | None:
    return response.get("error", {}).get("data", {}).get("type")


def error_paths(response: dict[str, Any]) -> list[str]:
    return [e["path"] for e in response["error"]["data"]["errors"]]


def restart(sidecar: SidecarProcess, spawn: Spawn) -> SidecarProcess:
    """Stop ``sidecar`` (it must exit 0) and start another on the same data dir."""
    assert sidecar.close() == 0, sidecar.stderr.decode(errors="replace")[-2000:]
    return spawn(data_dir=sidecar.data_dir)


# -- 1. baseURL -------------------------------------------------------------------------


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_bad_base_url_is_refused_and_changes_nothing(spawn: Spawn, url: str) -> None:
    sidecar = spawn({"budget": {"dailyLimit": 1}})
    before = config_bytes(sidecar)
    response = sidecar.call("model:set-config", {"config": {"providers": {"ollama": {"baseURL": url}}}})
    assert error_type(response) == "InvalidParams", response
    assert OLLAMA_URL in error_paths(response)
    assert config_bytes(sidecar) == before
    assert "result" in sidecar.call("model:health", timeout=30)
    again = restart(sidecar, spawn)
    assert again.result("model:get-config")["budget"]["dailyLimit"] == 1


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_a_file_with_a_bad_base_url_still_starts_with_the_rest(spawn: Spawn, url: str) -> None:
    sidecar = spawn({"providers": {"ollama": {"baseURL": url}, "anthropic": {"apiKey": ANTHROPIC_KEY}},
                     "budget": {"dailyLimit": 2}})
    config = sidecar.result("model:get-config", timeout=30)
    assert config["providers"]["ollama"]["baseURL"] == "http://127.0.0.1:11434"
    assert config["providers"]["anthropic"]["apiKey"] == "sk-\u2026" + ANTHROPIC_KEY[-4:]
    assert config["budget"]["dailyLimit"] == 2
    status = sidecar.result("model:health", timeout=30)["config"]
    assert status["status"] == "partial"
    assert [item["path"] for item in status["ignored"]] == ["/providers/ollama/baseURL"]
    assert b"config_invalid" in bytes(sidecar.stderr)


# -- 2. keys, headers, passwords ------------------------------------------------------


def test_a_pasted_key_is_trimmed_and_works(spawn: Spawn) -> None:
    key = "sk-test-PASTED0123456789abcdef"
    with FakeServer("openai", api_key=key) as server:
        sidecar = spawn(build_config({"openai": entry(server.base_url, model=MODEL)}, default="openai"))
        sidecar.secrets.append(key)
        result = sidecar.result("model:set-config", {"config": {"providers": {"openai": {"apiKey": f" {key}\n"}}}})
        assert result["providers"]["openai"]["apiKey"] == "sk-\u2026" + key[-4:]
        server.enqueue(Reply("pasted key accepted"))
        answer = sidecar.result("model:generate", {"request": {"prompt": "hi"}})
        assert answer["content"] == "pasted key accepted"
        assert server.requests[0].headers["authorization"] == f"Bearer {key}"
        stored = json.loads(config_bytes(sidecar))
        assert stored["providers"]["openai"]["apiKey"] == key


def test_environment_keys_are_trimmed_or_ignored(spawn: Spawn) -> None:
    key = "sk-test-ENVPASTED0123456789abcdef"
    with FakeServer("openai", api_key=key) as server:
        config = build_config({"openai": entry(server.base_url, model=MODEL)}, default="openai")
        sidecar = spawn(config, env={"OPENAI_API_KEY": f"{key}\n", "ANTHROPIC_API_KEY": key + "\r\nX-Injected: 1"})
        sidecar.secrets.append(key)
        server.enqueue(Reply("env key trimmed"))
        assert sidecar.result("model:generate", {"request": {"prompt": "hi"}})["content"] == "env key trimmed"
        assert "apiKey" not in sidecar.result("model:get-config")["providers"]["anthropic"]
        assert b"environment_key_ignored" in bytes(sidecar.stderr)


@pytest.mark.parametrize("suffix", ["\r\nX-Injected: 1", "\x00tail", "\x7f", "\u2028x", "caf\u00e9"])
def test_a_key_with_inner_control_characters_is_refused_without_echo(spawn: Spawn, suffix: str) -> None:
    sidecar = spawn({"budget": {"dailyLimit": 1}})
    before = config_bytes(sidecar)
    secret = "sk-test-SECRET1234567890"
    response = sidecar.call("model:set-config", {"config": {"providers": {"openai": {"apiKey": secret + suffix}}}})
    assert error_type(response) == "InvalidParams", response
    assert "/config/providers/openai/apiKey" in error_paths(response)
    assert config_bytes(sidecar) == before
    assert sidecar.close() == 0
    assert b"SECRET1234567890" not in b"\n".join(sidecar.raw_lines)
    assert b"SECRET1234567890" not in bytes(sidecar.stderr)


@pytest.mark.parametrize("headers", [
    {"Content-Length": "5"}, {"content-length": "0"}, {"Transfer-Encoding": "chunked"}, {"Host": "evil"},
    {"Connection": "close"}, {"Upgrade": "h2c"}, {"X-Team": "a\r\nX-Injected: 1"}, {"X-Team": "a\nb"},
    {"X-Team": "a\x00"}, {"X-Team": "v" * 10_000}, {"X-A": "1", "x-a": "2"},
])
def test_headers_that_could_not_be_sent_are_refused(spawn: Spawn, headers: dict[str, str]) -> None:
    sidecar = spawn({"budget": {"dailyLimit": 1}})
    before = config_bytes(sidecar)
    response = sidecar.call("model:set-config", {"config": {"providers": {"ollama": {"headers": headers}}}})
    assert error_type(response) == "InvalidParams", response
    assert "/config/providers/ollama/headers" in error_paths(response)
    assert config_bytes(sidecar) == before
    assert "result" in sidecar.call("model:health", timeout=30)


def test_header_values_are_trimmed_like_keys(spawn: Spawn) -> None:
    with FakeServer("openai") as server:
        sidecar = spawn(build_config({"openai": entry(server.base_url, model=MODEL, key="sk-x-0123456789abcdef")},
                                     default="openai"))
        sidecar.secrets.append("sk-x-0123456789abcdef")
        sidecar.result("model:set-config", {"config": {"providers": {"openai": {"headers": {"X-Team": " desk\n"}}}}})
        server.enqueue(Reply("trimmed"))
        assert sidecar.result("model:generate", {"request": {"prompt": "hi"}})["content"] == "trimmed"
        assert server.requests[0].headers["x-team"] == "desk"


@pytest.mark.parametrize("password", ["hunter2-correct-horse-battery", "pw"])
def test_a_password_in_base_url_never_leaves(spawn: Spawn, password: str) -> None:
    with refusing_port() as port:
        url = f"http://user:{password}@127.0.0.1:{port}/v1"
        shown_url = f"http://user:{'hun…tery' if len(password) > 12 else '…'}@127.0.0.1:{port}/v1"
        config = build_config({"box": entry(url, model=MODEL, timeout_ms=1000)}, default="box")
        sidecar = spawn(args=("--log-level", "debug"))
        result = sidecar.result("model:set-config", {"config": config})
        assert result["providers"]["custom"]["box"]["baseURL"] == shown_url
        shown = sidecar.result("model:get-config")["providers"]
        assert shown["custom"]["box"]["baseURL"] == shown_url
        health = sidecar.result("model:health", timeout=30)["providers"]["box"]
        assert health["available"] is False and "…" in health["lastError"]
        assert error_type(sidecar.call("model:generate", {"request": {"prompt": "hi"}}, timeout=30)) is not None
        # The preview sent back keeps the stored URL; a preview of another URL is refused.
        sidecar.result("model:set-config", {"config": {"providers": shown}})
        assert json.loads(config_bytes(sidecar))["providers"]["custom"]["box"]["baseURL"] == url
        other = shown_url.replace("/v1", "/v2")
        refused = sidecar.call("model:set-config", {"config": {"providers": {"custom": {"box": {"baseURL": other}}}}})
        assert "/config/providers/custom/box/baseURL" in error_paths(refused)
        assert sidecar.close() == 0
    for stream in (b"\n".join(sidecar.raw_lines), bytes(sidecar.stderr)):
        assert f":{password}@".encode() not in stream
        if len(password) > 12:
            assert password.encode() not in stream


# -- 3. two processes ------------------------------------------------------------------


def test_two_sidecars_on_one_data_dir_keep_each_others_changes(spawn: Spawn) -> None:
    first = spawn({"budget": {"alertThreshold": 0.5}})
    second = spawn(data_dir=first.data_dir)
    steps = [
        (first, {"budget": {"dailyLimit": 3}}),
        (second, {"budget": {"monthlyLimit": 40}}),
        (first, {"deadlineMs": 120_000}),
        (second, {"selection": {"priority": "cost"}}),
        (first, {"providers": {"custom": {"a-box": {"baseURL": "http://127.0.0.1:7001/v1", "defaultModel": "a"}}}}),
        (second, {"providers": {"custom": {"b-box": {"baseURL": "http://127.0.0.1:7002/v1", "defaultModel": "b"}}}}),
    ]
    for sidecar, patch in steps:
        sidecar.result("model:set-config", {"config": patch})
    last = second.result("model:get-config")
    stored = json.loads(config_bytes(first))
    for doc in (last, stored):
        assert doc["budget"]["dailyLimit"] == 3 and doc["budget"]["monthlyLimit"] == 40
        assert doc["budget"]["alertThreshold"] == 0.5
        assert doc["deadlineMs"] == 120_000 and doc["selection"]["priority"] == "cost"
        assert {"a-box", "b-box"} <= set(doc["providers"]["custom"])
    # The first one adopts the merged file at its next write: it enforces the same limits.
    adopted = first.result("model:set-config", {"config": {"fallbackChain": ["b-box"]}})
    assert adopted["budget"]["monthlyLimit"] == 40 and adopted["selection"]["priority"] == "cost"


def test_get_config_adopts_what_another_process_wrote(spawn: Spawn) -> None:
    first = spawn({"budget": {"alertThreshold": 0.5}})
    second = spawn(data_dir=first.data_dir)
    assert "dailyLimit" not in second.result("model:get-config")["budget"]
    first.result("model:set-config", {"config": {"budget": {"dailyLimit": 3}}})
    assert second.result("model:get-config")["budget"]["dailyLimit"] == 3
    # A hand edit with a mistake is adopted too, its valid parts only, and reported.
    (first.data_dir / "config.json").write_text(json.dumps({"budget": {"dailyLimit": 4, "alertThreshold": 7}}))
    budget = second.result("model:get-config")["budget"]
    assert budget["dailyLimit"] == 4 and budget["alertThreshold"] == 0.8
    status = second.result("model:health", timeout=30)["config"]
    assert status["status"] == "partial" and status["ignored"][0]["path"] == "/budget/alertThreshold"


def test_concurrent_writers_lose_nothing(spawn: Spawn) -> None:
    first = spawn()
    second = spawn(data_dir=first.data_dir)
    count = 15
    ids = []
    for i in range(count):  # pipelined: each process has many writes in flight at once
        for name, sidecar in (("a", first), ("b", second)):
            patch = {"modelOverrides": {f"{name}/m{i}": {"contextWindow": 1000 + i}}}
            ids.append((sidecar, sidecar.start("model:set-config", {"config": patch})))
    for sidecar, request_id in ids:
        assert "result" in sidecar.response(request_id, timeout=60)
    overrides = json.loads(config_bytes(first))["modelOverrides"]
    assert set(overrides) == {f"{n}/m{i}" for n in "ab" for i in range(count)}
    assert leftovers(first.data_dir) == []


def test_a_held_config_lock_gives_a_storage_error_in_bounded_time(spawn: Spawn) -> None:
    sidecar = spawn({"budget": {"dailyLimit": 1}})
    before = config_bytes(sidecar)
    fd = os.open(sidecar.data_dir / "config.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        response = sidecar.call("model:set-config", {"config": {"budget": {"dailyLimit": 2}}}, timeout=30)
        waited = time.monotonic() - started
        assert error_type(response) == "StorageError", response
        assert response["error"]["code"] == -32009 and response["error"]["data"]["retryable"] is True
        assert 2.5 < waited < 15
        assert config_bytes(sidecar) == before
        assert sidecar.result("model:get-config")["budget"]["dailyLimit"] == 1
    finally:
        os.close(fd)  # releases the lock
    assert sidecar.result("model:set-config", {"config": {"budget": {"dailyLimit": 2}}})["budget"]["dailyLimit"] == 2


# -- 4. a file that does not load -------------------------------------------------------


def test_a_typo_keeps_what_loads_and_the_file_is_backed_up_before_it_is_replaced(spawn: Spawn) -> None:
    original = {"providers": {"anthropic": {"apiKey": ANTHROPIC_KEY, "timeoutMs": "slow"}},
                "budget": {"dailyLimit": 3}, "bugdet": {"monthlyLimit": 9}}
    sidecar = spawn(original)
    raw = config_bytes(sidecar)
    config = sidecar.result("model:get-config")
    assert config["providers"]["anthropic"]["apiKey"] == "sk-\u2026" + ANTHROPIC_KEY[-4:]
    assert config["budget"]["dailyLimit"] == 3
    status = sidecar.result("model:health", timeout=30)["config"]
    assert status["status"] == "partial" and "backup" not in status
    assert {item["path"] for item in status["ignored"]} == {"/providers/anthropic/timeoutMs", "/bugdet"}

    sidecar.result("model:set-config", {"config": {"deadlineMs": 90_000}})
    stored = json.loads(config_bytes(sidecar))
    assert stored["providers"]["anthropic"]["apiKey"] == ANTHROPIC_KEY
    assert stored["budget"]["dailyLimit"] == 3 and stored["deadlineMs"] == 90_000
    (backup,) = sidecar.data_dir.glob("config.json.bad-*")
    assert backup.read_bytes() == raw
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    status = sidecar.result("model:health", timeout=30)["config"]
    assert status["status"] == "loaded" and status["backup"] == str(backup)
    assert restart(sidecar, spawn).result("model:health", timeout=30)["config"]["status"] == "loaded"


def test_a_patch_may_repair_the_part_that_did_not_load(spawn: Spawn) -> None:
    sidecar = spawn({"providers": {"custom": {"box": {"baseURL": "http://127.0.0.1:7003/v1"}}},
                     "defaultProvider": "box"})
    status = sidecar.result("model:health", timeout=30)["config"]
    assert {item["path"] for item in status["ignored"]} == {"/providers/custom/box", "/defaultProvider"}
    repaired = sidecar.result("model:set-config", {"config": {"providers": {"custom": {"box": {"defaultModel": "m"}}}}})
    assert repaired["defaultProvider"] == "box"
    assert repaired["providers"]["custom"]["box"]["baseURL"] == "http://127.0.0.1:7003/v1"


def test_a_file_that_is_not_json_is_backed_up_before_it_is_replaced(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "broken"
    data_dir.mkdir()
    (data_dir / "config.json").write_bytes(b'{"providers": {"openai": {"apiKey": "sk-typed-by-hand"')
    sidecar = spawn(data_dir=data_dir)
    status = sidecar.result("model:health", timeout=30)["config"]
    assert status["status"] == "defaults" and "not valid JSON" in status["problem"]
    sidecar.result("model:set-config", {"config": {"defaultProvider": "openai"}})
    (backup,) = data_dir.glob("config.json.bad-*")
    assert backup.read_bytes().endswith(b'"sk-typed-by-hand"')


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    node = schema
    for _ in range(depth):
        node["not"] = {}
        node = node["not"]
    return schema


@pytest.mark.parametrize("content", ["deep", "large"])
def test_a_file_too_deep_or_too_large_gives_the_defaults(spawn: Spawn, tmp_path: Path, content: str) -> None:
    data_dir = tmp_path / content
    data_dir.mkdir()
    if content == "deep":  # copies and merges recurse: 500 levels used to end the process at start
        doc = {"formatTemplates": {"t": {"schema": _nested(500)}}, "budget": {"dailyLimit": 2}}
        (data_dir / "config.json").write_text(json.dumps(doc))
    else:
        (data_dir / "config.json").write_text(json.dumps({"deadlineMs": 5000, "pad": "x" * (17 << 20)}))
    sidecar = spawn(data_dir=data_dir)
    assert sidecar.result("model:get-config")["deadlineMs"] == 600_000  # was -32603: too deep to serialize
    status = sidecar.result("model:health", timeout=30)["config"]
    assert status["status"] == "defaults"
    assert ("nested deeper" if content == "deep" else "larger than") in status["problem"]


def test_set_config_refuses_a_config_the_next_start_could_not_load(spawn: Spawn) -> None:
    sidecar = spawn()
    big = {"type": "string", "description": "x" * (9 << 20)}
    sidecar.result("model:set-config", {"config": {"formatTemplates": {"a": {"schema": big}}}}, timeout=60)
    before = config_bytes(sidecar)
    response = sidecar.call("model:set-config", {"config": {"formatTemplates": {"b": {"schema": big}}}}, timeout=60)
    assert error_type(response) == "InvalidParams" and error_paths(response) == ["/config"], response
    assert config_bytes(sidecar) == before
    assert "a" in restart(sidecar, spawn).result("model:get-config", timeout=30)["formatTemplates"]


# -- 5. not a file ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_config_path_that_is_not_a_file(spawn: Spawn, tmp_path: Path, kind: str) -> None:
    data_dir = tmp_path / kind
    data_dir.mkdir()
    path = data_dir / "config.json"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    sidecar = spawn(data_dir=data_dir)
    assert sidecar.result("model:get-config", timeout=10)["defaultProvider"] == "ollama"
    status = sidecar.result("model:health", timeout=30)["config"]
    assert status["status"] == "defaults" and kind.replace("fifo", "FIFO") in status["problem"]
    response = sidecar.call("model:set-config", {"config": {"deadlineMs": 90_000}}, timeout=10)
    assert error_type(response) == "StorageError", response
    assert response["error"]["data"]["path"] == str(path)
    assert leftovers(data_dir) == []
    assert stat.S_ISDIR(path.stat().st_mode) if kind == "directory" else stat.S_ISFIFO(path.stat().st_mode)
    assert sidecar.result("model:get-config")["deadlineMs"] == 600_000


# -- 6. odd patches ----------------------------------------------------------------------

ODD_PATCHES = {
    "long-timezone": ({"budget": {"timezone": "A" * 100_000}}, "/config/budget/timezone"),
    "huge-price": ({"modelOverrides": {"x/m": {"inputPer1M": 1e308}}}, "/config/modelOverrides/x~1m/inputPer1M"),
    "huge-context": ({"modelOverrides": {"x/m": {"contextWindow": 2**63 - 1}}},
                     "/config/modelOverrides/x~1m/contextWindow"),
    "huge-window": ({"providers": {"ollama": {"rateLimit": {"windowMs": 10**18, "maxRequests": 1}}}},
                    "/config/providers/ollama/rateLimit/windowMs"),
    "huge-daily-limit": ({"budget": {"dailyLimit": 1e308}}, "/config/budget/dailyLimit"),
    "slash-in-name": ({"providers": {"custom": {"a/b": {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m"}}}},
                      "/config/providers/custom"),
    "newline-in-name": ({"providers": {"custom": {"a\nb": {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m"}}}},
                        "/config/providers/custom"),
    "long-name": ({"providers": {"custom": {"n" * 10_000: {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m"}}}},
                  "/config/providers/custom"),
    "many-providers": ({"providers": {"custom": {f"p{i}": {"baseURL": "http://127.0.0.1:1/v1", "defaultModel": "m"}
                                                 for i in range(500)}}}, "/config/providers/custom"),
    "bad-template-schema": ({"formatTemplates": {"t": {"schema": {"type": 12}}}}, "/config/formatTemplates/t/schema"),
    "unresolved-template-ref": ({"formatTemplates": {"t": {"schema": {"$ref": "#/nope"}}}},
                                "/config/formatTemplates/t/schema"),
    "too-many-headers": ({"providers": {"ollama": {"headers": {f"X-H{i}": "v" for i in range(500)}}}},
                         "/config/providers/ollama/headers"),
}


@pytest.mark.parametrize(("patch", "path"), ODD_PATCHES.values(), ids=ODD_PATCHES.keys())
def test_odd_patches_are_invalid_params(spawn: Spawn, patch: dict[str, Any], path: str) -> None:
    sidecar = spawn({"budget": {"dailyLimit": 1}})
    before = config_bytes(sidecar)
    response = sidecar.call("model:set-config", {"config": patch}, timeout=30)
    assert error_type(response) == "InvalidParams", response
    assert path in error_paths(response)
    assert config_bytes(sidecar) == before


_WEIRD = ["", " ", "\n", "x\x00", "\u2028", "a" * 5000, -1, 0, 2**53, 1e308, -0.0, True, [], {}, ["x"], {"a": 1}]
_FIELDS = [
    ("providers", "ollama", "baseURL"), ("providers", "ollama", "apiKey"), ("providers", "ollama", "headers"),
    ("providers", "ollama", "timeoutMs"), ("providers", "ollama", "models"), ("providers", "ollama", "rateLimit"),
    ("providers", "ollama", "rateLimit", "windowMs"), ("providers", "ollama", "rateLimit", "maxConcurrent"),
    ("providers", "ollama", "modelRateLimits"), ("providers", "custom", "z"), ("providers", "custom", "z", "baseURL"),
    ("providers", "custom", "z", "defaultModel"), ("providers", "custom", "z", "local"), ("defaultProvider",),
    ("fallbackChain",), ("budget", "timezone"), ("budget", "monthlyLimit"), ("selection", "priority"),
    ("selection", "maxCostUsd"), ("modelOverrides", "ollama/m"), ("modelOverrides", "ollama/m", "tier"),
    ("formatTemplates", "t"), ("formatTemplates", "t", "schema"), ("deadlineMs",),
]


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value


def test_random_odd_patches_never_break_the_sidecar(spawn: Spawn) -> None:
    """Seeded: each patch is answered (result or InvalidParams), and the file always restarts."""
    rng = random.Random(7)
    sidecar = spawn()
    for _ in range(150):
        patch: dict[str, Any] = {}
        for _ in range(rng.randint(1, 3)):
            patch = _merge(patch, _nest(rng.choice(_FIELDS), rng.choice(_WEIRD)))
        response = sidecar.call("model:set-config", {"config": patch}, timeout=30)
        assert "result" in response or error_type(response) == "InvalidParams", (patch, response)
    assert "result" in sidecar.call("model:health", timeout=30)
    again = restart(sidecar, spawn)
    assert again.result("model:health", timeout=30)["config"]["status"] == "loaded"


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out
