"""Channels: one thin handler per protocol method, calling services, no wire framing.

Each module's ``channels(...)`` takes only the collaborators its methods use; the method
table is put together in one place, :func:`sidecar.app.build_channels`, which nothing
here imports back.
"""
