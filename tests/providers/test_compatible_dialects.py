"""OpenAI-compatible servers that differ from OpenAI: seen with the real local model.

llama-cpp-python's server refuses OpenAI's nested ``json_schema`` response format (500,
"Input should be 'text' or 'json_object'") and takes a flat ``json_object`` + ``schema``;
by default it also ends a running stream with a bare ``[DONE]`` when another request
arrives. Both are replayed here byte for byte on the loopback fake.
"""

from __future__ import annotations

import pytest

from sidecar.errors import ModelError, NetworkError
from tests.fakes import Error, Raw, Reply
from tests.providers.conftest import Harness, run

pytestmark = pytest.mark.timeout(20)

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
NESTED = {"response_format": {"type": "json_schema",
                              "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}}
#: What llama-cpp-python 0.3.x answers to the nested form (its pydantic literal check).
REFUSAL = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
           "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}")


async def test_nested_schema_form_refused_then_flat_form_used_and_remembered(
    llamacpp: Harness, streaming: bool
) -> None:
    llamacpp.server.enqueue(Error(500, message=REFUSAL), Reply(text='{"name": "Ada"}'), Reply(text="{}"))
    provider = llamacpp.make()
    result = await run(provider, llamacpp.request(native_format=NESTED), streaming)
    assert result.content == '{"name": "Ada"}'
    first, second = llamacpp.server.requests
    assert first.json["response_format"]["type"] == "json_schema"
    assert second.json["response_format"] == {"type": "json_object", "schema": SCHEMA}
    # Remembered: the next call goes flat at once, one request.
    llamacpp.server.reset()
    llamacpp.server.enqueue(Reply(text="{}"))
    await run(provider, llamacpp.request(native_format=NESTED), streaming)
    (third,) = llamacpp.server.requests
    assert third.json["response_format"] == {"type": "json_object", "schema": SCHEMA}


async def test_other_errors_do_not_switch_the_form(llamacpp: Harness, streaming: bool) -> None:
    llamacpp.server.enqueue(Error(500, message="out of memory"))
    provider = llamacpp.make()
    with pytest.raises(ModelError):
        await run(provider, llamacpp.request(native_format=NESTED), streaming)
    assert len(llamacpp.server.requests) == 1
    llamacpp.server.reset()
    llamacpp.server.enqueue(Reply(text="{}"))
    await run(provider, llamacpp.request(native_format=NESTED), streaming)
    assert llamacpp.server.requests[0].json["response_format"]["type"] == "json_schema"


async def test_bare_done_without_finish_reason_is_an_interruption(llamacpp: Harness) -> None:
    chunk = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
             b'"choices":[{"index":0,"delta":{"content":"Here"},"logprobs":null,"finish_reason":null}]}\n\n')
    llamacpp.server.enqueue(Raw(body=chunk + b"data: [DONE]\n\n", content_type="text/event-stream"))
    with pytest.raises(NetworkError, match="interrupted"):
        await run(llamacpp.make(), llamacpp.request(), streaming=True)
