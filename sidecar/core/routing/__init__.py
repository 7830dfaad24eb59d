"""The layers of one routed attempt (see :mod:`sidecar.core.router` for the order)."""
