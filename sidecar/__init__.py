"""model-sidecar: one stdio JSON-RPC process in front of every model provider.

Kept import-free so that ``python -m sidecar`` reaches ``sidecar:ready`` quickly.
"""

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
