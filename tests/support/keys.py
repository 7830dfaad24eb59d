"""The fake API keys the tests hand to sidecars and fake servers.

Every one of them is watched by :mod:`tests.support.secret_guard`: a test whose captured
output, or whose spawned sidecar's stdout or stderr, contains one of them fails.
"""

from __future__ import annotations

OPENAI_KEY = "sk-test-OPENAIKEY0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-ANTHROPICKEY0123456789"
CUSTOM_KEY = "local-secret-key-0123456789XYZ"
#: The forward proxy's password in the network tests (tests.network.support): a secret too.
PROXY_PASSWORD = "proxy-pass-0123456789QRS"
ALL_KEYS = (OPENAI_KEY, ANTHROPIC_KEY, CUSTOM_KEY, PROXY_PASSWORD)
