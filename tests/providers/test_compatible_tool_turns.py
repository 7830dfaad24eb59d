"""An assistant turn that only called tools, as each OpenAI-style server takes it.

OpenAI documents ``content`` as optional when ``tool_calls`` is given (null is sent);
llama-cpp-python's server (the embedded local model) validates it as a string and
answers HTTP 500 to null, so compatible servers get ``""``. The real server is
exercised in tests/stdio/test_tools_real_model.py (the whole tool turn).
"""

from __future__ import annotations

from sidecar.providers.base import ChatMessage, ProviderRequest, ToolCall, ToolSpec
from sidecar.providers.openai import build_chat_body

CALLED = ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Paris"}'),))
TURNS = (ChatMessage("user", "Weather in Paris?"), CALLED,
         ChatMessage("tool", "18 C", tool_call_id="call_1", tool_name="get_weather"))
TOOL = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}})


def _assistant(official: bool) -> dict[str, object]:
    body = build_chat_body(ProviderRequest("m", TURNS, tools=(TOOL,)), official=official, stream=False)
    (turn,) = [m for m in body["messages"] if m["role"] == "assistant"]
    return dict(turn)


def test_compatible_servers_get_an_empty_string_content() -> None:
    assert _assistant(official=False)["content"] == ""


def test_openai_gets_null_content() -> None:
    assert _assistant(official=True)["content"] is None


def test_text_beside_the_calls_is_kept_for_both() -> None:
    said = ChatMessage("assistant", "Let me check.", tool_calls=CALLED.tool_calls)
    for official in (True, False):
        body = build_chat_body(ProviderRequest("m", (TURNS[0], said, TURNS[2]), tools=(TOOL,)), official=official,
                               stream=False)
        assert body["messages"][1]["content"] == "Let me check."
