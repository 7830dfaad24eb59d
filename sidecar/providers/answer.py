"""What the providers read of an HTTP answer, as a protocol.

Two kinds of objects fit it: ``httpx.Response`` (probes, model lists, pulls, and every
call on httpx's own transport) and :class:`~sidecar.providers.aio_transport.Reply` (a
provider call on the aiohttp transport, read without building httpx's request, response
and header objects). Code that reads a call's answer (error status, body, frames,
rate-limit headers) takes an :class:`Answer`, so it reads both the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

__all__ = ["Answer"]


class Answer(Protocol):
    """An HTTP response whose body is streamed (``httpx.Response`` has this shape)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive; names iterate lower-cased; several values of one name are
        joined by ``", "``."""

    @property
    def is_error(self) -> bool: ...

    @property
    def is_success(self) -> bool: ...

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The body, ``Content-Encoding`` decoded."""

    def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The body as received."""

    async def aclose(self) -> None:
        """Done with it: a body read whole keeps its connection pooled, else it is closed."""
