"""A proxy.py plugin for the network tests: names in the reserved ``.test`` domain
(RFC 6761) resolve to 127.0.0.1, so a provider fake on loopback can stand in for a remote
host that only the proxy reaches; every tunnel or request it carries is logged.

Loaded by ``tests.network.support.ForwardProxy`` (``--plugins``) in the proxy's process.
The log file is named by ``NETWORK_TEST_PROXY_LOG``; one line per upstream connection:
``METHOD host:port``. proxy.py runs its own authentication plugin before this one, so a
request refused for its credentials is never logged here.
"""

from __future__ import annotations

import os

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin


class MapTestHosts(HttpProxyBasePlugin):
    def resolve_dns(self, host: str, port: int) -> tuple[str | None, None]:
        if host.lower().rstrip(".").endswith(".test"):
            return "127.0.0.1", None
        return None, None

    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        method = (request.method or b"?").decode("ascii", "replace")
        host = (request.host or b"?").decode("ascii", "replace")
        with open(os.environ["NETWORK_TEST_PROXY_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{method} {host}:{request.port}\n")
        return request

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        return request

    def handle_upstream_chunk(self, chunk: memoryview) -> memoryview | None:
        return chunk

    def on_upstream_connection_close(self) -> None:
        return None
