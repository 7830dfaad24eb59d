"""model-sidecar: one stdio JSON-RPC process in front of every model provider.

Kept import-free so that ``python -m sidecar`` reaches ``sidecar:ready`` quickly.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
