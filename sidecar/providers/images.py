"""Images as bytes: what the bytes say they are, and fetching one a URL names.

:func:`sniff_image` reads the media type and size from an image's own bytes (the core
checks every inline image with it before anything is sent). :func:`fetch_image` is for a
provider that only takes inline bytes (Ollama): it fetches an ``http``/``https`` image
through the provider's client (so ``MODEL_SIDECAR_DENY_REMOTE`` applies to it too),
without the provider's headers, within :data:`MAX_IMAGE_BYTES` and
:data:`FETCH_TIMEOUT_S`, and checks the bytes are a PNG, JPEG, GIF or WebP image.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import filetype  # type: ignore[import-untyped]
import httpx
import imagesize  # type: ignore[import-untyped]

from sidecar.errors import ValidationError
from sidecar.providers.base import ImageInput
from sidecar.providers.failures import ResponseTooLarge
from sidecar.providers.http import read_body
from sidecar.wire.model import IMAGE_MEDIA_TYPES

__all__ = ["FETCH_TIMEOUT_S", "MAX_IMAGE_BYTES", "ImageFacts", "fetch_image", "sniff_image"]

#: The largest image the sidecar reads, fetches or forwards inline.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The whole fetch of one image URL (connect, headers and body).
FETCH_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class ImageFacts:
    media_type: str
    width: int
    height: int


def sniff_image(data: bytes) -> ImageFacts | None:
    """The media type and size read from an image's bytes; None if not a PNG, JPEG, GIF
    or WebP."""
    mime = filetype.guess_mime(data[:262])
    if mime not in IMAGE_MEDIA_TYPES:
        return None
    try:
        width, height = imagesize.get(io.BytesIO(data))
    except Exception:  # a damaged header: imagesize raises on some truncations
        width = height = -1
    return ImageFacts(str(mime), int(width), int(height))


async def fetch_image(client: httpx.AsyncClient, url: str, *, provider: str, model: str | None) -> ImageInput:
    """The image at ``url`` as inline base64 with its sniffed media type.

    Raises:
        ValidationError: not an http(s) URL, the fetch failed (``retryable`` when it may
            work later: a timeout, a refused connection, a 5xx), the body is over
            :data:`MAX_IMAGE_BYTES`, or it is not an image. The message names the host
            only: a signed URL's query is a credential.
    """
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.hostname or '?'}"

    def refused(reason: str, *, retryable: bool = False) -> ValidationError:
        return ValidationError(f"{provider}: cannot use the image at {where}: {reason}", provider=provider,
                               model_id=model, retryable=retryable)

    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused("only http and https image URLs can be fetched")
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            data = await _download(client, url, refused)
    except (TimeoutError, httpx.TimeoutException):
        raise refused(f"the fetch took longer than {FETCH_TIMEOUT_S:g} s", retryable=True) from None
    except httpx.ConnectError as exc:
        # Connect errors never quote the request; MODEL_SIDECAR_DENY_REMOTE's refusal is one.
        raise refused(f"could not connect ({str(exc) or type(exc).__name__})", retryable=True) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise refused(f"the fetch failed ({type(exc).__name__})", retryable=True) from None
    facts = sniff_image(data)
    if facts is None:
        raise refused("the body is not a PNG, JPEG, GIF or WebP image")
    return ImageInput(media_type=facts.media_type, data=base64.b64encode(data).decode("ascii"))


async def _download(client: httpx.AsyncClient, url: str, refused: Callable[..., ValidationError]) -> bytes:
    cap = f"larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB"
    # No provider headers (its key is not for this host); redirects followed, each hop
    # through the client's request hooks.
    async with client.stream("GET", url, headers={"accept": "image/*"}, follow_redirects=True,
                             timeout=FETCH_TIMEOUT_S) as response:
        if response.status_code != 200:
            raise refused(f"HTTP {response.status_code}", retryable=response.status_code >= 500)
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_IMAGE_BYTES:
            raise refused(f"the image is {cap} ({length} bytes)")
        try:
            return await read_body(response, MAX_IMAGE_BYTES)
        except ResponseTooLarge:
            raise refused(f"the image is {cap}") from None

