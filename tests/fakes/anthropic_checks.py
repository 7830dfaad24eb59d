"""The 400s the Messages API answers to malformed tools, tool turns and images.

Each check returns the API's message (``invalid_request_error``) or None, so a client
that maps tool turns or images wrongly fails against the fake as it would against the
service. Message texts are the service's own where known (tool turns), else in its
``<path>: <reason>`` style.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["request_error"]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CHOICE_TYPES = ("auto", "any", "tool", "none")
_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def request_error(body: dict[str, Any]) -> str | None:
    """The first problem the API would report for ``body``, or None."""
    return _tools_error(body) or _messages_error(body.get("messages"))


def _tools_error(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not _TOOL_NAME.match(str(tool.get("name", ""))):
                return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                return f"tools.{i}.custom.input_schema: Field required"
            if schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
            names.append(tool["name"])
        if len(set(names)) != len(names):
            return "tools: Tool names must be unique."
    return _choice_error(body.get("tool_choice"), names, tools is not None)


def _choice_error(choice: Any, names: list[str], has_tools: bool) -> str | None:
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in _CHOICE_TYPES:
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    kind = choice["type"]
    allowed = {"type", "disable_parallel_tool_use"} if kind != "none" else {"type"}
    if kind == "tool":
        allowed.add("name")
    extra = sorted(set(choice) - allowed)
    if extra:
        return f"tool_choice.{kind}.{extra[0]}: Extra inputs are not permitted"
    if kind != "none" and not has_tools:
        return "tool_choice may only be specified while providing tools."
    if kind == "tool" and choice.get("name") not in names:
        return f"Tool '{choice.get('name')}' not found in provided tools"
    return None


def _messages_error(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    previous_uses: list[str] = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{n}: Input should be a valid dictionary"
        blocks = message.get("content") if isinstance(message.get("content"), list) else []
        problem = _blocks_error(n, blocks) or _results_error(n, message, blocks, previous_uses)
        if problem:
            return problem
        previous_uses = _uses(message, blocks)
        if previous_uses and not _answered(messages, n, previous_uses):
            return (f"messages.{n}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(previous_uses)}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message.")
    return None


def _uses(message: dict[str, Any], blocks: list[Any]) -> list[str]:
    if message.get("role") != "assistant":
        return []
    return [b.get("id", "") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]


def _answered(messages: list[Any], n: int, uses: list[str]) -> bool:
    """Whether message ``n + 1`` is a user turn with a tool_result for each of ``uses``."""
    after = messages[n + 1] if n + 1 < len(messages) else None
    if not isinstance(after, dict) or after.get("role") != "user" or not isinstance(after.get("content"), list):
        return False
    answered = {b.get("tool_use_id") for b in after["content"] if isinstance(b, dict) and b.get("type") == "tool_result"}
    return set(uses) <= answered


def _results_error(n: int, message: dict[str, Any], blocks: list[Any], uses: list[str]) -> str | None:
    """tool_result blocks: only in user turns, first, each answering a tool_use of the
    previous message."""
    kinds = [b.get("type") if isinstance(b, dict) else None for b in blocks]
    count = kinds.count("tool_result")
    if not count:
        return None
    if message.get("role") != "user":
        return f"messages.{n}: tool_result blocks can only be in user messages"
    if kinds[:count] != ["tool_result"] * count:
        return (f"messages.{n}: Did not find {count} `tool_result` block(s) at the beginning of this message. "
                "Messages following `tool_use` blocks must begin with a matching number of `tool_result` blocks.")
    for m, block in enumerate(blocks[:count]):
        if block.get("tool_use_id") not in uses:
            return (f"messages.{n}.content.{m}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.")
    return None


def _blocks_error(n: int, blocks: list[Any]) -> str | None:
    for m, block in enumerate(blocks):
        where = f"messages.{n}.content.{m}"
        if not isinstance(block, dict):
            return f"{where}: Input should be a valid dictionary"
        kind = block.get("type")
        if kind == "text" and not block.get("text"):
            return f"{where}.text: text content blocks must be non-empty"
        if kind == "tool_use" and not isinstance(block.get("input"), dict):
            return f"{where}.tool_use.input: Input should be a valid dictionary"
        if kind == "image":
            problem = _image_error(block.get("source"))
            if problem:
                return f"{where}.image.source{problem}"
    return None


def _image_error(source: Any) -> str | None:
    if not isinstance(source, dict):
        return ": Field required"
    if source.get("type") == "url":
        return None if isinstance(source.get("url"), str) and source["url"] else ".url.url: Field required"
    if source.get("type") != "base64":
        return ": Input tag does not match any of the expected tags: 'base64', 'url'"
    if source.get("media_type") not in _MEDIA_TYPES:
        return ".base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
    data = source.get("data")
    if not isinstance(data, str) or not data or data.startswith("data:"):
        return ".base64.data: Invalid base64 data"
    return None
