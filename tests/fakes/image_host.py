"""A loopback web server serving images, for image URLs a provider must fetch (Ollama).

``ImageHost()`` serves ``files`` (path → body); a path not in ``files`` is a 404. Paths
may also be set up as redirects (``redirects``) or as bodies sent without a
``Content-Length`` (``unsized``: the body ends when the connection closes) or as bodies that stop half-way
until the host stops (``stalled``); a query is ignored. Every GET
is recorded as ``(path with its query, headers)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["ImageHost", "image_host"]


class ImageHost:
    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.redirects: dict[str, str] = {}
        self.unsized: set[str] = set()
        self.stalled: set[str] = set()
        self._stopping = threading.Event()
        self.seen: list[tuple[str, dict[str, str]]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                host.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = urlsplit(self.path).path  # the query is ignored
                if path in host.redirects:
                    self.send_response(302)
                    self.send_header("Location", host.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in host.files:
                    self.send_error(404)
                    return
                media_type, body = host.files[path]
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                if path in host.unsized:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if path in host.stalled:
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        host._stopping.wait(30)
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading at its cap

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def start(self) -> ImageHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def image_host() -> Iterator[ImageHost]:
    host = ImageHost().start()
    try:
        yield host
    finally:
        host.stop()
