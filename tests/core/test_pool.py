"""The pool's settings follow every configure (they are built once per configure)."""

from __future__ import annotations

import dataclasses

from sidecar.core.pool import ProviderPool
from sidecar.providers.base import ProviderSettings
from sidecar.providers.http import HttpClientFactory
from tests.support.scripted import Script, ScriptedProvider

A = ProviderSettings("a", "custom", "http://127.0.0.1:1/v1", "m1")
B = ProviderSettings("b", "custom", "http://127.0.0.1:2/v1", "m2")


async def test_settings_follow_each_configure() -> None:
    pool = ProviderPool(lambda s, _h: ScriptedProvider(s, Script()), HttpClientFactory())
    assert dict(pool.settings()) == {}
    pool.configure([A])
    assert dict(pool.settings()) == {"a": A}
    assert pool.settings() is pool.settings()  # built once, not per call
    pool.configure([A, B])
    assert dict(pool.settings()) == {"a": A, "b": B}
    moved = dataclasses.replace(A, base_url="http://127.0.0.1:3/v1")
    pool.configure([moved])
    assert dict(pool.settings()) == {"a": moved}
    provider = pool.get("a")
    assert provider is not None and provider.settings == moved
