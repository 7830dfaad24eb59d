"""Run the sidecar with its provider HTTP clients on the ``httpx-aiohttp`` transport.

Benchmark only, no sidecar code is edited: ``HttpClientFactory`` already takes a
``transport``; this launcher hands each client built by it a fresh
``httpx_aiohttp.AiohttpTransport`` (same pool size as the sidecar's own limits), then runs
the ordinary command line. ``httpx_aiohttp`` comes from ``BENCH_OVERLAY``, a directory
holding only that package (``pip install --no-deps --target``), so httpx and aiohttp are
the project venv's own.

    BENCH_OVERLAY=bench/.venv-transport/overlay .venv/bin/python bench/sidecar_aiohttp.py --data-dir DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, os.environ["BENCH_OVERLAY"])

import httpx  # noqa: E402
from httpx_aiohttp import AiohttpTransport  # noqa: E402

from sidecar.providers import http as provider_http  # noqa: E402
from sidecar.providers.base import ProviderSettings  # noqa: E402

_build = provider_http.HttpClientFactory.build


def build(self: provider_http.HttpClientFactory, settings: ProviderSettings) -> httpx.AsyncClient:
    tls = settings.base_url.startswith("https://")
    self._transport = AiohttpTransport(
        verify=self._ssl_context() if tls else True,
        trust_env=not settings.local,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30),
    )
    return _build(self, settings)


provider_http.HttpClientFactory.build = build  # type: ignore[method-assign]

if __name__ == "__main__":
    from sidecar.cli import main

    main(sys.argv[1:])
