"""Every body sent to the official OpenAI API validates against its OpenAPI schema.

The schema is ``CreateChatCompletionRequest`` from ``shared/data/openai-openapi.json``
(beside the repository in CI); ``#/components/schemas/...`` references are resolved
against the whole spec. Without the spec file the tests are skipped on a developer's
machine, and fail in CI (``CI=true``) or with ``SIDECAR_REQUIRE_OPENAPI=1`` (set by
``scripts/test.sh``), so a missing file can never pass unnoticed there.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sidecar.providers.base import ChatMessage, ProviderRequest
from sidecar.providers.openai import build_chat_body
from tests.providers.conftest import Harness, run

pytestmark = pytest.mark.timeout(30)

#: ``SIDECAR_OPENAPI_SPEC`` points elsewhere (a newer spec, or a missing path to check the CI rule).
SPEC_PATH = Path(os.environ.get("SIDECAR_OPENAPI_SPEC")
                 or Path(__file__).parents[2].parent / "shared/data/openai-openapi.json")
SPEC_URI = "urn:openai-openapi"


def spec_required(env: Mapping[str, str]) -> bool:
    """Whether a missing spec is a failure: in CI, or when the test script asks for it."""
    return env.get("CI", "").lower() in ("true", "1") or env.get("SIDECAR_REQUIRE_OPENAPI") == "1"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    if not SPEC_PATH.is_file():
        if spec_required(os.environ):
            pytest.fail(f"OpenAI OpenAPI spec not found at {SPEC_PATH} (required: CI or SIDECAR_REQUIRE_OPENAPI=1)")
        pytest.skip(f"OpenAI OpenAPI spec not found at {SPEC_PATH}")
    spec = orjson.loads(SPEC_PATH.read_bytes())
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/CreateChatCompletionRequest"}
    return Draft202012Validator(schema, registry=registry)


def assert_valid(validator: Draft202012Validator, body: dict[str, Any]) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors


TURNS = (ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ChatMessage("user", "again 👋"))
JSON_SCHEMA_FORMAT = {
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            "strict": True,
        },
    }
}
OPTIONAL_FIELDS: list[dict[str, Any]] = [
    {},
    {"system": "Be brief."},
    {"temperature": 0.0, "top_p": 1.0},
    {"temperature": 2.0, "frequency_penalty": -2.0, "presence_penalty": 2.0},
    {"max_tokens": 1},
    {"stop": ("END",)},
    {"stop": ("a", "b", "c", "d")},
    {"native_format": {"response_format": {"type": "json_object"}}},
    {"native_format": JSON_SCHEMA_FORMAT},
    {
        "system": "s",
        "temperature": 0.7,
        "max_tokens": 512,
        "top_p": 0.95,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": ("\n\n",),
        "native_format": JSON_SCHEMA_FORMAT,
    },
]
MODELS = ["gpt-4o-mini", "gpt-4.1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-chat-latest"]


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize("model", MODELS)
def test_built_bodies_validate(validator: Draft202012Validator, model: str, stream: bool) -> None:
    for fields, messages in itertools.product(OPTIONAL_FIELDS, [TURNS[:1], TURNS]):
        request = ProviderRequest(model=model, messages=messages, **fields)
        assert_valid(validator, build_chat_body(request, official=True, stream=stream))


async def test_sent_bodies_validate(
    openai: Harness, streaming: bool, validator: Draft202012Validator
) -> None:
    """The bytes that actually reached the server, not just the builder's dict."""
    provider = openai.make()
    for fields in OPTIONAL_FIELDS[::3]:
        await run(provider, openai.request(messages=TURNS, **fields), streaming)
    for recorded in openai.server.requests:
        assert_valid(validator, recorded.json)


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "gpt-4o-mini", "messages": []},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "x"}],
            "stop": ["1", "2", "3", "4", "5"],
        },
        {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}]},
    ],
)
def test_schema_is_not_vacuous(validator: Draft202012Validator, bad: dict[str, Any]) -> None:
    assert list(validator.iter_errors(bad))
