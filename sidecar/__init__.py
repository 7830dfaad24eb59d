"""model-sidecar: one stdio JSON-RPC process in front of every model provider.

Kept import-free so that ``python -m sidecar`` reaches ``sidecar:ready`` quickly.
"""

import sys as _sys

# httpx's __init__ imports its command-line tool (``httpx._main``) whenever click, pygments
# and rich can be imported, as they can wherever another package brought them (uvicorn,
# pytest). The sidecar never runs that tool: a module set to None in ``sys.modules`` fails
# to import (Python's import system), which httpx handles with a stub ``main``. Saves
# about 2.3 MB of memory and 9 ms of start-up.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

#: Every method this build serves, announced in ``sidecar:ready`` before the channels
#: are imported; a test checks it against :func:`sidecar.app.build_channels`.
CHANNEL_NAMES: tuple[str, ...] = (
    "model:discover",
    "model:generate",
    "model:get-config",
    "model:health",
    "model:list-models",
    "model:pull",
    "model:select",
    "model:set-config",
    "model:stream",
    "model:usage",
    "sidecar:shutdown",
)
