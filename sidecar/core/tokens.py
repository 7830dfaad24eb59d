"""Token counts of a request, estimated once and used everywhere.

Two numbers, both computed from the same texts of the request (prompt, system prompt,
context as the model sees it, every earlier turn):

* :func:`estimate`: what the request likely needs, erring high. One token per 3 UTF-8
  bytes: English and code run about 4 bytes a token, CJK text 3 bytes a character and
  about one token a character, so every script is covered without a tokenizer. The
  selector's window fit, the limiter's token windows, Ollama's ``num_ctx`` and the
  estimated usage of a server that reports none all use it.
* :func:`upper_bound`: a count no byte-level BPE tokenizer can exceed (every token
  covers at least one byte), plus a chat-template allowance per message. The budget
  reserves against it, so a reservation is never too small.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

from sidecar.wire.model import AssistantTurn, ModelRequest, SystemTurn, TextPart, ToolTurn, UserTurn

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "context_text",
    "context_window_for",
    "estimate",
    "estimate_text",
    "image_allowance",
    "request_texts",
    "turn_text",
    "upper_bound",
]

#: Output tokens assumed (for the context fit) when the request sets no maxTokens.
DEFAULT_OUTPUT_TOKENS = 1024
#: Framing tokens a chat template adds per message, in the estimate.
_ESTIMATE_OVERHEAD = 4
#: The same allowance in the upper bound (generous: templates differ).
_BOUND_OVERHEAD = 16
#: Room left in a window for the template's own tokens around the messages.
_WINDOW_SLACK = 64
#: Below this a server's default window is large enough; no explicit size is sent.
_SERVER_DEFAULT_WINDOW = 4096


def context_text(context: Any) -> str:
    """``request.context`` as the model sees it: a string as is, anything else as JSON."""
    if context is None:
        return ""
    if isinstance(context, str):
        return context
    return orjson.dumps(context, option=orjson.OPT_INDENT_2).decode("utf-8")


def request_texts(request: ModelRequest) -> list[str]:
    """Every text of the request that reaches the model, one entry per message-like part:
    turns, text parts, tool calls' arguments and the tool definitions (providers put
    those into the prompt too). Images are counted apart (:func:`image_allowance`)."""
    texts = [request.prompt, request.system_prompt or "", context_text(request.context)]
    for turn in request.messages or ():
        texts.append(turn_text(turn))
        if isinstance(turn, AssistantTurn):
            texts.extend(call.name + orjson.dumps(call.arguments).decode() for call in turn.tool_calls or ())
    texts.extend(orjson.dumps(tool.model_dump(mode="json", by_alias=True)).decode() for tool in request.tools or ())
    return texts


def turn_text(turn: SystemTurn | UserTurn | AssistantTurn | ToolTurn) -> str:
    """A turn's text (a user turn's text parts joined)."""
    if isinstance(turn.content, str):
        return turn.content
    return "\n".join(part.text for part in turn.content if isinstance(part, TextPart))


def image_allowance(request: ModelRequest) -> int:
    """Prompt tokens the request's images may cost (0 without images). The images of a
    prepared request carry theirs (:func:`sidecar.core.agents.prepare`); others are read
    here, so a caller that needs the number twice computes it once and passes it on."""
    if not request.has_images:
        return 0
    from sidecar.core.agents import images_tokens

    return images_tokens(request)


def estimate_text(text: str) -> int:
    """Tokens in ``text``, erring high: one per 3 UTF-8 bytes."""
    return math.ceil(len(text.encode("utf-8", "replace")) / 3)


def estimate(request: ModelRequest, *, images: int | None = None) -> int:
    """Prompt tokens of a request, erring high (see the module docstring). ``images``:
    the request's :func:`image_allowance`, when the caller has it already."""
    texts = request_texts(request)
    allowance = image_allowance(request) if images is None else images
    return sum(estimate_text(t) for t in texts) + _ESTIMATE_OVERHEAD * len(texts) + allowance


def upper_bound(texts: Iterable[str], *, per_message_overhead: int = _BOUND_OVERHEAD) -> int:
    """A prompt-token count no byte-level BPE tokenizer can exceed: every token covers at
    least one UTF-8 byte, plus a fixed allowance per message for the chat template."""
    return sum(len(text.encode("utf-8")) + per_message_overhead for text in texts)


def context_window_for(prompt_tokens: int, max_tokens: int | None, *, loaded: int | None = None,
                       limit: int | None = None) -> int | None:
    """The window to ask a server for (Ollama's ``num_ctx``), or ``None`` for its default.

    Ollama silently cuts a prompt at its default window unless ``num_ctx`` is sent
    (https://github.com/ollama/ollama/blob/main/docs/faq.md, "How can I specify the
    context window size?"), and loads the model again whenever a request asks for a
    window other than the one it runs with. So: the window the model runs with
    (``loaded``, when the server said) if it holds prompt + output + slack; else that
    need rounded up to a power of two, so that a conversation does not make the server
    reload the model each turn, but never past the model's trained window (``limit``).
    """
    needed = prompt_tokens + (max_tokens or DEFAULT_OUTPUT_TOKENS) + _WINDOW_SLACK
    if loaded is not None and needed <= loaded:
        return loaded
    if loaded is None and needed <= _SERVER_DEFAULT_WINDOW:
        return None
    size = 1 << (needed - 1).bit_length()
    return min(size, limit) if limit is not None else size
